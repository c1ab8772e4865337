"""TorchServe handler for catsdogs: one bad upload gets its own 400, never a 503 for the batch.

Nothing loads before the unpacked files verify against the export's signature (`model.sig`,
`catsdogs_signing.py`) with the public key serve gives workers ($CATSDOGS_VERIFY_KEY): a changed,
added or removed file, another key or no signature fails the worker, its log naming the file.

Everything it loads sits inside the `.mar`: the servable export (`weights.pt`, `architecture.json`,
`preprocessing.json`, `index_to_name.json`, `reference.json`) and the source files copied from the
training code (serving/package.py `SOURCES`). `catsdogs_predictor.py` is the predict path both
servers share (the KServe model too): it builds the network `architecture.json` names, decodes and
checks uploads as the training data was cleaned, runs the accepted forward pass and the calibrated
softmax, and computes the input and prediction statistics of the training reference. What stays
here is TorchServe's: how a request carries its image, the 400s per request, metrics, answer ids,
capture.

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

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import catsdogs_capture as capture
import catsdogs_servable as servable
import catsdogs_signing as signing
import catsdogs_stats as stats
import numpy as np
import torch
from catsdogs_predictor import Answers, Predictor, from_base64
from catsdogs_preprocessing import BadImage

QUIET_S = 1.0  # seconds without a batch after which the pending statistics are emitted
ANSWER_HEADER = "X-Catsdogs-Answer-Id"  # the answer's id, also in its JSON: what feedback names
log = logging.getLogger(__name__)  # a worker's log lines go to model_log.log


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
        return from_base64(value)
    if isinstance(value, list):
        raise BadImage("bad_json", 'send one JSON object {"data": "<base64>"}, not a list')
    if isinstance(value, str):  # text/*: base64 text
        return from_base64(value)
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
        # the forward pass: the bf16 or int8 one the forward gate accepted (forward.json) where
        # this CPU has the units; else, where the .mar holds model.onnx (its exporter checked its
        # answers against eager PyTorch under each runtime), the fastest here of eager, OpenVINO
        # and ONNX Runtime in float32 (catsdogs_predictor.py, as the KServe model does)
        self.predictor = Predictor.load(
            model_dir,
            context.manifest["model"].get("serializedFile", servable.WEIGHTS),
            config.get("runtime", "auto"),
            threads,
            int(context.system_properties.get("batch_size") or 8),
            int(config["max_bytes"]) if "max_bytes" in config else None,
        )
        self.version = version
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

    def observe(self, answers: Answers) -> None:
        """Count the statistics of accepted images and their predictions into `pending`."""
        found = self.predictor.statistics(answers)
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
            Dimension("runtime", self.predictor.runtime),
            Dimension("precision", self.predictor.precision),
            Dimension("flip_tta", str(self.predictor.flip_tta).lower()),
            *version,
        ]
        metrics.add_metric("CatsDogsForwardPass", 1, "Count", 0, served, MetricTypes.GAUGE)
        # every bucket, zeros too: quantiles need them all
        for name, le, count in stats.cumulative(pending):
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

    @staticmethod
    def _refuse(exc: BadImage, context: Any, idx: int, version: list[Any]) -> dict[str, str]:
        """Request `idx`'s own 400 naming the reason (its answer), counted by reason."""
        from ts.metrics.dimension import Dimension

        context.set_response_status(400, f"{exc.reason}: {exc.detail}", idx=idx)
        dims = [Dimension("Reason", exc.reason), *version]
        context.metrics.add_counter("CatsDogsRejectedInputs", 1, idx=idx, dimensions=dims)
        return {"error": exc.reason, "message": exc.detail}

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        from ts.metrics.dimension import Dimension  # TorchServe's runtime, present in a worker
        from ts.metrics.metric_type_enum import MetricTypes

        start = time.perf_counter()
        version = [Dimension("model_version", self.version)]  # every metric says who answered
        results: list[dict[str, Any]] = [{} for _ in data]
        sent: list[tuple[int, bytes]] = []  # (request index, upload) of the bodies that hold one
        for i, row in enumerate(data):
            try:
                sent.append((i, _payload(row)))
            except BadImage as exc:
                results[i] = self._refuse(exc, context, i, version)
        parsed = time.perf_counter()
        answers = self.predictor.predict([upload for _, upload in sent])
        decoded = parsed + answers.decode_s
        labels = answers.labels(self.predictor.classes)
        names = iter(labels)
        good: list[int] = []  # request indices answered
        for (i, upload), result in zip(sent, answers.results, strict=True):
            if isinstance(result, BadImage):
                results[i] = self._refuse(result, context, i, version)
                continue
            answer = capture.Capture(
                id=uuid.uuid4().hex,
                version=self.version,
                label=next(names),
                probabilities=result,
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
            good.append(i)
        for name in self.predictor.classes:  # one metric line per label and batch
            if n := labels.count(name):
                dims = [Dimension("Label", name), *version]
                context.metrics.add_counter("CatsDogsPredictions", n, idx=good[0], dimensions=dims)
        if good:
            self.observe(answers)
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
