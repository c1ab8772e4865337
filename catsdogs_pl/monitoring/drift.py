"""Served traffic against the training reference: PSI per statistic, the confidence, the predicted
class ratio and the accuracy the calibrated confidence implies; a report and Prometheus gauges.

Thresholds (docs/monitoring.md): PSI < 0.1 no shift, 0.1-0.25 moderate, > 0.25 drift (the
`CatsDogsInputDrift` alert); an estimated accuracy more than 0.05 under the reference accuracy is a
confidence drop (`CatsDogsConfidenceDrop`). Fewer than MIN_IMAGES images in the window are too few
to judge: such a version is reported, but gets no drift gauges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catsdogs_pl.contracts import Reference
from catsdogs_pl.monitoring import stats

PSI_DRIFT = 0.25
PSI_MODERATE = 0.1
ACCURACY_DROP = 0.05
MIN_IMAGES = 200

# name -> help of every gauge the monitor exports (the alerts and the dashboard use these)
GAUGES = {
    "catsdogs_drift_psi": "PSI of a served statistic against the version's training reference",
    "catsdogs_estimated_accuracy": "accuracy implied by the served confidence, calibrated on "
    "the validation split",
    "catsdogs_reference_accuracy": "validation accuracy of the version (its reference)",
    "catsdogs_mean_confidence": "mean predicted-class probability, served or reference",
    "catsdogs_predicted_share": "share of each predicted label, served or reference",
    "catsdogs_monitored_images": "images the monitor compared in its window",
    "catsdogs_monitor_last_run_timestamp_seconds": "when the monitor last compared",
}

# the middle of each confidence bucket (a two-class confidence is at least 0.5)
_EDGES = np.array([0.5, *stats.EDGES["confidence"], 1.0])
_MIDDLES = (_EDGES[:-1] + _EDGES[1:]) / 2


def psi(reference: Any, served: Any) -> float:
    """Population stability index of two histograms on the same buckets. Half an image is added
    to every bucket, so an empty bucket is finite and a small sample is not judged by noise."""
    expected = np.asarray(reference, dtype=np.float64) + 0.5
    actual = np.asarray(served, dtype=np.float64) + 0.5
    expected /= expected.sum()
    actual /= actual.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def estimated_accuracy(reference: Reference, confidence_counts: Any) -> float:
    """Σ over confidence buckets of (served share) x (validation accuracy in that bucket); where
    validation had no image, the bucket's confidence itself is taken as its accuracy."""
    counts = np.asarray(confidence_counts, dtype=np.float64)
    accuracy = [
        mid if acc is None else acc
        for acc, mid in zip(reference.calibration["accuracy"], _MIDDLES, strict=True)
    ]
    return float(counts @ np.asarray(accuracy) / counts.sum()) if counts.sum() else math.nan


def _mean_confidence(counts: Any) -> float:
    """The mean confidence from bucket counts (bucket middles): served traffic has no raw values."""
    counts = np.asarray(counts, dtype=np.float64)
    return float(counts @ _MIDDLES / counts.sum()) if counts.sum() else math.nan


@dataclass
class Comparison:
    """One served version's window against its reference."""

    version: str
    images: int
    psi: dict[str, float] = field(default_factory=dict)
    reference_accuracy: float = math.nan
    estimated_accuracy: float = math.nan
    mean_confidence: float = math.nan
    reference_confidence: float = math.nan
    predicted_share: dict[str, float] = field(default_factory=dict)
    reference_share: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def judged(self) -> bool:
        return self.images >= MIN_IMAGES and not self.note

    @property
    def drifted(self) -> list[str]:
        """The image statistics above the drift threshold."""
        return [s for s in stats.IMAGE if self.psi.get(s, 0.0) > PSI_DRIFT]

    @property
    def confidence_dropped(self) -> bool:
        return self.reference_accuracy - self.estimated_accuracy > ACCURACY_DROP


