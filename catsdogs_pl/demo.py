"""`python -m catsdogs_pl.demo` (`make demo`): the whole pipeline, no download, no external service.

Synthetic data -> fit (embedded MLflow) -> registry version -> .mar -> TorchServe -> deploy ->
two predictions -> the Prometheus metrics that moved -> where the MLflow UI is -> clean stop.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from catsdogs_pl import config, fit, places
from catsdogs_pl.errors import exit_code
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.serving import deploy, package, serve
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import answer_line, predict

DEMO_CONFIG = config.CONFIGS / "demo.yaml"
WATCHED = ("ts_inference_requests_total", "CatsDogsPredictions", "CatsDogsRejectedInputs")


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _test_images(prepared: Path, source: Path) -> list[Path]:
    """One test-split image per class, from the demo's manifest."""
    with open(prepared / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    return [source / next(r["relpath"] for r in rows if r["label"] == c) for c in ("cat", "dog")]


def _metrics() -> list[str]:
    text = ts.call("metrics", "GET", "/metrics").body.decode()
    return [line for line in text.splitlines() if line.startswith(WATCHED)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catsdogs_pl.demo", description=__doc__)
    parser.add_argument("--seed", type=int, help="the training seed (default: demo.yaml's)")
    args = parser.parse_args(argv)
    places.home().mkdir(parents=True, exist_ok=True)
    os.chdir(places.home())  # the config's relative paths (drawn pictures, data, checkpoints) too
    step(f"1/6 fit {DEMO_CONFIG.relative_to(places.ROOT)} (state in {places.home()})")
    seed = [] if args.seed is None else [f"--seed_everything={args.seed}"]
    summary = fit.main(["--config", str(DEMO_CONFIG), "--trainer.enable_progress_bar=false", *seed])
    registry = MlflowSettings.from_config(DEMO_CONFIG)  # where fit registered the version
    step("2/6 package the registered version for TorchServe")
    version, mar = package.package_version(version=summary.version, mlflow=registry)
    print(f"version {version}: {mar}")
    step("3/6 start TorchServe")
    print(serve.start())
    try:
        step("4/6 deploy")
        print(deploy.deploy_version(version=version, mlflow=registry))
        step("5/6 predict")
        data = config.load(DEMO_CONFIG)["data"]  # where fit drew and prepared the pictures
        for image in _test_images(places.home() / data["data_dir"], places.home() / data["source"]):
            print(answer_line(image, *predict(image)))
        bad = places.ROOT / "README.md"
        print(answer_line(bad, *predict(bad)), "(a bad upload gets a 400 of its own)")
        step("6/6 Prometheus metrics that moved")
        print("\n".join(_metrics()))
        print(f"\nMLflow UI: {Path(sys.executable).parent}/mlflow ui --backend-store-uri ", end="")
        print(f"{summary.tracking_uri}   then open http://127.0.0.1:5000")
    finally:
        print(serve.stop())
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
