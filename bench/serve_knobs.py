"""TorchServe's knobs by measurement: bench/serve.py (TorchServe only) once per setting, one knob
changed at a time from the shipped configs/torchserve files, and one line of figures per setting.

Usage: python bench/serve_knobs.py (--export-dir DIR | --model-version N) [--duration 10]
       [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SETTINGS = {  # the knob changed, as bench/serve.py options; "shipped": none changed
    "shipped": [],
    "1 worker x 2 threads": ["--workers", "1", "--torch-threads", "2"],
    "batch 1": ["--batch-size", "1"],
    "batch 8": ["--batch-size", "8"],
    "batch 16": ["--batch-size", "16"],
    "delay 5 ms": ["--max-batch-delay", "5"],
    "delay 20 ms": ["--max-batch-delay", "20"],
    "netty 1": ["--netty-threads", "1"],
    "netty 4": ["--netty-threads", "4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--export-dir", type=Path)
    which.add_argument("--model-version")
    parser.add_argument("--duration", default="10")
    parser.add_argument("--concurrency", default="16")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    args = parser.parse_args()
    model = ["--export-dir", str(args.export_dir)] if args.export_dir else []
    model += ["--model-version", args.model_version] if args.model_version else []
    serve = Path(__file__).with_name("serve.py")
    print("setting | req/s | p50 ms | p99 ms | errors | in-process img/s | ratio")
    for name in args.settings:
        cmd = [sys.executable, str(serve), *model, "--servers", "torchserve"]
        cmd += ["--duration", args.duration, "--concurrency", args.concurrency, *SETTINGS[name]]
        found = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        load = found["torchserve"][args.concurrency]
        ratio = found[f"ratios_at_concurrency_{args.concurrency}"]
        print(
            f"{name} | {load['requests_per_s']} | {load['p50_ms']} | {load['p99_ms']} | "
            f"{load['errors']} | {found['in_process_limit_images_per_s']} | "
            f"{ratio['torchserve_over_in_process_limit']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
