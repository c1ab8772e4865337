"""What the served-input statistics cost the handler: per-image handler time with and without
them, in one run, on the real photos of the full-size sample.

The handler runs as a TorchServe worker runs it (imported from the staged `.mar` folder, TorchServe's
own metrics cache, its metric lines formatted and written), on batches of the shipped batch size,
with the network of configs/fit.yaml (random weights: the cost does not depend on them, pass
--export-dir for a trained one). Rounds alternate between the shipped handler and the same handler
whose `observe` does nothing, so machine noise hits both alike; their difference is within the
noise, so the statistics are also timed alone (`observe` per image, one flush) and set against the
handler's time without them: `statistics_share_of_handler_time` is the figure (target <= 0.05).
Two flush settings: the shipped one (a thread emits the buckets every few seconds, so a busy worker
pays one flush per few hundred images) and flushing after every batch (`statistics_flush_s: 0`, the
worst case).

Usage: python bench/input_statistics.py [--data ../shared/data] [--rounds 5] [--export-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from serve import load_handler, photos  # bench/serve.py: the handler as a worker gets it
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from catsdogs_pl import config as fit_config
from catsdogs_pl import places, preprocessing, servable, signing
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.serving import package, serve, sign


def random_export(folder: Path) -> Path:
    """configs/fit.yaml's network and image size, random weights."""
    fit = fit_config.load(fit_config.FIT)
    net = BaselineCNN(**fit["model"]["net"]["init_args"])
    size = fit["data"]["settings"]["image_size"]
    return servable.export(net, preprocessing.spec(size, ["cat", "dog"]), folder)


def worker_context(config: dict[str, Any]) -> SimpleNamespace:
    """What handle() gets: TorchServe's metrics cache (lines to /dev/null) and a status sink."""
    metrics = MetricsCacheYamlImpl(str(serve.METRICS_CONFIG))
    metrics.initialize_cache()
    metrics.model_name = places.MODEL_NAME
    metrics.set_request_ids({i: f"r{i}" for i in range(config["batchSize"])})
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the run)
    logging.getLogger("ts.metrics").addHandler(sink)
    logging.getLogger("ts.metrics").setLevel(logging.INFO)
    logging.getLogger("ts.metrics").propagate = False
    return SimpleNamespace(metrics=metrics, set_response_status=lambda *a, **k: None)


def per_image_ms(handler: Any, context: Any, images: list[bytes], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(images) - batch + 1, batch):
        handler.handle([{"body": data} for data in images[i : i + batch]], context)
    return (time.perf_counter() - start) * 1e3 / (len(images) // batch * batch)


def direct_costs(handler: Any, context: Any, images: list[bytes], batch: int) -> dict:
    """The statistics alone, timed without the rest of the handler: `observe` per image, and one
    flush of a full set of buckets (what the thread emits every statistics_flush_s)."""
    from ts.metrics.dimension import Dimension

    batches = [
        handler.predictor.predict(images[i : i + batch])
        for i in range(0, len(images) - batch + 1, batch)
    ]
    start = time.perf_counter()
    for answers in batches:
        handler.observe(answers)
    observe_ms = (time.perf_counter() - start) * 1e3 / (len(batches) * batch)
    start = time.perf_counter()
    handler.flush(context.metrics, [Dimension("model_version", "1")])
    return {"observe_ms_per_image": observe_ms, "flush_ms": (time.perf_counter() - start) * 1e3}


def measure(model_dir: Path, config: dict[str, Any], images: list[bytes], rounds: int) -> dict:
    handler = load_handler(model_dir, config)
    context = worker_context(config)
    batch = config["batchSize"]
    shipped = handler.observe
    times: dict[str, list[float]] = {"with": [], "without": []}
    per_image_ms(handler, context, images[: 4 * batch], batch)
    for _ in range(rounds):
        for mode in ("without", "with"):
            handler.observe = shipped if mode == "with" else (lambda *args: None)
            times[mode].append(per_image_ms(handler, context, images, batch))
    handler.observe = shipped
    with_ms, without_ms = (statistics.median(times[m]) for m in ("with", "without"))
    direct = direct_costs(handler, context, images, batch)
    flush_s = config["handler"]["statistics_flush_s"]
    # a flush every batch, or one per flush interval of a worker busy all the time
    per_flush = batch if flush_s == 0 else max(batch, flush_s * 1e3 / without_ms)
    stats_ms = direct["observe_ms_per_image"] + direct["flush_ms"] / per_flush
    return {
        "handler_ms_per_image_without": round(without_ms, 3),
        "handler_ms_per_image_with": round(with_ms, 3),
        "ratio_with_over_without": round(with_ms / without_ms, 4),
        "rounds_ms": {m: [round(t, 2) for t in v] for m, v in times.items()},
        "observe_ms_per_image": round(direct["observe_ms_per_image"], 4),
        "flush_ms": round(direct["flush_ms"], 3),
        "images_per_flush": round(per_flush),
        "statistics_ms_per_image": round(stats_ms, 4),
        "statistics_share_of_handler_time": round(stats_ms / without_ms, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--export-dir", type=Path, help="a servable export (default: random)")
    args = parser.parse_args()
    archive = args.data / "petimages-fullsize-sample.zip"
    if not archive.exists():
        print(f"skipped: {archive} is absent (pass --data with the shared data folder)")
        return
    shipped = yaml.safe_load(places.MODEL_CONFIG.read_text())
    with tempfile.TemporaryDirectory(prefix="catsdogs-bench-stats-") as name:
        tmp = Path(name)
        os.environ.update(signing.environment(places.home()))  # what the handler verifies by
        export_dir = args.export_dir or sign.sign_export(random_export(tmp / "export"))
        model_dir = package.stage(export_dir, tmp / "model")
        pre = servable.load(export_dir)[1]
        images = photos(archive, tmp / "photos", pre.image_size)
        torch.set_num_threads(shipped["handler"]["torch_threads"])
        result = {
            "photos": len(images),
            "image_size": pre.image_size,
            "batch_size": shipped["batchSize"],
            "torch_threads": shipped["handler"]["torch_threads"],
        }
        for label, flush_s in (("shipped_flush", None), ("flush_every_batch", 0)):
            config = dict(shipped)
            if flush_s is not None:
                config["handler"] = {**shipped["handler"], "statistics_flush_s": flush_s}
            result[label] = measure(model_dir, config, images, args.rounds)
            result[label]["statistics_flush_s"] = config["handler"]["statistics_flush_s"]
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
