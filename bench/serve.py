"""Serving throughput: TorchServe as we run it, against the in-process limit and a FastAPI server.

All three serve the same model on the same real photos (the JPEGs of the full-size sample that our
preprocessing keeps), one after the other, in the same run:
1. TorchServe started by `catsdogs_pl.serving.serve.start()` with the shared config; the archive built by
   `package.build_mar` and registered through the management API as `deploy` does. It runs on its
   own ports with its own state folder, so it never meets the tests' or a user's server.
2. The in-process limit: the handler's decode + predict called directly, in `--workers` threads of
   `--torch-threads` torch threads each on full batches: TorchServe's thread budget without HTTP,
   Java or queues.
3. The original project's design, bench/fastapi_server.py (FastAPI + uvicorn, one process, the
   model inside the request), with a TorchServe worker's torch threads by default: more intra-op
   threads than free cores collapse under OpenMP's spin-waiting (see --fastapi-torch-threads).
4. LitServe, bench/litserve_server.py: the staged model folder TorchServe serves (same runtime,
   same decode), with TorchServe's workers, threads, batch size and delay.
Servers get closed-loop clients (threads, one keep-alive connection each) at each concurrency for
`--duration` seconds after a warm-up; figures: requests/s, latency percentiles, errors.

Bench-only extras for 3 and 4, not project dependencies:
pip install fastapi uvicorn python-multipart litserve

Usage: python bench/serve.py (--export-dir DIR | --model-version N [--tracking-uri URI])
       [--data ../shared/data] [--duration 15] [--concurrency 1 4 16]
       [--workers W] [--torch-threads T] [--batch-size B] [--max-batch-delay MS]
       [--fastapi-torch-threads N] [--runtime auto|onnx|eager]
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import yaml
from mlflow import MlflowClient

from catsdogs_pl import places, preprocessing, registry, servable
from catsdogs_pl.data import sources
from catsdogs_pl.serving import package, serve
from catsdogs_pl.serving import torchserve as ts

WARMUP_S = 2.0
MIN_PHOTO_BYTES = 5_000  # thumbnails and stubs are not the photos users send
TS_PORT, FASTAPI_PORT, LITSERVE_PORT = 18080, 18090, 18100
TS_ENV = {  # every port TorchServe opens, moved away from the defaults the tests use
    "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{TS_PORT}",
    "TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:18081",
    "TS_METRICS_ADDRESS": "http://127.0.0.1:18082",
    "TS_GRPC_INFERENCE_PORT": "17070",
    "TS_GRPC_MANAGEMENT_PORT": "17071",
    "TS_INITIAL_WORKER_PORT": "19000",  # worker sockets are /tmp/.ts.sock.<port>
}
BOUNDARY = "catsdogs-bench"
EXTRAS = ("fastapi", "uvicorn", "python_multipart", "litserve")

T = TypeVar("T")


def export_folder(args: argparse.Namespace, tmp: Path) -> Path:
    """The export folder to serve: given, or `servable/` of the registry version's run."""
    if args.export_dir:
        return args.export_dir
    store = registry.MlflowSettings.from_config()
    client = MlflowClient(registry.resolve_tracking_uri(args.tracking_uri or store.tracking_uri))
    _, run_id = registry.resolve_version(client, store.registered_model, args.model_version)
    return Path(client.download_artifacts(run_id, "servable", str(tmp)))


def photos(archive: Path, tmp: Path, size: int) -> list[bytes]:
    """The real JPEG photos of the sample that our preprocessing accepts."""
    kept = []
    for f in sources.find_files(sources.extract(archive, tmp)):
        data = f.path.read_bytes()
        if len(data) <= MIN_PHOTO_BYTES or not data.startswith(b"\xff\xd8"):
            continue
        try:
            preprocessing.load_rgb(data, size)
        except preprocessing.BadImage:
            continue
        kept.append(data)
    return kept


def model_config(
    shipped: dict[str, Any], workers: int, threads: int, batch: int, delay: int, runtime: str
) -> dict[str, Any]:
    """The shipped model-config.yaml with the setting under test."""
    config = {**shipped, "minWorkers": workers, "maxWorkers": workers}
    config.update(batchSize=batch, maxBatchDelay=delay)
    config["handler"] = {**shipped["handler"], "torch_threads": threads, "runtime": runtime}
    return config


