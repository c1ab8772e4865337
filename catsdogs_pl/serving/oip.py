"""The second door: a registered version behind the Open Inference Protocol (KServe "v2" REST,
which Triton, KServe, MLServer and OpenVINO Model Server speak), on KServe's Python server, through
the predict path the TorchServe handler uses (catsdogs_pl/predictor.py): the same decoding, the
same forward pass, the same calibrated probabilities, the same 400 reasons.

    python -m catsdogs_pl.serving.oip --model-version 3     # a registry version (its .mar)
    python -m catsdogs_pl.serving.oip --model-dir DIR       # an unpacked .mar or a signed export

What it loads is verified first, as a TorchServe worker verifies it (the public key of
catsdogs_pl/signing.py). Port: `oip_address` of config.properties (8085; TS_OIP_ADDRESS
overrides it); KServe binds every interface. Endpoints: /v2/health/live, /v2/health/ready,
/v2/models/catsdogs (metadata), /v2/models/catsdogs/ready, /v2/models/catsdogs/infer (also under
/versions/N for the version it serves; another N is a 404), /metrics. `Door` adds what KServe's
server lacks (versions, raw bytes in the binary data extension).

The request: one BYTES input `image` of shape [N], each element an image's bytes (the binary
data extension, as tritonclient sends them) or its base64 (JSON). The answer: `label` (BYTES [N])
and `probabilities` (FP32 [N, classes], the metadata's class order). One bad image makes the
request a 400 with the protocol's error body, `{"error": "image[i]: <reason>: <detail>"}`.
Metrics carry the names and labels the handler's have in TorchServe (CatsDogsPredictions,
CatsDogsRejectedInputs, CatsDogsStatistic_bucket, CatsDogsForwardPass, CatsDogsHandlerSeconds), so
the alerts, the dashboard and the drift monitor read either server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
import yaml

from catsdogs_pl import places, registry, servable, signing
from catsdogs_pl.errors import exit_code
from catsdogs_pl.monitoring import stats
from catsdogs_pl.predictor import Answers, BadImage, Predictor, from_base64
from catsdogs_pl.serving import package

INPUT, LABEL, PROBABILITIES = "image", "label", "probabilities"


class Counts:
    """Counters under TorchServe's names (prometheus_client would add `_total`), so that one set
    of alerts and dashboards reads both servers; a prometheus_client collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)

    def add(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted({"ModelName": places.MODEL_NAME, **labels}.items()))
        with self.lock:
            self.values[name][key] = self.values[name].get(key, 0.0) + value

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric

        with self.lock:
            found = {name: dict(series) for name, series in self.values.items()}
        for name, series in found.items():
            metric = Metric(name, f"{name} (as catsdogs' TorchServe handler counts it)", "unknown")
            for labels, value in series.items():
                metric.add_sample(name, dict(labels), value)
            yield metric


class Batcher:
    """TorchServe's batching, for a server that has none: the images of requests in flight are
    answered together, up to `size` a forward pass, gathered for at most `delay_s` after the
    first, by `runners` threads at once (TorchServe's workers). `work` gets the uploads of each
    request of a batch and returns each request's Answers; it runs off the event loop, so the
    loop only moves bytes."""

    def __init__(self, work: Any, runners: int, size: int, delay_s: float) -> None:
        self.work, self.runners, self.size, self.delay_s = work, runners, size, delay_s
        self.pool = ThreadPoolExecutor(runners, thread_name_prefix="catsdogs-predict")
        self.queue: asyncio.Queue | None = None  # made in the server's event loop

    async def submit(self, uploads: list[bytes]) -> Any:
        """The Answers of `uploads`, computed in a batch with whatever else is in flight."""
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.tasks = [asyncio.create_task(self._run()) for _ in range(self.runners)]
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((uploads, done))
        return await done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            count, deadline = len(batch[0][0]), loop.time() + self.delay_s
            while count < self.size and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
                count += len(batch[-1][0])
            try:
                parts = await loop.run_in_executor(self.pool, self.work, [b[0] for b in batch])
            except Exception as exc:  # noqa: BLE001 (each waiting request fails with it)
                for _, done in batch:
                    done.set_exception(exc)
                continue
            for (_, done), part in zip(batch, parts, strict=True):
                done.set_result(part)


