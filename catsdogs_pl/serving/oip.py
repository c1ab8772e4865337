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
import base64
import json
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

from catsdogs_pl import places, registry, servable, signing
from catsdogs_pl.errors import exit_code
from catsdogs_pl.monitoring import stats
from catsdogs_pl.predictor import BadImage, Predictor, from_base64
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
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="catsdogs-predict")

        def load(self) -> bool:
            key = signing.public_key(places.home())
            signing.verify(folder, key, signing.archive_files(folder))  # before anything loads
            torch.set_num_threads(1)  # one core per request in flight: `threads` in all
            self.predictor = Predictor.load(folder, runtime=runtime, batch=8)
            counts.add(
                "CatsDogsForwardPass",
                1,
                runtime=self.predictor.runtime,
                precision=self.predictor.precision,
                flip_tta=str(self.predictor.flip_tta).lower(),
                model_version=version,
            )
            print(f"catsdogs v{version}: signature verified with {key}; {self.describe()}")
            self.ready = True
            return True

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
            loop = asyncio.get_running_loop()
            answers = await loop.run_in_executor(self.pool, self.predictor.predict, uploads)
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
            for name, found in self.predictor.statistics(answers).items():
                for le, n in zip(stats.le_labels(name), np.cumsum(found).tolist(), strict=True):
                    counts.add(
                        f"{stats.METRIC}_bucket", n, statistic=name, le=le, model_version=version
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


def _uploads(payload: Any, invalid: type[Exception]) -> list[bytes]:
    """The image bytes of a v2 request: its one BYTES input, raw or base64 per element."""
    found = [i for i in payload.inputs if i.name == INPUT]
    if len(found) != 1 or found[0].datatype != "BYTES":
        names = ", ".join(f"{i.name} ({i.datatype})" for i in payload.inputs) or "none"
        raise invalid(f'send one BYTES input named "{INPUT}" holding the images (got {names})')
    values = found[0].as_numpy().reshape(-1).tolist()
    uploads = []
    for i, value in enumerate(values):
        try:
            uploads.append(value if isinstance(value, bytes) else from_base64(value))
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
      tritonclient sends them) has that input moved into the JSON as base64: KServe 0.21 decodes
      every binary BYTES element as UTF-8 text and answers a photo with a 500;
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
        if self.HEADER in headers:
            body, length = _base64_bytes_inputs(body, int(headers[self.HEADER]))
        else:  # JSON alone; tritonclient sends it with no content type, which KServe needs
            length = len(body)
        fixed = {
            **headers,
            self.HEADER: str(length).encode(),
            b"content-length": str(len(body)).encode(),
        }
        if length == len(body):  # nothing binary is left: a plain JSON request
            fixed.pop(self.HEADER)
            fixed[b"content-type"] = b"application/json"
        scope = {**scope, "headers": list(fixed.items())}
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


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


def _base64_bytes_inputs(body: bytes, length: int) -> tuple[bytes, int]:
    """A binary-extension request with its BYTES inputs moved into the JSON header as base64
    elements; returns the new body and the new header length. A body that does not parse is
    passed on as it came, for KServe to refuse."""
    try:
        header = json.loads(body[:length])
        rest, out = memoryview(body)[length:], []
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
                elements.append(base64.b64encode(data[at + 4 : at + 4 + n]).decode())
                at += 4 + n
            item["data"] = elements
            item["parameters"].pop("binary_data_size")
        new = json.dumps(header).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return body, length
    return new + b"".join(out) + bytes(rest), len(new)


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
    parser.add_argument("--threads", type=int, default=2, help="requests answered at once")
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
        ModelServer(http_port=port, enable_grpc=False, workers=1).start([served])
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
