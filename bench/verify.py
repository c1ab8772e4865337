"""What verifying a .mar's signature adds to a worker's start, against loading its model (#35: it
must stay under 10 %).

For each network (fit.yaml's baseline CNN, finetune.yaml's EfficientNet with its ImageNet weights;
either with an untrained head: cost only), an export is signed and staged as package does, then
each run is a fresh Python process that loads the handler as a TorchServe worker does (imported
from the staged folder, `initialize`) and reads back the two times the handler logs: signature
verification (the first import of model-signing included, as in a worker) and model load (the
network, its weights and the runtime that serves it), and the worker's whole start as the
parent sees it (Python, torch, the handler, verification and load). Prints the medians of --runs,
the ratio to the model load and to the whole start, and what the first import of model-signing
alone costs (timed in a process of its own: most of the verification of a small network).

    python bench/verify.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from catsdogs_pl import config as fit_config
from catsdogs_pl import places, preprocessing, servable, signing
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.models.efficientnet_lite import EfficientNetLite
from catsdogs_pl.serving import package, sign

LOGGED = re.compile(r"signature verified with .* in ([\d.]+) ms; model loaded in ([\d.]+) ms")
WORKER = """
import logging, sys
from types import SimpleNamespace
import yaml
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
model_dir = sys.argv[1]
sys.path.insert(0, model_dir)
import catsdogs_handler
context = SimpleNamespace(
    system_properties={"model_dir": model_dir},
    manifest={"model": {"modelVersion": "1", "serializedFile": "weights.pt"}},
    model_yaml_config=yaml.safe_load(open(sys.argv[2])),
)
catsdogs_handler.CatsDogsHandler().initialize(context)
"""


def networks() -> dict[str, tuple[object, int]]:
    """name -> (network, image size) of the shipped configs."""
    fit = fit_config.load(fit_config.FIT)
    tuned = fit_config.load(places.ROOT / "configs" / "finetune.yaml")
    args = tuned["model"]["net"]["init_args"]
    return {
        "fit.yaml BaselineCNN": (
            BaselineCNN(**fit["model"]["net"]["init_args"]),
            fit["data"]["settings"]["image_size"],
        ),
        f"finetune.yaml EfficientNet-{args['variant']}": (
            EfficientNetLite(**args),
            tuned["data"]["settings"]["image_size"],
        ),
    }


def worker_start(model_dir: Path, runs: int) -> tuple[float, float, float]:
    """Median (verify ms, load ms, whole start ms) over `runs` fresh worker processes."""
    found = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(model_dir), str(places.MODEL_CONFIG)],
            capture_output=True,
            text=True,
            check=True,
        )
        whole = (time.perf_counter() - started) * 1000
        found.append((*map(float, LOGGED.search(done.stdout).groups()), whole))
    return tuple(statistics.median(f[i] for f in found) for i in range(3))


def import_ms(runs: int) -> float:
    """Median ms of `import model_signing.verifying` in a fresh process."""
    code = "import time; t = time.perf_counter(); import model_signing.verifying; "
    code += "print((time.perf_counter() - t) * 1000)"
    return statistics.median(
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(runs)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catsdogs-bench-verify-") as name:
        tmp = Path(name)
        os.environ["CATSDOGS_HOME"] = str(tmp / "home")  # a key pair of its own
        os.environ.update(signing.environment(tmp / "home"))  # what serve gives workers
        handler = yaml.safe_load(places.MODEL_CONFIG.read_text())["handler"]
        imported = import_ms(args.runs)
        for label, (net, size) in networks().items():
            folder = tmp / re.sub(r"\W+", "-", label)
            export = servable.export(net, preprocessing.spec(size, ["cat", "dog"]), folder)
            staged = package.stage(sign.sign_export(export), tmp / f"{folder.name}-model")
            verify_ms, load_ms, start_ms = worker_start(staged, args.runs)
            weights_mb = (staged / servable.WEIGHTS).stat().st_size / 2**20
            print(
                json.dumps(
                    {
                        "network": label,
                        "export_mb": round(
                            sum(p.stat().st_size for p in export.iterdir()) / 2**20, 1
                        ),
                        "weights_mb": round(weights_mb, 1),
                        "runtime": handler.get("runtime", "auto"),
                        "verify_ms": verify_ms,
                        "load_ms": load_ms,
                        "worker_start_ms": round(start_ms),
                        "verify_over_load": round(verify_ms / load_ms, 3),
                        "verify_over_worker_start": round(verify_ms / start_ms, 3),
                        "import_model_signing_ms": round(imported, 1),
                        "runs": args.runs,
                    }
                )
            )


if __name__ == "__main__":
    main()
