"""Serving throughput: TorchServe as we run it, against the in-process limit and peer servers.

All of them serve the same model on the same real photos (the JPEGs of the full-size sample that our
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
5. torchserve-shipped: TorchServe on the same export as it was served before the forward gate
   (flip TTA, float32): what the accepted forward pass buys, measured in the same run.
6. litserve-eager: LitServe as its users write it, eager PyTorch at batch 8 on the same export.
7. kserve: the second door, catsdogs_pl/serving/oip.py (KServe's Python server, Open Inference
   Protocol) on the staged folder TorchServe serves, `--workers` requests at once; each request
   one photo's raw bytes in the v2 binary data extension, as tritonclient sends them.
Servers get closed-loop clients (threads, one keep-alive connection each) at each concurrency for
`--duration` seconds after a warm-up; figures: requests/s, latency percentiles, errors. Where the
time goes: the in-process ms per image of each stage (open, decode, normalize, forward) and, for
TorchServe, the mean ms per request split by its own counters (client and HTTP, queue, batching
and worker IPC, handler).

The peers (3, 4) need the bench extra, not a project dependency: pip install -e '.[bench]';
kserve (7) the oip extra.

Usage: python bench/serve.py (--export-dir DIR | --model-version N [--tracking-uri URI])
       [--data ../shared/data] [--duration 15] [--concurrency 1 4 16]
       [--workers W] [--torch-threads T] [--batch-size B] [--max-batch-delay MS]
       [--fastapi-torch-threads N] [--runtime auto|openvino|onnx|eager] [--netty-threads N]
       [--servers torchserve torchserve-shipped litserve litserve-eager fastapi kserve]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import importlib.util
import json
import os
import shutil
import signal
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

from catsdogs_pl import places, preprocessing, registry, servable, signing
from catsdogs_pl.contracts import Architecture, ForwardPass
from catsdogs_pl.data import sources
from catsdogs_pl.serving import package, serve, sign
from catsdogs_pl.serving import torchserve as ts

WARMUP_S = 2.0
MIN_PHOTO_BYTES = 5_000  # thumbnails and stubs are not the photos users send
TS_PORT, FASTAPI_PORT, LITSERVE_PORT, KSERVE_PORT = 18080, 18090, 18100, 18110
TS_ENV = {  # every port TorchServe opens, moved away from the defaults the tests use
    "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{TS_PORT}",
    "TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:18081",
    "TS_METRICS_ADDRESS": "http://127.0.0.1:18082",
    "TS_GRPC_INFERENCE_PORT": "17070",
    "TS_GRPC_MANAGEMENT_PORT": "17071",
    "TS_INITIAL_WORKER_PORT": "19000",  # worker sockets are /tmp/.ts.sock.<port>
}
BOUNDARY = "catsdogs-bench"
SERVER_CLOCKS = (  # TorchServe's counters, and our handler's histogram (configs/torchserve/metrics.yaml)
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",  # from the frontend's receipt of a request to its answer
    "ts_queue_latency_microseconds",
    "CatsDogsHandlerSeconds_sum",
    "CatsDogsHandlerSeconds_count",
)
# torchserve-shipped: the same export as served before the forward gate (flip TTA, float32);
# litserve-eager: LitServe as its users write it (eager PyTorch, batch 8) on the same export
SERVERS = ("torchserve", "torchserve-shipped", "litserve", "litserve-eager", "fastapi", "kserve")
EXTRAS = {  # the bench-only packages each peer server needs (import names)
    "fastapi": ("fastapi", "uvicorn", "python_multipart"),
    "litserve": ("litserve", "fastapi", "uvicorn", "python_multipart"),
    "litserve-eager": ("litserve", "fastapi", "uvicorn", "python_multipart"),
    "kserve": ("kserve", "tritonclient"),  # the oip extra
}
USERS_BATCH = 8  # litserve-eager's batch size

T = TypeVar("T")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """--export-dir or --model-version, and --tracking-uri: what export_folder reads."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--export-dir", type=Path, help="a servable export folder")
    which.add_argument("--model-version", help="registered version N of 'catsdogs'")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the home store")


def export_folder(args: argparse.Namespace, tmp: Path) -> Path:
    """The export folder to serve: given, or `servable/` of the registry version's run."""
    if args.export_dir:
        return args.export_dir
    store = registry.MlflowSettings.from_config()
    client = MlflowClient(registry.resolve_tracking_uri(args.tracking_uri or store.tracking_uri))
    _, run_id = registry.resolve_version(client, store.registered_model, args.model_version)
    return Path(client.download_artifacts(run_id, "servable", str(tmp)))


