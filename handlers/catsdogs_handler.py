"""TorchServe handler for catsdogs: one bad upload gets its own 400, never a 503 for the batch.

Nothing loads before the unpacked files verify against the export's signature (`model.sig`,
`catsdogs_signing.py`) with the public key serve gives workers ($CATSDOGS_VERIFY_KEY): a changed,
added or removed file, another key or no signature fails the worker, its log naming the file.

Everything it loads sits inside the `.mar`: the servable export (`weights.pt`, `architecture.json`,
`preprocessing.json`, `index_to_name.json`, `reference.json`) and the source files copied from the
training code (serving/package.py `SOURCES`): `catsdogs_servable.py` builds the network that
`architecture.json` names and loads its weights exactly as package (checking an export before it
archives it) and robustness do; `catsdogs_preprocessing.py` decodes, checks and normalises as the
training cache was made, with the limits of `preprocessing.json` (the ones the training data was
cleaned by); `catsdogs_stats.py` computes the input and prediction statistics of the training
reference.

Accepted bodies: raw image bytes, multipart (field `data` or `file`), JSON `{"data": "<base64>"}`
and base64 text. Answer per image: `{"id", "label", "probabilities", "model_version"}`; the id (also
in the X-Catsdogs-Answer-Id header) is what a user's feedback names. Where `serve` turned capture on
(config.properties capture_fraction), a sample of answers is kept with their image bytes in the
capture store (catsdogs_capture.py).

Statistics of every accepted image and prediction are counted in the worker and emitted as the
`CatsDogsStatistic_bucket` counters by a thread, so that a request pays for a few array reductions,
not for dozens of metric lines: once the worker has had no batch for QUIET_S, and at least every
`statistics_flush_s` seconds under steady traffic (model-config.yaml; 0: at the end of every batch).
The pause matters because a worker gets no notice of its end: on scale-down, unregister and stop,
TorchServe 0.12 closes the worker's socket and SIGKILLs it a few milliseconds later (no SIGTERM, so
no atexit or signal handler can flush), and counts still pending then are lost. A worker stopped
after a pause of QUIET_S has emitted them all; one stopped in the middle of traffic loses at most
its last `statistics_flush_s`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import catsdogs_capture as capture
import catsdogs_preprocessing as preprocessing
import catsdogs_servable as servable
import catsdogs_signing as signing
import catsdogs_stats as stats
import numpy as np
import torch
from catsdogs_preprocessing import BadImage

_BASE64_PREFIX = "base64,"  # data URLs: data:image/jpeg;base64,...
QUIET_S = 1.0  # seconds without a batch after which the pending statistics are emitted
ANSWER_HEADER = "X-Catsdogs-Answer-Id"  # the answer's id, also in its JSON: what feedback names
log = logging.getLogger(__name__)  # a worker's log lines go to model_log.log


def _b64decode(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    text = text.strip()
    if _BASE64_PREFIX in text[:64]:
        text = text.split(_BASE64_PREFIX, 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage("bad_base64", f"the body is text but not valid base64 ({exc})") from exc


def _payload(row: dict[str, Any]) -> bytes:
    """The image bytes of one request, whatever way the client sent them."""
    value = next((row[k] for k in ("data", "file", "body") if row.get(k) is not None), None)
    if isinstance(value, dict):  # application/json arrives parsed
        if "data" not in value:
            raise BadImage("bad_json", 'the JSON body needs a "data" field with the base64 image')
        value = value["data"]
        if not isinstance(value, str):
            raise BadImage(
                "bad_json", f'"data" must be a base64 string, not {type(value).__name__}'
            )
        return _b64decode(value)
    if isinstance(value, list):
        raise BadImage("bad_json", 'send one JSON object {"data": "<base64>"}, not a list')
    if isinstance(value, str):  # text/*: base64 text
        return _b64decode(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if row:  # e.g. a form post: curl --data-binary without Content-Type: application/octet-stream
        raise BadImage(
            "missing_image",
            f"no image in the request (fields: {', '.join(sorted(map(str, row)))[:200]}): send the "
            "bytes as an application/octet-stream body (curl -T), a multipart field 'data' or "
            """'file', or JSON {"data": "<base64>"}""",
        )
    raise BadImage("empty", "the request has no body: send the image bytes")


class CatsDogsHandler:
    """initialize() once per worker; handle() per batch."""

    def __init__(self) -> None:
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        start = time.perf_counter()
        key = signing.public_key(None)
        version = str(context.manifest["model"].get("modelVersion", ""))
        try:
            signing.verify(model_dir, key, signing.archive_files(model_dir))  # before any load
        except signing.SignatureError:
            from ts.metrics.dimension import Dimension

            dims = [Dimension("model_version", version)]
            context.metrics.add_counter("CatsDogsSignatureRefused", 1, dimensions=dims)
            raise
        verified = time.perf_counter()
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        threads = int(config.get("torch_threads", 1))
        torch.set_num_threads(threads)
        weights = context.manifest["model"].get("serializedFile", servable.WEIGHTS)
        self.net, self.pre = servable.load(model_dir, weights)
        self.classes = list(self.pre.classes)
        # the forward pass: the bf16 or int8 one the forward gate accepted (forward.json) where
        # this CPU has the units; else, where the .mar holds model.onnx (its exporter checked its
        # answers against eager PyTorch under each runtime), the fastest here of eager, OpenVINO
        # and ONNX Runtime in float32
        batch = int(context.system_properties.get("batch_size") or 8)
        runtime = config.get("runtime", "auto")
        self.forward = servable.forward(model_dir, self.net, runtime, threads, batch)
        self.runtime = getattr(self.forward, "runtime", "eager")
        self.precision = getattr(self.forward, "precision", "f32")
        self.flip_tta = bool(getattr(self.net, "flip_tta", False))  # traced into model.onnx too
        self.temperature = servable.temperature(model_dir)  # fitted at publish: calibration.json
        self.version = version
        # TorchServe answers 413 to a body over max_request_size (config.properties) before it
        # reaches a worker; `max_bytes` in model-config.yaml is only for a lower limit of one model.
        self.max_bytes = int(config["max_bytes"]) if "max_bytes" in config else None
        self.flush_s = float(config.get("statistics_flush_s", 5))
        self.pending = self._no_counts()
        self.lock = threading.Lock()
        self.counted = threading.Event()  # set by every batch that added to `pending`
        self.flusher: threading.Thread | None = None
        self.captures = capture.Store.from_env()  # None unless serve turned capture on
        self.initialized = True
        log.info(
            "catsdogs v%s: signature verified with %s in %.1f ms; model loaded in %.1f ms",
            self.version,
            key,
            (verified - start) * 1e3,
            (time.perf_counter() - verified) * 1e3,
        )

    @staticmethod
    def _no_counts() -> dict[str, np.ndarray]:
        return {name: np.zeros(len(e) + 1, np.int64) for name, e in stats.EDGES.items()}

    def open(self, data: bytes) -> Any:
        """One upload's image, opened and checked by its header (a PIL image, no pixels yet), or
        BadImage naming what is wrong."""
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise BadImage("too_large", f"{len(data)} bytes is over the {self.max_bytes} limit")
        return preprocessing.open_image(data, **self.pre.limits)

    def decode(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """One upload to a uint8 HWC array and its (width, height), or BadImage naming what is
        wrong. Opened, measured and decoded as cleaning does for the training data."""
        img = self.open(data)
        return preprocessing.decode(img, self.pre.image_size), img.size

    def batch(self, images: list[np.ndarray]) -> torch.Tensor:
        """Decoded images as the normalised float NCHW batch the network takes."""
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        return preprocessing.normalize(batch, self.pre.mean, self.pre.std)

    def predict(self, images: list[np.ndarray]) -> torch.Tensor:
        x = self.batch(images)
        with torch.inference_mode():
            return (self.forward(x) / self.temperature).softmax(-1)

    def observe(self, images: list[np.ndarray], sizes: list[tuple[int, int]], probs: Any) -> None:
        """Count the statistics of accepted images and their predictions into `pending`."""
        values = stats.image_statistics(np.stack(images), np.array(sizes))
        values.update(stats.prediction_statistics(probs))
        found = stats.histograms(values)
        with self.lock:
            for name, counts in found.items():
                self.pending[name] += counts
        self.counted.set()

    def flush(self, metrics: Any, version: list[Any]) -> None:
        """Emit `pending` as cumulative `le` buckets (a Prometheus histogram) and reset it, with
        the CatsDogsForwardPass gauge saying what computed the answers; nothing when no image
        came since the last flush."""
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        with self.lock:
            pending, self.pending = self.pending, self._no_counts()
        if not pending["confidence"].any():
            return
        served = [
            Dimension("runtime", self.runtime),
            Dimension("precision", self.precision),
            Dimension("flip_tta", str(self.flip_tta).lower()),
            *version,
        ]
        metrics.add_metric("CatsDogsForwardPass", 1, "Count", 0, served, MetricTypes.GAUGE)
        for name, counts in pending.items():  # every bucket, zeros too: quantiles need them all
            for le, count in zip(stats.le_labels(name), np.cumsum(counts).tolist(), strict=True):
                dims = [Dimension("statistic", name), Dimension("le", le), *version]
                metrics.add_counter(f"{stats.METRIC}_bucket", count, 0, dims)

    def _flush_when_quiet(self, metrics: Any, version: list[Any]) -> None:
        """Flush once no batch came for QUIET_S, or `flush_s` after the first count if batches
        keep coming."""
        while True:
            self.counted.wait()
            due = time.monotonic() + self.flush_s
            while (left := due - time.monotonic()) > 0:
                self.counted.clear()
                if not self.counted.wait(min(QUIET_S, left)):
                    break
            self.flush(metrics, version)

    def _capture(
        self, answer: Any, upload: bytes, context: Any, idx: int, version: list[Any]
    ) -> None:
        """Keep the answer and its image in the capture store; a disk that refuses is counted,
        and the answer goes out all the same."""
        if not self.captures.keep(answer, upload):
            context.metrics.add_counter("CatsDogsCaptureFailures", 1, idx=idx, dimensions=version)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        from ts.metrics.dimension import Dimension  # TorchServe's runtime, present in a worker
        from ts.metrics.metric_type_enum import MetricTypes

        start = time.perf_counter()
        version = [Dimension("model_version", self.version)]  # every metric says who answered
        results: list[dict[str, Any]] = [{} for _ in data]
        good: list[int] = []
        images: list[np.ndarray] = []
        sizes: list[tuple[int, int]] = []
        uploads: list[bytes] = []
        for i, row in enumerate(data):
            try:
                upload = _payload(row)
                image, size = self.decode(upload)
                images.append(image)
                sizes.append(size)
                uploads.append(upload)
                good.append(i)
            except BadImage as exc:
                results[i] = {"error": exc.reason, "message": exc.detail}
                context.set_response_status(400, f"{exc.reason}: {exc.detail}", idx=i)
                dims = [Dimension("Reason", exc.reason), *version]
                context.metrics.add_counter("CatsDogsRejectedInputs", 1, idx=i, dimensions=dims)
        decoded = time.perf_counter()
        if images:
            probs = self.predict(images).numpy()
            labels = probs.argmax(axis=1)
            for i, upload, p, k in zip(good, uploads, probs.tolist(), labels, strict=True):
                answer = capture.Capture(
                    id=uuid.uuid4().hex,
                    version=self.version,
                    label=self.classes[k],
                    probabilities={c: round(v, 6) for c, v in zip(self.classes, p, strict=True)},
                    time=time.time(),
                )
                results[i] = {
                    "id": answer.id,
                    "label": answer.label,
                    "probabilities": answer.probabilities,
                    "model_version": self.version,
                }
                context.set_response_header(i, ANSWER_HEADER, answer.id)
                if self.captures is not None and self.captures.sampled():
                    self._capture(answer, upload, context, i, version)
            for k, name in enumerate(self.classes):  # one metric line per label and batch
                if n := int((labels == k).sum()):
                    dims = [Dimension("Label", name), *version]
                    context.metrics.add_counter(
                        "CatsDogsPredictions", n, idx=good[0], dimensions=dims
                    )
            self.observe(images, sizes, probs)
        done = time.perf_counter()
        idx = good[0] if good else 0
        if self.flush_s <= 0:
            self.flush(context.metrics, version)
        elif self.flusher is None:  # started with the first batch: it needs the worker's metrics
            self.flusher = threading.Thread(
                target=self._flush_when_quiet, args=(context.metrics, version), daemon=True
            )
            self.flusher.start()
        context.metrics.add_time(
            "CatsDogsPreprocessTime", (decoded - start) * 1e3, idx=idx, dimensions=version
        )
        context.metrics.add_time(
            "CatsDogsInferenceTime", (done - decoded) * 1e3, idx=idx, dimensions=version
        )
        for i in range(len(data)):  # a histogram, for latency percentiles in Prometheus
            context.metrics.add_metric(
                "CatsDogsHandlerSeconds", done - start, "s", i, version, MetricTypes.HISTOGRAM
            )
        return results