def _shares(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def _images(counts: dict[str, Any]) -> int:
    """Images in a window: every one has a confidence."""
    return int(np.sum(counts.get("confidence", [0])))


def skipped(version: str, counts: dict[str, Any], reason: str) -> Comparison:
    """A version of the window left uncompared, with the reason the report gives."""
    return Comparison(version, _images(counts), note=reason)


def compare(
    version: str,
    reference: Reference | None,
    counts: dict[str, Any],
    predicted: dict[str, float],
) -> Comparison:
    """Compare the bucket `counts` per statistic and `predicted` label counts of one version's
    window with its `reference` (None: the version was exported without one)."""
    if reference is None:
        return skipped(version, counts, "it has no reference.json (fit it again)")
    if reference.edges != {k: list(v) for k, v in stats.EDGES.items()}:
        return skipped(version, counts, "its reference has other bucket edges")
    return Comparison(
        version,
        _images(counts),
        psi={name: psi(reference.counts[name], counts[name]) for name in counts},
        reference_accuracy=reference.accuracy,
        estimated_accuracy=estimated_accuracy(reference, counts.get("confidence", [])),
        mean_confidence=_mean_confidence(counts.get("confidence", [])),
        reference_confidence=reference.mean_confidence,
        predicted_share=_shares(predicted),
        reference_share=_shares(reference.predicted),
    )


def report(comparisons: list[Comparison], window: str) -> str:
    """What a person reads: per version, each statistic's PSI and the verdicts."""
    if not comparisons:
        return f"no served image in the window ({window}): nothing to compare"
    lines = []
    for c in comparisons:
        lines.append(f"== v{c.version}: {c.images} images in the window ({window}) ==")
        if c.note:
            lines.append(f"  not compared: {c.note}")
            continue
        if not c.images:
            continue
        if not c.judged:
            lines.append(f"  too few images to judge (< {MIN_IMAGES}): figures only indicative")
        for name in (*stats.IMAGE, *stats.PREDICTION):
            value = c.psi.get(name, math.nan)
            verdict = "DRIFT" if value > PSI_DRIFT else "moderate" if value > PSI_MODERATE else "ok"
            lines.append(f"  psi {name:<14} {value:6.3f}  {verdict if c.judged else ''}".rstrip())
        shares = ", ".join(
            f"{k} {c.predicted_share.get(k, 0):.2f} (ref {v:.2f})"
            for k, v in c.reference_share.items()
        )
        lines += [
            f"  predicted share: {shares}",
            f"  mean confidence {c.mean_confidence:.3f} (ref {c.reference_confidence:.3f}); "
            f"estimated accuracy {c.estimated_accuracy:.3f} (ref {c.reference_accuracy:.3f})",
        ]
        verdicts = []
        if c.judged and c.drifted:
            verdicts.append(f"INPUT DRIFT in {', '.join(c.drifted)} (PSI > {PSI_DRIFT})")
        if c.judged and c.confidence_dropped:
            verdicts.append(f"CONFIDENCE DROP (estimated accuracy > {ACCURACY_DROP} under ref)")
        lines.append("  verdict: " + ("; ".join(verdicts) or "no drift"))
    return "\n".join(lines)


def gauges(comparisons: list[Comparison], timestamp: float) -> str:
    """Prometheus text of GAUGES; versions with too few images export only their image count."""
    rows: dict[str, list[str]] = {name: [] for name in GAUGES}

    def add(name: str, value: float, **labels: str) -> None:
        if not math.isnan(value):
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            rows[name].append(f"{name}{{{text}}} {value:.10g}" if text else f"{name} {value:.10g}")

    for c in comparisons:
        v = c.version
        add("catsdogs_monitored_images", c.images, model_version=v)
        # the version's own figure, not a judgement of the window: also what the labelled
        # accuracy is held against (CatsDogsLabelledAccuracyDrop)
        add("catsdogs_reference_accuracy", c.reference_accuracy, model_version=v)
        if not c.judged:
            continue
        for name, value in c.psi.items():
            add("catsdogs_drift_psi", value, statistic=name, model_version=v)
        add("catsdogs_estimated_accuracy", c.estimated_accuracy, model_version=v)
        add("catsdogs_mean_confidence", c.mean_confidence, model_version=v, source="served")
        add("catsdogs_mean_confidence", c.reference_confidence, model_version=v, source="reference")
        for label, share in c.predicted_share.items():
            add("catsdogs_predicted_share", share, label=label, model_version=v, source="served")
        for label, share in c.reference_share.items():
            add("catsdogs_predicted_share", share, label=label, model_version=v, source="reference")
    add("catsdogs_monitor_last_run_timestamp_seconds", timestamp)
    lines = []
    for name, help_text in GAUGES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *rows[name]]
    return "\n".join(lines) + "\n"
