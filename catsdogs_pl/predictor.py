"""The one predict path: upload bytes -> checked image -> batch -> the version's forward pass ->
calibrated probabilities and labels, with the reason a bad input is refused and the input
statistics the monitor compares with the training reference.

Both servers call it (the TorchServe handler and the KServe model, serving/oip.py), and so do
robustness, the benchmarks' peers and the tests: decoding, normalisation, the forward pass the
forward gate accepted, the temperature and the softmax exist once. What stays in a server is its
own: how a request carries the bytes, its metrics object, request ids, capture.

Every `.mar` ships this file as `catsdogs_predictor.py` (serving/package.py `SOURCES`), beside the
modules it imports.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__:  # catsdogs_pl.predictor
    from catsdogs_pl import preprocessing, servable
    from catsdogs_pl.contracts import Preprocessing
    from catsdogs_pl.monitoring import stats
    from catsdogs_pl.preprocessing import BadImage
else:  # catsdogs_predictor.py inside a .mar
    import catsdogs_preprocessing as preprocessing
    import catsdogs_servable as servable
    import catsdogs_stats as stats
    from catsdogs_contracts import Preprocessing
    from catsdogs_preprocessing import BadImage

_BASE64_PREFIX = "base64,"  # data URLs: data:image/jpeg;base64,...


def from_base64(text: str | bytes) -> bytes:
    """The bytes of base64 text (a data URL's too), or BadImage `bad_base64`."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    text = text.strip()
    if _BASE64_PREFIX in text[:64]:
        text = text.split(_BASE64_PREFIX, 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage("bad_base64", f"the body is text but not valid base64 ({exc})") from exc


def normalised(images: list[np.ndarray] | np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """uint8 HWC images as the normalised float NCHW batch of `pre`."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2)
    return preprocessing.normalize(batch, pre.mean, pre.std)


@dataclass
class Answers:
    """A batch of uploads answered: per upload its probabilities (class -> p) or the BadImage
    that refused it; and, of the accepted ones, what the monitor's statistics need."""

    results: list[dict[str, float] | BadImage]
    images: list[np.ndarray]
    sizes: list[tuple[int, int]]
    probabilities: np.ndarray  # accepted uploads x classes, in `results` order
    decode_s: float  # seconds spent opening, checking and decoding
    forward_s: float  # seconds spent on the batch, the forward pass and the softmax

    def labels(self, classes: list[str]) -> list[str]:
        """The label of each accepted upload."""
        return [classes[k] for k in self.probabilities.argmax(axis=1)] if self.images else []

    def part(self, start: int, stop: int) -> Answers:
        """The answers of uploads[start:stop] alone: a server that batched several requests
        into one forward pass hands each its own (the timings are the whole batch's)."""
        accepted = [i for i, r in enumerate(self.results) if not isinstance(r, BadImage)]
        rows = [k for k, i in enumerate(accepted) if start <= i < stop]
        return Answers(
            self.results[start:stop],
            [self.images[k] for k in rows],
            [self.sizes[k] for k in rows],
            self.probabilities[rows],
            self.decode_s,
            self.forward_s,
        )


class Predictor:
    """A network, its preprocessing, its forward pass and temperature; `load` reads them from a
    servable export (or an unpacked .mar) as serving does. (No network: it only decodes.)"""

    def __init__(
        self,
        net: nn.Module | None,
        pre: Preprocessing,
        forward: Any = None,
        temperature: float = 1.0,
        max_bytes: int | None = None,
    ) -> None:
        self.net, self.pre = net, pre
        self.classes = list(pre.classes)
        self.forward = net if forward is None else forward
        self.runtime = getattr(self.forward, "runtime", "eager")
        self.precision = getattr(self.forward, "precision", "f32")
        self.flip_tta = bool(getattr(net, "flip_tta", False))  # traced into model.onnx too
        self.temperature = temperature
        # TorchServe answers 413 to a body over max_request_size before it reaches a worker;
        # `max_bytes` (model-config.yaml) is only for a lower limit of one model
        self.max_bytes = max_bytes

    @classmethod
    def load(
        cls,
        folder: Path,
        weights: str = servable.WEIGHTS,
        runtime: str = "auto",
        threads: int = 1,
        batch: int = 8,
        max_bytes: int | None = None,
        streams: int = 1,
    ) -> Predictor:
        """The predictor `folder` serves: the forward pass the forward gate accepted where this
        host has its units, else the fastest float32 one here (servable.forward), divided by the
        temperature fitted at publish (calibration.json). `streams`: calls it takes at once."""
        net, pre = servable.load(folder, weights)
        forward = servable.forward(folder, net, runtime, threads, batch, streams)
        return cls(net, pre, forward, servable.temperature(folder), max_bytes)

    def open(self, data: bytes) -> Any:
        """One upload's image, opened and checked by its header (a PIL image, no pixels yet), or
        BadImage naming what is wrong."""
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise BadImage("too_large", f"{len(data)} bytes is over the {self.max_bytes} limit")
        return preprocessing.open_image(data, **self.pre.limits)

    def pixels(self, img: Any) -> np.ndarray:
        """An opened image as the uint8 HWC array of the network's size, decoded as cleaning
        decoded the training data."""
        return preprocessing.decode(img, self.pre.image_size)

    def decode(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """One upload to its uint8 HWC array and (width, height), or BadImage."""
        img = self.open(data)
        return self.pixels(img), img.size

    def batch(self, images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Decoded images as the normalised float NCHW batch the network takes."""
        return normalised(images, self.pre)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of a normalised batch, in inference mode."""
        with torch.inference_mode():
            return (self.forward(x) / self.temperature).softmax(-1)

    def probabilities(self, images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Calibrated class probabilities of decoded images."""
        return self.scores(self.batch(images))

    def logits(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        """Logits (N x classes, float32) of uint8 NHWC images, `batch` at a time: what the
        forward gate and robustness score a network by (the argmax is the served label)."""
        found = []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                x = self.batch(images[start : start + batch])
                found.append(torch.as_tensor(self.forward(x)).float().numpy())
        return np.concatenate(found) if found else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, uploads: list[bytes]) -> Answers:
        """Each upload decoded and, the accepted ones in one batch, answered; a bad upload is
        its own BadImage, never the batch's failure."""
        start = time.perf_counter()
        results: list[dict[str, float] | BadImage] = []
        images, sizes, good = [], [], []
        for i, data in enumerate(uploads):
            try:
                image, size = self.decode(data)
            except BadImage as exc:
                results.append(exc)
                continue
            images.append(image)
            sizes.append(size)
            good.append(i)
            results.append({})
        decoded = time.perf_counter()
        probs = self.probabilities(images).numpy() if images else np.zeros((0, len(self.classes)))
        for i, p in zip(good, probs.tolist(), strict=True):
            results[i] = {c: round(v, 6) for c, v in zip(self.classes, p, strict=True)}
        done = time.perf_counter()
        return Answers(results, images, sizes, probs, decoded - start, done - decoded)

    def statistics(self, answers: Answers) -> dict[str, np.ndarray]:
        """Histogram counts (monitoring/stats.py's edges) of the accepted images and their
        predictions: what a server adds to the CatsDogsStatistic buckets."""
        values = stats.image_statistics(np.stack(answers.images), np.array(answers.sizes))
        values.update(stats.prediction_statistics(answers.probabilities))
        return stats.histograms(values)