def model(folder: Path, version: str, runtime: str = "auto", threads: int = 2) -> Any:
    """The kserve.Model serving `folder` as registry version `version` (made here, so that this
    module imports without kserve, an optional extra); `threads` requests (each a batch of
    images) are answered at once, one torch thread each."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from prometheus_client import REGISTRY, Histogram

    counts = Counts()
    REGISTRY.register(counts)
    seconds = Histogram(
        "CatsDogsHandlerSeconds",
        "seconds each request spent in the predict path",
        ["model_version"],
    )

    class Model(kserve.Model):
        def __init__(self) -> None:
            super().__init__(places.MODEL_NAME)
            self.version = version

        def load(self) -> bool:
            key = signing.public_key(places.home())
            signing.verify(folder, key, signing.archive_files(folder))  # before anything loads
            torch.set_num_threads(1)  # one core per request in flight: `threads` in all
            self.predictor = Predictor.load(folder, runtime=runtime, batch=8, streams=threads)
            counts.add(
                "CatsDogsForwardPass",
                1,
                runtime=self.predictor.runtime,
                precision=self.predictor.precision,
                flip_tta=str(self.predictor.flip_tta).lower(),
                model_version=version,
            )
            print(f"catsdogs v{version}: signature verified with {key}; {self.describe()}")
            shipped = yaml.safe_load(places.MODEL_CONFIG.read_text())  # TorchServe's batching
            delay_s = shipped["maxBatchDelay"] / 1e3
            self.batcher = Batcher(self.answer, threads, shipped["batchSize"], delay_s)
            self.ready = True
            return True

        def answer(self, requests: list[list[bytes]]) -> list[Any]:
            """Each request's Answers from one forward pass over all their uploads, the inputs
            of the requests answered counted into the statistics (a request with a bad image
            is refused whole: none of its images is counted)."""
            answers = self.predictor.predict([data for sent in requests for data in sent])
            parts, start = [], 0
            for sent in requests:
                parts.append(answers.part(start, start + len(sent)))
                start += len(sent)
            if any(isinstance(r, BadImage) for r in answers.results):
                clean = [p for p in parts if not any(isinstance(r, BadImage) for r in p.results)]
                answers = Answers(
                    [r for p in clean for r in p.results],
                    [i for p in clean for i in p.images],
                    [z for p in clean for z in p.sizes],
                    np.concatenate([p.probabilities for p in clean] or [answers.probabilities[:0]]),
                    answers.decode_s,
                    answers.forward_s,
                )
            if answers.images:
                for name, le, n in stats.cumulative(self.predictor.statistics(answers)):
                    counts.add(
                        f"{stats.METRIC}_bucket", n, statistic=name, le=le, model_version=version
                    )
            return parts

        def describe(self) -> str:
            p = self.predictor
            return f"serving {p.runtime} {p.precision} on {threads} thread(s), classes {p.classes}"

        def get_input_types(self) -> list[dict[str, Any]]:
            return [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]

        def get_output_types(self) -> list[dict[str, Any]]:
            k = len(self.predictor.classes)
            return [
                {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
                {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, k]},
            ]

        async def predict(
            self, payload: InferRequest, headers: dict[str, str] | None = None
        ) -> InferResponse:
            start = time.perf_counter()
            uploads = _uploads(payload, InvalidInput)
            answers = await self.batcher.submit(uploads)
            bad = [(i, r) for i, r in enumerate(answers.results) if isinstance(r, BadImage)]
            for _, refused in bad:
                counts.add(
                    "CatsDogsRejectedInputs", 1, Reason=refused.reason, model_version=version
                )
            if bad:
                raise InvalidInput("; ".join(f"image[{i}]: {r}" for i, r in bad))
            labels = answers.labels(self.predictor.classes)
            for name in set(labels):
                counts.add(
                    "CatsDogsPredictions", labels.count(name), Label=name, model_version=version
                )
            probs = answers.probabilities.astype(np.float32)
            outputs = [
                InferOutput(LABEL, [len(labels)], "BYTES", labels),
                InferOutput(PROBABILITIES, list(probs.shape), "FP32"),
            ]
            outputs[1].set_data_from_numpy(probs, binary_data=False)
            seconds.labels(version).observe(time.perf_counter() - start)
            answer = payload.id or uuid.uuid4().hex  # the request's id, else one of ours
            return InferResponse(answer, self.name, outputs, model_version=version, from_grpc=False)

    return Model()


# the raw BYTES inputs of the request being answered, by input name (Door sets them)
RAW: contextvars.ContextVar[dict[str, list[bytes]] | None] = contextvars.ContextVar(
    "raw", default=None
)


def _uploads(payload: Any, invalid: type[Exception]) -> list[bytes]:
    """The image bytes of a v2 request: its one BYTES input, each element base64 (JSON) or, sent
    in the binary data extension, the raw bytes Door kept aside for it."""
    found = [i for i in payload.inputs if i.name == INPUT]
    if len(found) != 1 or found[0].datatype != "BYTES":
        names = ", ".join(f"{i.name} ({i.datatype})" for i in payload.inputs) or "none"
        raise invalid(f'send one BYTES input named "{INPUT}" holding the images (got {names})')
    raw = RAW.get() or {}
    if INPUT in raw:
        uploads = raw[INPUT]
    else:
        uploads = []
        for i, value in enumerate(found[0].as_numpy().reshape(-1).tolist()):
            try:
                uploads.append(from_base64(value))
            except BadImage as exc:
                raise invalid(f"image[{i}]: {exc}") from exc
    if not uploads:
        raise invalid(f'the input "{INPUT}" holds no image')
    return uploads


class Door:
    """ASGI middleware in front of KServe's routes, for what its server lacks:
    - /v2/models/catsdogs/versions/N/... is the unversioned path where N is the version served,
      and a 404 naming it otherwise (KServe's server has no versions);
    - a request whose BYTES input travels in the binary data extension (raw image bytes, as
      tritonclient sends them) has those bytes set aside for `_uploads` (RAW) and empty elements
      in their place: KServe 0.21 decodes every binary BYTES element as UTF-8 text and answers
      a photo with a 500 (and JSON-parsing a base64 photo would cost the event loop more);
    - a JSON request without a content type (tritonclient's) gets the header that tells KServe
      where its JSON ends, which KServe otherwise refuses."""

    HEADER = b"inference-header-content-length"

    def __init__(self, app: Any, version: str) -> None:
        self.app, self.version = app, version

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        prefix = f"/v2/models/{places.MODEL_NAME}/versions/"
        path = scope["path"]
        if path.startswith(prefix):
            asked, _, rest = path[len(prefix) :].partition("/")
            if asked != self.version:
                said = f"{places.MODEL_NAME} v{asked} is not served here: v{self.version} is"
                return await _answer(send, 404, {"error": said})
            path = f"/v2/models/{places.MODEL_NAME}" + (f"/{rest}" if rest else "")
            scope = {**scope, "path": path, "raw_path": path.encode()}
        if scope["method"] != "POST" or not path.endswith("/infer"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        body = await _body(receive)
        raw: dict[str, list[bytes]] = {}
        if self.HEADER in headers:
            body, length, raw = _set_aside_bytes_inputs(body, int(headers[self.HEADER]))
        else:  # JSON alone; tritonclient sends it with no content type, which KServe needs
            length = len(body)
        fixed = {
            **headers,
            self.HEADER: str(length).encode(),
            b"content-length": str(len(body)).encode(),
        }
        scope = {**scope, "headers": list(fixed.items())}
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        token = RAW.set(raw)  # the endpoint runs in this task: `_uploads` finds them
        try:
            await self.app(scope, replay, send)
        finally:
            RAW.reset(token)


async def _body(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _answer(send: Any, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _set_aside_bytes_inputs(body: bytes, length: int) -> tuple[bytes, int, dict[str, list[bytes]]]:
    """A binary-extension request with its BYTES inputs taken out: in the JSON header each
    element becomes "" (KServe parses nothing of it), and their bytes are returned by input
    name. Returns the new body, its header length and those bytes; a body that does not parse
    is passed on as it came, for KServe to refuse."""
    try:
        header = json.loads(body[:length])
        rest, out, raw = memoryview(body)[length:], [], {}
        for item in header.get("inputs", []):
            size = (item.get("parameters") or {}).get("binary_data_size")
            if size is None:
                continue
            data, rest = bytes(rest[:size]), rest[size:]
            if item.get("datatype") != "BYTES":
                out.append(data)
                continue
            elements, at = [], 0
            while at < len(data):
                n = int.from_bytes(data[at : at + 4], "little")
                elements.append(data[at + 4 : at + 4 + n])
                at += 4 + n
            raw[item["name"]] = elements
            item["data"] = [""] * len(elements)
            item["parameters"].pop("binary_data_size")
        new = json.dumps(header).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return body, length, {}
    return new + b"".join(out) + bytes(rest), len(new), raw


def unpack(mar: Path, into: Path) -> Path:
    """`mar`'s files in `into` (what a TorchServe worker gets)."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(into)
    return into


def served_version(folder: Path) -> str:
    """The registry version an unpacked .mar names (identity.json), else 1 (a bare export)."""
    identity = folder / package.IDENTITY
    return str(json.loads(identity.read_text())["version"]) if identity.exists() else "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    registry.add_version_arguments(parser, required=False)
    parser.add_argument("--model-dir", type=Path, help="an unpacked .mar or a signed export")
    parser.add_argument(
        "--runtime",
        choices=("auto", *servable.RUNTIMES, "eager"),
        default="auto",
        help="the forward pass, as model-config.yaml's handler.runtime (default auto)",
    )
    parser.add_argument("--threads", type=int, default=2, help="batches answered at once")
    parser.add_argument(
        "--access-log", action="store_true", help="a log line per request (costs throughput)"
    )
    args = parser.parse_args(argv)
    chosen = [a for a in registry.VERSION_ARGUMENTS if getattr(args, a)]
    if bool(chosen) == bool(args.model_dir):
        parser.error("give one of --model-version, --alias, --run-id or --model-dir")
    sys.argv = sys.argv[:1]  # kserve parses the command line when it is imported
    with tempfile.TemporaryDirectory(prefix="catsdogs-oip-") as tmp:
        if args.model_dir:
            folder, version = args.model_dir, served_version(args.model_dir)
        else:
            version, mar = package.package_version(
                args.model_version, args.alias, args.run_id, mlflow=registry.store_of(args)
            )
            folder = unpack(mar, Path(tmp) / "model")
        served = model(folder, version, args.runtime, args.threads)
        served.load()
        from kserve import ModelServer, model_server

        model_server.app.add_middleware(Door, version=version)
        port = urlsplit(places.address("oip", bind=True)).port
        server = ModelServer(
            http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False
        )
        for name in ("kserve.trace", "uvicorn.access"):  # lines per request: --access-log
            logging.getLogger(name).setLevel(logging.INFO if args.access_log else logging.WARNING)
        server.start([served])
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