def run_for(lanes: int, duration: float, step: Callable[[int, int], T]) -> list[tuple[float, T]]:
    """Call `step(lane, i)` back to back in `lanes` threads; (seconds, result) of the calls that
    end inside the `duration` window after the warm-up."""
    begin = time.perf_counter() + WARMUP_S
    end = begin + duration
    records: list[tuple[float, T]] = []

    def lane(k: int) -> None:
        i = 0
        while (start := time.perf_counter()) < end:
            result = step(k, i)
            done = time.perf_counter()
            if begin <= done <= end:
                records.append((done - start, result))
            i += 1

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def http_load(
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: list[bytes],
    concurrency: int,
    duration: float,
) -> dict[str, float | None]:
    """Closed loop: `concurrency` clients, each sending the next photo when its answer arrived."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(concurrency)]

    def send(lane: int, i: int) -> bool:
        conn = conns[lane]
        try:
            conn.request("POST", path, bodies[(lane * 37 + i) % len(bodies)], headers)
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()  # the next request reconnects
            return False

    wall, cpu = time.perf_counter(), time.process_time()
    records = run_for(concurrency, duration, send)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for conn in conns:
        conn.close()
    ok_ms = np.array([seconds * 1e3 for seconds, ok in records if ok])
    p50, p95, p99 = np.percentile(ok_ms, [50, 95, 99]).round(1) if len(ok_ms) else [None] * 3
    return {
        "requests_per_s": round(len(ok_ms) / duration, 1),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "errors": len(records) - len(ok_ms),
        "client_cpu_cores": round(cpu / wall, 2),  # the clients share the server's cores
    }


def load_handler(model_dir: Path, config: dict[str, Any]) -> Any:
    """The handler as a TorchServe worker gets it: imported from the staged folder, initialized."""
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir)},
        manifest={"model": {"modelVersion": "1", "serializedFile": servable.WEIGHTS}},
        model_yaml_config=config,
    )
    sys.path.insert(0, str(model_dir))  # as in a worker, also while initialize() imports
    try:
        handler = importlib.import_module("catsdogs_handler").CatsDogsHandler()
        handler.initialize(context)
    finally:
        sys.path.remove(str(model_dir))
    return handler


def in_process_rate(
    handler: Any, images: list[bytes], workers: int, batch: int, duration: float
) -> tuple[float, dict[str, float]]:
    """Images/s of decode + predict on full batches, one thread per TorchServe worker, and the
    milliseconds per image of each stage: decode (open, check, decode, resize) and forward
    (normalize, the network, softmax)."""
    spent = {"decode": 0.0, "forward": 0.0}

    def step(lane: int, i: int) -> int:
        first = lane * len(images) // workers + i * batch
        rows = [{"body": images[(first + j) % len(images)]} for j in range(batch)]
        start = time.perf_counter()
        decoded = [handler.decode(row)[0] for row in rows]
        middle = time.perf_counter()
        handler.predict(decoded)
        spent["decode"] += middle - start
        spent["forward"] += time.perf_counter() - middle
        return batch

    done = sum(n for _, n in run_for(workers, duration, step))
    return done / duration, {k: round(1e3 * v / done, 2) for k, v in spent.items()}


def torchserve_load(
    mar: Path, images: list[bytes], levels: list[int], duration: float
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(what TorchServe reports of the model, load figures per concurrency)."""
    try:
        serve.start()
        query = urllib.parse.urlencode(
            {"url": mar.name, "model_name": places.MODEL_NAME, "synchronous": "true"}
        )
        ts.check(ts.call("management", "POST", f"/models?{query}", timeout=300), "register")
        entry = ts.wait_ready()
        reported = {
            "workers_ready": ts.ready_workers(entry),
            "batch_size": entry["batchSize"],
            "max_batch_delay_ms": entry["maxBatchDelay"],
        }
        headers = {
            "Content-Type": "application/octet-stream",
            "Authorization": f"Bearer {ts.read_key('inference')}",
        }
        path = f"/predictions/{places.MODEL_NAME}"
        return reported, {c: http_load(TS_PORT, path, headers, images, c, duration) for c in levels}
    finally:
        serve.stop()


