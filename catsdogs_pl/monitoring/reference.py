"""The training reference of a model version: statistics of its validation images and of its own
validation predictions, in the buckets of `stats`, with how well its confidence is calibrated.

fit writes it as `reference.json` into the servable export, so the MLflow run and the `.mar` carry
the same file; the monitor reads it back from the `.mar` of each served version, or from the run.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from catsdogs_pl.contracts import Reference
from catsdogs_pl.monitoring import stats

_CHUNK = 256  # images per statistics pass: bounded memory on any split size


def build(
    images: np.ndarray,
    sizes: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    split: str = "val",
) -> Reference:
    """The reference of `images` (N x H x W x 3 uint8, decoded as served), their uploaded `sizes`
    (N x 2), the model's `probabilities` on them and the true `labels`."""
    counts = {name: np.zeros(len(e) + 1, np.int64) for name, e in stats.EDGES.items()}
    for start in range(0, len(images), _CHUNK):
        part = slice(start, start + _CHUNK)
        values = stats.image_statistics(np.asarray(images[part]), sizes[part])
        for name, found in stats.histograms(values).items():
            counts[name] += found
    predicted = stats.prediction_statistics(probabilities)
    for name, found in stats.histograms(predicted).items():
        counts[name] += found
    confidence = predicted["confidence"]
    correct = np.asarray(probabilities).argmax(1) == np.asarray(labels)
    bucket = np.searchsorted(stats.EDGES["confidence"], confidence, side="left")
    n = np.bincount(bucket, minlength=len(counts["confidence"]))
    hits = np.bincount(bucket, weights=correct, minlength=len(n))
    sure = np.bincount(bucket, weights=confidence, minlength=len(n))
    accuracy = np.divide(hits, n, out=np.full(len(n), np.nan), where=n > 0)
    mean_confidence = np.divide(sure, n, out=np.full(len(n), np.nan), where=n > 0)
    ece = float(np.nansum(n / max(len(confidence), 1) * np.abs(accuracy - mean_confidence)))
    predicted_class = np.asarray(probabilities).argmax(1)
    return Reference(
        split=split,
        images=int(len(confidence)),
        edges={name: list(e) for name, e in stats.EDGES.items()},
        counts={name: c.tolist() for name, c in counts.items()},
        classes=tuple(classes),
        predicted={c: int((predicted_class == i).sum()) for i, c in enumerate(classes)},
        accuracy=float(correct.mean()) if len(correct) else float("nan"),
        mean_confidence=float(confidence.mean()) if len(confidence) else float("nan"),
        ece=ece,
        # per confidence bucket: images, accuracy and mean confidence (null where empty)
        calibration={
            "images": n.tolist(),
            "accuracy": [None if np.isnan(a) else float(a) for a in accuracy],
            "confidence": [None if np.isnan(c) else float(c) for c in mean_confidence],
        },
    )


def from_mar(path: Path) -> Reference | None:
    """The reference inside a `.mar`, or None for an archive built without one."""
    with zipfile.ZipFile(path) as mar:
        if Reference.FILE not in mar.namelist():
            return None
        return Reference.from_json(mar.read(Reference.FILE))
