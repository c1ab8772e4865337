"""Monitoring without a server: the statistics and their buckets, the reference fit writes (and the
handler's equality with it on the same bytes), PSI and the verdicts, the monitor's reading of
TorchServe's metrics text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catsdogs_pl.contracts import Reference
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings, read_manifest
from catsdogs_pl.monitoring import drift, reference, stats
from catsdogs_pl.monitoring.monitor import parse
from catsdogs_pl.serving import package
from tests.helpers.images import make_class_folders
from tests.helpers.serving import SIZE, FakeContext, load_handler, make_export


def test_buckets_are_prometheus_le_buckets() -> None:
    edges = stats.EDGES["brightness"]
    values = np.array([0, edges[0], edges[0] + 0.01, edges[-1], edges[-1] + 1, 255])
    counts = stats.bucket_counts("brightness", values)
    assert len(counts) == len(stats.le_labels("brightness")) == len(edges) + 1
    assert counts[0] == 2 and counts[1] == 1  # a value equal to an edge is in that edge's bucket
    assert counts[-2] == 1 and counts[-1] == 2 and counts.sum() == len(values)
    assert stats.le_labels("megapixels")[-2:] == ["12", "+Inf"]


def test_statistics_move_with_the_shift_they_name() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(40, 220, (1, 64, 64, 3)).astype(np.uint8)
    image[..., 0] = np.clip(image[..., 0] * 1.2, 0, 255)  # some colour
    grey = np.repeat((image.astype(np.float32) @ [0.299, 0.587, 0.114])[..., None], 3, -1)
    dark = image * 0.4
    shifts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    blurred = sum(image[:, y : y + 62, x : x + 62].astype(np.float32) for y, x in shifts) / 5
    size = np.array([[640, 480]])
    base, g, d, b = (
        stats.image_statistics(x.astype(np.uint8), size) for x in (image, grey, dark, blurred)
    )
    assert base["colourfulness"][0] > 20 and g["colourfulness"][0] < 1
    assert d["brightness"][0] == pytest.approx(0.4 * base["brightness"][0], rel=0.02)
    assert d["contrast"][0] < 0.5 * base["contrast"][0]
    assert b["sharpness"][0] < 0.5 * base["sharpness"][0]
    assert base["aspect_ratio"][0] == pytest.approx(4 / 3)
    assert base["megapixels"][0] == pytest.approx(0.3072)
    confident = stats.prediction_statistics(np.array([[0.1, 0.9], [0.55, 0.45]]))
    assert confident["confidence"].tolist() == pytest.approx([0.9, 0.55])
    assert confident["margin"].tolist() == pytest.approx([0.8, 0.1])


def test_handler_statistics_equal_the_fit_reference(tmp_path: Path) -> None:
    """The same photo bytes: the buckets the handler flushes are those fit's reference counts."""
    src = make_class_folders(tmp_path / "src", per_class=20)
    dm = CatsDogsDataModule(
        source=str(src),
        data_dir=str(tmp_path / "prep"),
        settings=Settings(image_size=SIZE, val_fraction=0.4),
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    model_dir = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    context = FakeContext(model_dir, statistics_flush_s=0)
    handler = load_handler(model_dir, context)
    val = [r for r in read_manifest(tmp_path / "prep" / "manifest.csv") if r.split == "val"]
    photos = [(src / r.relpath).read_bytes() for r in val]
    answers = handler.handle([{"body": p} for p in photos], context)
    assert all("label" in a for a in answers) and len(answers) >= 8

    images = np.load(dm.datasets["val"].images_path)
    probs = handler.predictor.probabilities(list(images)).numpy()
    expected = reference.build(
        images, dm.original_sizes("val"), probs, dm.datasets["val"].labels, dm.classes
    )
    flushed: dict[str, dict[str, float]] = {}
    for name, value, dims in context.metrics.calls:
        if name == "CatsDogsStatistic_bucket":
            d = dict(dims)
            flushed.setdefault(d["statistic"], {})[d["le"]] = value
    assert set(flushed) == set(stats.EDGES)
    for statistic, counts in expected.counts.items():
        cumulative = np.cumsum(counts).tolist()
        assert flushed[statistic] == dict(zip(stats.le_labels(statistic), cumulative, strict=True))
    assert expected.images == len(photos) == flushed["confidence"]["+Inf"]


def test_reference_measures_calibration() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    labels = rng.integers(0, 2, n)
    sure = np.where(rng.random(n) < 0.7, labels, 1 - labels)  # right 70% of the time...
    overconfident = np.eye(2)[sure] * 0.98 + 0.01  # ...at 0.99 confidence
    images = np.zeros((n, 8, 8, 3), np.uint8)
    sizes = np.full((n, 2), 100)
    ref = reference.build(images, sizes, overconfident, labels, ["cat", "dog"])
    assert ref.accuracy == pytest.approx(0.7, abs=0.03)
    assert ref.ece == pytest.approx(0.29, abs=0.03)
    assert ref.calibration["images"][-1] == n  # every prediction in the top bucket
    conf = 0.5 + 0.49 * rng.random(n)  # calibrated: right with the probability it says
    right = rng.random(n) < conf
    calibrated = np.stack([conf, 1 - conf], 1)
    calibrated_labels = np.where(right, 0, 1)
    good = reference.build(images, sizes, calibrated, calibrated_labels, ["cat", "dog"])
    assert good.ece < 0.05
    assert drift.estimated_accuracy(good, good.counts["confidence"]) == pytest.approx(
        good.accuracy, abs=0.02
    )


def _reference(rng: np.random.Generator, n: int = 2000) -> Reference:
    images = rng.normal(128, 20, (n, 1, 1, 1)).clip(0, 255) * np.ones((1, 8, 8, 3))
    images = (images + rng.normal(0, 30, images.shape)).clip(0, 255).astype(np.uint8)
    probs = np.stack([p := rng.uniform(0.5, 1, n), 1 - p], 1)
    return reference.build(images, np.full((n, 2), 400), probs, np.zeros(n, int), ["cat", "dog"])


def test_psi_and_verdicts() -> None:
    rng = np.random.default_rng(2)
    ref = _reference(rng)
    same = _reference(np.random.default_rng(3), 400)
    moved = {**same.counts, "brightness": ref.counts["brightness"][::-1]}
    calm = drift.compare("3", ref, same.counts, {"cat": 300, "dog": 100})
    assert max(calm.psi.values()) < drift.PSI_MODERATE and calm.judged and not calm.drifted
    shifted = drift.compare("3", ref, moved, {"cat": 300})
    assert shifted.drifted == ["brightness"] and shifted.psi["brightness"] > drift.PSI_DRIFT
    text = drift.report([calm, shifted], "test")
    assert "INPUT DRIFT in brightness" in text and "verdict: no drift" in text
    gauges = drift.gauges([shifted], 1.0)
    assert 'catsdogs_drift_psi{statistic="brightness",model_version="3"}' in gauges
    few = drift.compare("4", ref, _reference(rng, 50).counts, {})
    assert not few.judged and "too few images" in drift.report([few], "test")
    assert "DRIFT" not in drift.report([few], "test")  # no verdict on noise
    empty = drift.compare("6", ref, {k: np.zeros(len(v)) for k, v in same.counts.items()}, {})
    assert "psi" not in drift.report([empty], "test")
    assert "timestamp_seconds 1795888888\n" in drift.gauges([], 1795888888.0)
    exported = drift.gauges([few], 1.0).splitlines()
    assert 'catsdogs_monitored_images{model_version="4"} 50' in exported
    assert not any(line.startswith("catsdogs_drift_psi{") for line in exported)
    none = drift.compare("5", None, same.counts, {})
    assert "no reference.json" in drift.report([none], "test")


def test_monitor_reads_cumulative_buckets_and_windows() -> None:
    labels = 'ModelName="catsdogs",Level="Model",Hostname="h"'
    lines = [
        f'CatsDogsStatistic_bucket{{statistic="brightness",le="64",model_version="2",{labels}}} 3.0',
        f'CatsDogsStatistic_bucket{{statistic="brightness",le="128",model_version="2",{labels}}} 5.0',
        f'CatsDogsStatistic_bucket{{statistic="brightness",le="+Inf",model_version="2",{labels}}} 6.0',
        f'CatsDogsPredictions{{Label="cat",model_version="2",{labels}}} 6.0',
        'Requests2XX{Level="Host",Hostname="h"} 9.0',
    ]
    window = parse("# TYPE x counter\n" + "\n".join(lines))
    counts = window.counts("2")["brightness"]
    edges = stats.le_labels("brightness")
    assert counts[edges.index("64")] == 3 and counts[edges.index("128")] == 2 and counts[-1] == 1
    assert counts.sum() == 6 and window.versions() == ["2"] and window.labels("2") == {"cat": 6}
    later = parse("\n".join(lines).replace(" 6.0", " 10.0").replace(" 5.0", " 1.0"))
    delta = later.minus(window)
    assert delta.predicted[("2", "cat")] == 4
    assert window.minus(window).versions() == []  # no growth: no version answered
    assert delta.buckets[("2", "brightness", "128")] == 1  # went down: a restarted server