def multipart(data: bytes) -> bytes:
    """A form upload of `data` in the field `file`, as a browser or `curl -F` sends it."""
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=file; filename=photo.jpg\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def server_load(
    script: str,
    options: list[str],
    port: int,
    images: list[bytes],
    levels: list[int],
    duration: float,
) -> dict[int, dict[str, Any]]:
    """Load figures per concurrency of a bench server (`POST /predict`, multipart field `file`)
    run as a subprocess: bench/fastapi_server.py or bench/litserve_server.py."""
    cmd = [sys.executable, str(Path(__file__).with_name(script)), *options, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=sys.stderr)  # stdout is for the JSON
    try:
        deadline = time.monotonic() + 120
        while True:  # the port opens once the model is loaded
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(cmd)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        bodies = [multipart(data) for data in images]
        return {c: http_load(port, "/predict", headers, bodies, c, duration) for c in levels}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--export-dir", type=Path, help="a servable export folder")
    which.add_argument("--model-version", help="registered version N of 'catsdogs'")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the home store")
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--duration", type=float, default=15, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    shipped = yaml.safe_load(places.MODEL_CONFIG.read_text())
    parser.add_argument("--workers", type=int, help="default: shipped, at most cores / threads")
    parser.add_argument("--torch-threads", type=int, default=shipped["handler"]["torch_threads"])
    parser.add_argument("--batch-size", type=int, default=shipped["batchSize"])
    parser.add_argument("--max-batch-delay", type=int, default=shipped["maxBatchDelay"], help="ms")
    parser.add_argument(
        "--fastapi-torch-threads", type=int, help="default: --torch-threads, as one worker"
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", "onnx", "eager"),
        default=shipped["handler"].get("runtime", "auto"),
        help="the handler's forward pass (model-config.yaml handler.runtime)",
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or max(1, min(shipped["minWorkers"], cores // args.torch_threads))
    missing = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} missing: pip install fastapi uvicorn python-multipart litserve"
        )
    archive = args.data / "petimages-fullsize-sample.zip"
    if not archive.exists():
        print(f"skipped: {archive} is absent (pass --data with the shared data folder)")
        return

    with tempfile.TemporaryDirectory(prefix="catsdogs-bench-serve-") as name:
        tmp = Path(name)
        export_dir = export_folder(
            args, tmp / "servable"
        )  # before CATSDOGS_HOME moves the home store
        pre = servable.load(export_dir)[1]
        images = photos(archive, tmp / "photos", pre.image_size)
        # TMPDIR: `torchserve --start/--stop` keep their PID file there, so --stop stops ours
        os.environ.update(TS_ENV, CATSDOGS_HOME=str(tmp / "home"), TMPDIR=str(tmp))
        config = model_config(
            shipped,
            workers,
            args.torch_threads,
            args.batch_size,
            args.max_batch_delay,
            args.runtime,
        )
        places.MODEL_CONFIG = tmp / "model-config.yaml"  # what stage() and build_mar() pack
        places.MODEL_CONFIG.write_text(yaml.safe_dump(config))
        model_dir = package.stage(export_dir, tmp / "model")
        handler = load_handler(model_dir, config)
        limit, stages = in_process_rate(handler, images, workers, args.batch_size, args.duration)
        mar = package.build_mar(export_dir, "1", places.model_store())
        reported, served = torchserve_load(mar, images, args.concurrency, args.duration)
        threads = args.fastapi_torch_threads or args.torch_threads
        options = ["--export-dir", str(export_dir), "--torch-threads", str(threads)]
        fastapi = server_load(
            "fastapi_server.py", options, FASTAPI_PORT, images, args.concurrency, args.duration
        )
        options = ["--model-dir", str(model_dir), "--runtime", args.runtime]
        options += ["--workers", str(workers), "--torch-threads", str(args.torch_threads)]
        options += ["--batch-size", str(args.batch_size)]
        options += ["--batch-timeout", str(args.max_batch_delay / 1000)]
        litserve = server_load(
            "litserve_server.py", options, LITSERVE_PORT, images, args.concurrency, args.duration
        )

    top = max(args.concurrency)
    result = {
        "photos": len(images),
        "cores": cores,
        "duration_s": args.duration,
        "setting": {
            "workers": workers,
            "torch_threads_per_worker": args.torch_threads,
            "batch_size": args.batch_size,
            "max_batch_delay_ms": args.max_batch_delay,
            "fastapi_torch_threads": threads,
            "runtime": handler.runtime,
        },
        "in_process_ms_per_image": stages,
        "torchserve_reported": reported,
        "in_process_limit_images_per_s": round(limit, 1),
        "torchserve": served,
        "fastapi": fastapi,
        "litserve": litserve,
        f"ratios_at_concurrency_{top}": {
            "torchserve_over_in_process_limit": ratio(served[top]["requests_per_s"], limit),
            "torchserve_over_fastapi": ratio(
                served[top]["requests_per_s"], fastapi[top]["requests_per_s"]
            ),
            "torchserve_over_litserve": ratio(
                served[top]["requests_per_s"], litserve[top]["requests_per_s"]
            ),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
