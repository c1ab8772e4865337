"""Data-stage benchmark: prints JSON figures, each with a baseline measured in the same run.

1. `prepare` (clean + cache, all cores) against a naive one-process loop (PIL open + verify, reopen,
   convert, resize) on the full-size sample, both on the same extracted files.
2. Reading a training epoch from the cache against decoding the JPEGs every epoch (ImageFolder-style),
   same DataLoader workers and batch size.
3. Peak resident memory (the process tree, sampled) of `prepare` on petimages-180.zip (`--full`).

Usage: python bench/data_prep.py [--data ../shared/data] [--image-size 96] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from catsdogs_pl.data import cache, sources
from catsdogs_pl.data.datamodule import CachedImages
from catsdogs_pl.data.prepare import Settings, prepare, read_manifest


def naive_prepare(files: list[sources.SourceFile], size: int) -> int:
    """The common baseline: verify, reopen, convert, resize; one process, no draft decoding."""
    done = 0
    for f in files:
        try:
            with Image.open(f.path) as img:
                img.verify()
            with Image.open(f.path) as img:
                img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            done += 1
        except Exception:  # the baseline skips bad files, as such scripts do
            continue
    return done


class DecodeEveryEpoch(Dataset):
    """ImageFolder-style: each item decodes its JPEG again."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1), 0


def epoch_rate(dataset: Dataset, workers: int, epochs: int = 3) -> float:
    """Images/s over `epochs` epochs after one warm-up epoch (persistent workers)."""
    loader = DataLoader(dataset, batch_size=64, num_workers=workers, persistent_workers=True)
    for _ in loader:
        pass
    start = time.perf_counter()
    for _ in range(epochs):
        for _ in loader:
            pass
    return epochs * len(dataset) / (time.perf_counter() - start)


def best_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def peak_prepare_memory(archive: Path, out: Path, size: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "catsdogs_pl.data", "prepare", "--source", str(archive)]
    cmd += ["--out", str(out), "--image-size", str(size)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"prepare failed with exit code {proc.returncode}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--full", action="store_true", help="also prepare petimages-180.zip")
    args = parser.parse_args()
    sample = args.data / "petimages-fullsize-sample.zip"
    if not sample.exists():
        raise SystemExit(f"{sample} is missing: pass --data with the shared data folder")
    size, workers = args.image_size, len(os.sched_getaffinity(0))
    settings = Settings(image_size=size)
    result: dict[str, object] = {"image_size": size, "cpus": workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = sources.extract(sample, Path(tmp) / "extracted")
        files = sources.find_files(root)
        n = len(files)

        def ours() -> None:
            out = Path(tempfile.mkdtemp(dir=tmp))
            prepare(root, out, settings, progress=False)

        t_ours = best_time(ours)
        t_naive = best_time(lambda: naive_prepare(files, size))
        result["prepare"] = {
            "files": n,
            "ours_img_per_s": round(n / t_ours, 1),
            "naive_img_per_s": round(n / t_naive, 1),
            "ratio": round(t_naive / t_ours, 2),
        }

        out = Path(tmp) / "prepared"
        prepare(root, out, settings, progress=False)
        images, labels = cache.split_files(out, size, "train")
        cached = CachedImages(images, labels)
        train = [
            root / r.relpath for r in read_manifest(out / "manifest.csv") if r.split == "train"
        ]
        jpegs = DecodeEveryEpoch(train, size)
        r_cache, r_jpeg = epoch_rate(cached, workers), epoch_rate(jpegs, workers)
        result["epoch_read"] = {
            "images": len(cached),
            "workers": workers,
            "cache_img_per_s": round(r_cache, 1),
            "decode_img_per_s": round(r_jpeg, 1),
            "ratio": round(r_cache / r_jpeg, 2),
        }
        if args.full:
            full = args.data / "petimages-180.zip"
            result["prepare_petimages_180"] = peak_prepare_memory(full, Path(tmp) / "full", size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
