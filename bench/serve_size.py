"""Which size to serve at: a version's accuracy, calibration and cost at each `--sizes` image size.

A network trained on random crops sees objects larger than a whole-image resize at the same size
shows them (Touvron et al., "Fixing the train-test resolution discrepancy", 2019), so it may score
best when served a little larger than it trained. Each photo's ORIGINAL bytes are decoded at each
size as the handler decodes them (`preprocessing.load_rgb`) and scored with the export's network
and temperature: the validation split (where a size is chosen), the test split, and with
`--sample-dir` every kept photo of another prepared set (petimages-fullsize-sample.zip: photos at
their original resolution, where upsampling cannot flatter a size). Cost: eager float32 img/s at
each size, batch `--batch`, `--threads` threads. Serve the chosen size by preparing the data at it
(`data.settings.image_size`, what the export's preprocessing.json records) and training smaller
(`data.train_sizes`).

Usage: python bench/serve_size.py (--export-dir DIR | --model-version N [--tracking-uri URI])
       --data-dir data/prepared-176 [--sample-dir DIR] [--sizes 176 192 208 224] [--limit N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from forward_passes import rate
from serve import add_export_arguments, export_folder

from catsdogs_pl import servable
from catsdogs_pl.contracts import Preprocessing
from catsdogs_pl.data.prepare import read_manifest
from catsdogs_pl.predictor import Predictor
from catsdogs_pl.training import calibration, robustness


def photos(
    data_dir: Path, splits: tuple[str, ...], limit: int | None
) -> tuple[list[bytes], list[str]]:
    """The original bytes and labels of the kept photos of `splits`; with `limit`, an even
    sample of that many (every k-th in manifest order, so both classes stay in)."""
    rows = [
        r
        for r in read_manifest(data_dir / "manifest.csv")
        if r.status == "kept" and r.split in splits
    ]
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    root = robustness.source_root(data_dir, robustness.read_prepared(data_dir))
    return [(root / r.relpath).read_bytes() for r in rows], [r.label for r in rows]


def score(
    net: torch.nn.Module,
    pre: Preprocessing,
    temperature: float,
    data: list[bytes],
    labels: list[str],
    size: int,
) -> dict[str, Any]:
    """Accuracy (overall and per class) and served ECE of `data` decoded at `size`: the served
    predict path (catsdogs_pl/predictor.py) with the network's input at `size`."""
    predictor = Predictor(net, dataclasses.replace(pre, image_size=size), temperature=temperature)
    with ThreadPoolExecutor(2) as pool:
        images = list(pool.map(lambda b: predictor.decode(b)[0], data))
    probs = [
        predictor.probabilities(images[start : start + 64]).numpy()
        for start in range(0, len(images), 64)
    ]
    p = np.concatenate(probs)
    targets = np.array([pre.classes.index(label) for label in labels])
    right = p.argmax(1) == targets
    return {
        "photos": len(targets),
        "accuracy": round(float(right.mean()), 4),
        **{c: round(float(right[targets == i].mean()), 4) for i, c in enumerate(pre.classes)},
        "ece": round(calibration.ece(p, targets), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_export_arguments(parser)
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="the prepared data it trained on"
    )
    parser.add_argument("--sample-dir", type=Path, help="another prepared set: all its kept photos")
    parser.add_argument("--sizes", type=int, nargs="+", default=[176, 192, 208, 224])
    parser.add_argument("--limit", type=int, help="at most this many photos per set")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_folder(args, Path(tmp) / "servable")
        net, pre = servable.load(folder)
        temperature = servable.temperature(folder)
    sets = {
        "val": photos(args.data_dir, ("val",), args.limit),
        "test": photos(args.data_dir, ("test",), args.limit),
    }
    if args.sample_dir:
        sets["sample"] = photos(args.sample_dir, ("train", "val", "test"), args.limit)
    print(
        json.dumps(
            {"trained_at": pre.image_size, "temperature": temperature, "flip_tta": net.flip_tta}
        )
    )
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        row = {"size": size, "images_per_s": round(rate(net, x, 5), 1)}
        row |= {name: score(net, pre, temperature, *found, size) for name, found in sets.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: (r["val"]["accuracy"], -r["size"]))
    print(json.dumps({"chosen on val": best["size"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
