"""What each forward pass costs and what it answers: img/s in process and test-split accuracy.

For a registered version (or a servable export) and the prepared data it was trained on: eager
float32 PyTorch and every reduced-precision rung of the forward gate (OpenVINO float32 and bf16,
NNCF int8), each with and without flip TTA, timed on batches of `--batch` with `--threads` threads
(TorchServe's whole thread budget in one process), and scored on the cached test split (the
served decode of each test photo). Rungs this CPU has no units for are skipped, saying so.
The gate's own choice is forward.json's; this table is for seeing what accuracy costs.

Usage: python bench/forward_passes.py (--export-dir DIR | --model-version N [--tracking-uri URI])
       --data-dir data/prepared-176 [--batch 4] [--threads 2] [--seconds 5] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from serve import add_export_arguments, export_folder

from catsdogs_pl import servable
from catsdogs_pl.contracts import Preprocessing
from catsdogs_pl.data import cache
from catsdogs_pl.training import forward_gate


def rate(forward: Any, x: torch.Tensor, seconds: float) -> float:
    """Images/s of `forward` on `x`, over `seconds` after a warm-up call."""
    with torch.inference_mode():
        forward(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            forward(x)
            done += len(x)
    return done / (time.perf_counter() - start)


def build(
    label: str,
    net: torch.nn.Module,
    folder: Path,
    pre: Preprocessing,
    calibration: np.ndarray,
    threads: int,
) -> Any:
    """The forward pass `label` names ("eager f32", "openvino f32|bf16|int8") of `folder`'s graph."""
    if label == "eager f32":
        return net
    precision = label.split()[1]
    graph = folder / servable.ONNX
    if precision == "int8":
        graph = forward_gate.quantize_int8(folder, pre, calibration)
    return servable.OpenVinoNet(graph, threads, precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_export_arguments(parser)
    parser.add_argument("--data-dir", type=Path, required=True, help="the prepared data")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--limit", type=int, help="score the first N test photos (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    units = servable.host_units()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        net, pre = servable.load(export_folder(args, tmp / "servable"))
        test = cache.split_files(args.data_dir, pre.image_size, "test")
        images, targets = (
            np.load(test[0], mmap_mode="r")[: args.limit],
            np.load(test[1])[: args.limit],
        )
        train = np.load(cache.split_files(args.data_dir, pre.image_size, "train")[0], mmap_mode="r")
        pick = np.sort(np.random.default_rng(0).permutation(len(train))[: forward_gate.CALIBRATION])
        x = torch.randn(args.batch, 3, pre.image_size, pre.image_size)
        rows = []
        for tta in (True, False):
            net.flip_tta = tta
            folder = tmp / f"tta-{tta}"
            folder.mkdir()
            if servable.export_onnx(net, pre.image_size, folder) is None:
                raise SystemExit("the onnx extra is not installed: pip install -e '.[onnx]'")
            passes = [
                "eager f32",
                "openvino f32",
                *(f"openvino {u}" for u in ("bf16", "int8") if u in units),
            ]
            for label in passes:
                forward = build(label, net, folder, pre, train[pick], args.threads)
                found = forward_gate.predict(forward, pre, images)
                rows.append(
                    {
                        "forward pass": f"{label}{' + flip TTA' if tta else ''}",
                        "images_per_s": round(rate(forward, x, args.seconds), 1),
                        "test_accuracy": round(float((found == targets).mean()), 4),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(folder)
    skipped = sorted({"bf16", "int8"} - units)
    print(
        json.dumps(
            {
                "test_photos": len(targets),
                "batch": args.batch,
                "threads": args.threads,
                "skipped (no units)": skipped,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