def shipped_export(export_dir: Path, out: Path) -> Path:
    """`export_dir` as it was served before the forward gate: flip TTA on (where the network has
    it), float32 (no forward.json or int8 graph; stage exports model.onnx with the TTA)."""
    out.mkdir(parents=True)
    skipped = (ForwardPass.FILE, servable.INT8, servable.ONNX)
    for name in servable.present(export_dir):
        if name not in skipped:
            shutil.copy(export_dir / name, out / name)
    arch = Architecture.read(out)
    if "flip_tta" in arch.init_args:
        Architecture(arch.network, {**arch.init_args, "flip_tta": True}).write(out)
    return sign.sign_export(out)


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
    headers: dict[str, str] | list[dict[str, str]],
    bodies: list[bytes],
    concurrency: int,
    duration: float,
) -> dict[str, float | None]:
    """Closed loop: `concurrency` clients, each sending the next photo when its answer arrived
    (`headers`: the same for every body, or one per body).
    `all_mean_ms`: the mean of every answer, the warm-up's too, as the server's counters see them."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(concurrency)]
    every, lock = [0.0, 0], threading.Lock()  # seconds and count of all answers

    def send(lane: int, i: int) -> bool:
        conn = conns[lane]
        start = time.perf_counter()
        try:
            k = (lane * 37 + i) % len(bodies)
            conn.request(
                "POST", path, bodies[k], headers[k] if isinstance(headers, list) else headers
            )
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()  # the next request reconnects
            return False
        with lock:
            every[0] += time.perf_counter() - start
            every[1] += 1
        return response.status == 200

    wall, cpu = time.perf_counter(), time.process_time()
    records = run_for(concurrency, duration, send)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for conn in conns:
        conn.close()
    ok_ms = np.array([seconds * 1e3 for seconds, ok in records if ok])
    p50, p95, p99 = np.percentile(ok_ms, [50, 95, 99]).round(1) if len(ok_ms) else [None] * 3
    return {
        "requests_per_s": round(len(ok_ms) / duration, 1),
        "mean_ms": round(float(ok_ms.mean()), 2) if len(ok_ms) else None,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "errors": len(records) - len(ok_ms),
        "client_cpu_cores": round(cpu / wall, 2),  # the clients share the server's cores
        "all_mean_ms": round(1e3 * every[0] / max(every[1], 1), 2),
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
    handlers: list[Any], images: list[bytes], batch: int, duration: float
) -> tuple[float, dict[str, float]]:
    """Images/s of decode + predict on full batches, one thread and handler per TorchServe worker
    (a runtime's session may serve one call at a time, as it does in a worker), and the
    milliseconds per image of each stage: open (the header and its checks), decode (draft JPEG
    decoding, EXIF, RGB, resize), normalize (the float batch) and forward (the network, softmax)."""
    spent = dict.fromkeys(("open", "decode", "normalize", "forward"), 0.0)

    def step(lane: int, i: int) -> int:
        handler = handlers[lane]
        first = lane * len(images) // len(handlers) + i * batch
        uploads = [images[(first + j) % len(images)] for j in range(batch)]
        clock = [time.perf_counter()]
        opened = [handler.predictor.open(data) for data in uploads]
        clock.append(time.perf_counter())
        decoded = [handler.predictor.pixels(img) for img in opened]
        clock.append(time.perf_counter())
        x = handler.predictor.batch(decoded)
        clock.append(time.perf_counter())
        handler.predictor.scores(x)
        clock.append(time.perf_counter())
        for stage, start, end in zip(spent, clock, clock[1:], strict=False):
            spent[stage] += end - start
        return batch

    done = sum(n for _, n in run_for(len(handlers), duration, step))
    return done / duration, {k: round(1e3 * v / done, 2) for k, v in spent.items()}


def server_clocks() -> dict[str, float]:
    """TorchServe's cumulative counters of the time its requests took (all versions summed)."""
    text = ts.check(ts.call("metrics", "GET", "/metrics", token=False), "metrics").body.decode()
    found = dict.fromkeys(SERVER_CLOCKS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


def server_stages(before: dict[str, float], after: dict[str, float], mean_ms: float) -> dict:
    """Where a request's mean time went, in ms: outside TorchServe's clock (the client, the socket,
    HTTP parsing), queued in the frontend, between queue and handler (the batch forming, the
    request to and the answer from the worker process, the JSON) and in the handler (its whole
    batch: decode and forward)."""
    d = {name: after[name] - before[name] for name in after}
    requests = d["ts_inference_requests_total"]
    if not requests or not d["CatsDogsHandlerSeconds_count"]:
        return {}
    inside = d["ts_inference_latency_microseconds"] / 1e3 / requests
    queue = d["ts_queue_latency_microseconds"] / 1e3 / requests
    handler = 1e3 * d["CatsDogsHandlerSeconds_sum"] / d["CatsDogsHandlerSeconds_count"]
    figures = {
        "client_and_http": mean_ms - inside,
        "queue": queue,
        "batching_and_worker_ipc": inside - queue - handler,
        "handler": handler,
    }
    return {name: round(ms, 2) for name, ms in figures.items()}


def torchserve_load(
    mar: Path, images: list[bytes], levels: list[int], duration: float
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(what TorchServe reports of the model, load figures and stages per concurrency)."""
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
        served = {}
        for c in levels:
            before = server_clocks()
            served[c] = http_load(TS_PORT, path, headers, images, c, duration)
            served[c]["ms_per_request"] = server_stages(
                before, server_clocks(), served[c]["mean_ms"]
            )
        return reported, served
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
    cmd: list[str],
    port: int,
    path: str,
    headers: dict[str, str] | list[dict[str, str]],
    bodies: list[bytes],
    levels: list[int],
    duration: float,
) -> dict[int, dict[str, Any]]:
    """Load figures per concurrency of a server run as a subprocess by `cmd`, listening on
    `port`: bench/fastapi_server.py, bench/litserve_server.py or the KServe door."""
    if listening(port):  # a server left over would be measured in place of this one
        raise SystemExit(f"port {port} is in use: stop what listens there, then run again")
    # its own process group: LitServe's workers and API servers are children, stopped with it
    proc = subprocess.Popen(cmd, stdout=sys.stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not listening(port):  # the port opens once the model is loaded
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(cmd)}")
            time.sleep(0.5)
        return {c: http_load(port, path, headers, bodies, c, duration) for c in levels}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        time.sleep(1)  # the group's children exit after their parent
        if listening(port):
            os.killpg(proc.pid, signal.SIGKILL)


def bench_server(
    script: str,
    options: list[str],
    port: int,
    images: list[bytes],
    levels: list[int],
    duration: float,
) -> dict[int, dict[str, Any]]:
    """A peer of bench/ (`POST /predict`, multipart field `file`)."""
    cmd = [sys.executable, str(Path(__file__).with_name(script)), *options, "--port", str(port)]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    bodies = [multipart(data) for data in images]
    return server_load(cmd, port, "/predict", headers, bodies, levels, duration)


def kserve_load(
    model_dir: Path, options: list[str], images: list[bytes], levels: list[int], duration: float
) -> dict[int, dict[str, Any]]:
    """The second door (catsdogs_pl/serving/oip.py) on the staged folder: one image a request,
    its raw bytes in the v2 binary data extension, as tritonclient sends them."""
    import tritonclient.http as triton

    bodies, headers = [], []
    for data in images:
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([data], dtype=object))
        body, length = triton.InferenceServerClient.generate_request_body([image])
        bodies.append(body)
        headers.append({"Inference-Header-Content-Length": str(length)})
    os.environ["TS_OIP_ADDRESS"] = f"http://127.0.0.1:{KSERVE_PORT}"
    cmd = [sys.executable, "-m", "catsdogs_pl.serving.oip", "--model-dir", str(model_dir), *options]
    path = f"/v2/models/{places.MODEL_NAME}/infer"
    return server_load(cmd, KSERVE_PORT, path, headers, bodies, levels, duration)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_export_arguments(parser)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--duration", type=float, default=15, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="default: all"
    )
    shipped = yaml.safe_load(places.MODEL_CONFIG.read_text())
    parser.add_argument("--workers", type=int, help="default: shipped, at most cores / threads")
    parser.add_argument("--torch-threads", type=int, default=shipped["handler"]["torch_threads"])
    parser.add_argument("--batch-size", type=int, default=shipped["batchSize"])
    parser.add_argument("--max-batch-delay", type=int, default=shipped["maxBatchDelay"], help="ms")
    parser.add_argument(
        "--netty-threads", type=int, help="TorchServe's netty threads (default: config.properties)"
    )
    parser.add_argument(
        "--fastapi-torch-threads", type=int, help="default: --torch-threads, as one worker"
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", *servable.RUNTIMES, "eager"),
        default=shipped["handler"].get("runtime", "auto"),
        help="the handler's forward pass (model-config.yaml handler.runtime)",
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or max(1, min(shipped["minWorkers"], cores // args.torch_threads))
    extras = [name for server in args.servers for name in EXTRAS.get(server, ())]
    missing = [name for name in extras if importlib.util.find_spec(name) is None]
    if missing:
        packages = " ".join(sorted({name.replace("_", "-") for name in extras}))
        raise SystemExit(f"{', '.join(missing)} missing: pip install {packages}")
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
        os.environ.update(signing.environment(places.home()))  # the user's keys in every home
        os.environ.update(TS_ENV, CATSDOGS_HOME=str(tmp / "home"), TMPDIR=str(tmp))
        if args.netty_threads:  # enable_envvars_config: TS_<PROPERTY> overrides config.properties
            os.environ["TS_NUMBER_OF_NETTY_THREADS"] = str(args.netty_threads)
            os.environ["TS_NETTY_CLIENT_THREADS"] = str(args.netty_threads)
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
        handlers = [load_handler(model_dir, config) for _ in range(workers)]
        limit, stages = in_process_rate(handlers, images, args.batch_size, args.duration)
        served: dict[str, dict[int, dict[str, Any]]] = {}
        reported = None
        if "torchserve" in args.servers:
            mar = package.build_mar(export_dir, "1", places.model_store())
            reported, served["torchserve"] = torchserve_load(
                mar, images, args.concurrency, args.duration
            )
        if "torchserve-shipped" in args.servers:
            before = shipped_export(export_dir, tmp / "shipped")
            os.environ["CATSDOGS_HOME"] = str(tmp / "home-shipped")  # its own store and state
            mar = package.build_mar(before, "1", places.model_store())
            _, served["torchserve-shipped"] = torchserve_load(
                mar, images, args.concurrency, args.duration
            )
        threads = args.fastapi_torch_threads or args.torch_threads
        if "fastapi" in args.servers:
            options = ["--export-dir", str(export_dir), "--torch-threads", str(threads)]
            served["fastapi"] = bench_server(
                "fastapi_server.py", options, FASTAPI_PORT, images, args.concurrency, args.duration
            )
        peers = {
            "litserve": (args.runtime, args.batch_size),
            "litserve-eager": ("eager", USERS_BATCH),
        }
        for name, (runtime, batch) in peers.items():
            if name not in args.servers:
                continue
            options = ["--model-dir", str(model_dir), "--runtime", runtime]
            options += ["--workers", str(workers), "--torch-threads", str(args.torch_threads)]
            options += ["--batch-size", str(batch)]
            options += ["--batch-timeout", str(args.max_batch_delay / 1000)]
            served[name] = bench_server(
                "litserve_server.py",
                options,
                LITSERVE_PORT,
                images,
                args.concurrency,
                args.duration,
            )

        if "kserve" in args.servers:
            options = ["--runtime", args.runtime, "--threads", str(workers)]
            served["kserve"] = kserve_load(
                model_dir, options, images, args.concurrency, args.duration
            )

    top = max(args.concurrency)
    rates = {name: levels[top]["requests_per_s"] for name, levels in served.items()}
    ratios = {"torchserve_over_in_process_limit": ratio(rates.get("torchserve", 0.0), limit)}
    for peer in ("torchserve-shipped", "litserve", "litserve-eager", "fastapi"):
        if "torchserve" in rates and peer in rates:
            ratios[f"torchserve_over_{peer}"] = ratio(rates["torchserve"], rates[peer])
    if "torchserve" in rates and "kserve" in rates:  # #36: the second door must keep >= 0.9x
        ratios["kserve_over_torchserve"] = ratio(rates["kserve"], rates["torchserve"])
        ratios["kserve_p99_ms"] = served["kserve"][top]["p99_ms"]
        ratios["torchserve_p99_ms"] = served["torchserve"][top]["p99_ms"]
    result = {
        "photos": len(images),
        "cores": cores,
        "duration_s": args.duration,
        "setting": {
            "workers": workers,
            "torch_threads_per_worker": args.torch_threads,
            "batch_size": args.batch_size,
            "max_batch_delay_ms": args.max_batch_delay,
            "netty_threads": args.netty_threads or "config.properties",
            "fastapi_torch_threads": threads,
            "runtime": handlers[0].predictor.runtime,
            "precision": handlers[0].predictor.precision,
            "flip_tta": handlers[0].predictor.flip_tta,
        },
        "in_process_ms_per_image": stages,
        "in_process_limit_images_per_s": round(limit, 1),
        "torchserve_reported": reported,
        **served,
        f"ratios_at_concurrency_{top}": ratios,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
