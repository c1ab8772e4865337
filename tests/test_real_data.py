"""The outcome table of ../shared/data/README.md on real photos (skipped when the data is absent)."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from catsdogs_pl import preprocessing
from catsdogs_pl.data.prepare import Settings, prepare
from catsdogs_pl.monitoring import drift, stats
from tests.helpers.shared_data import SAMPLE_DEFECTS, SAMPLE_PREFIX, sample_photos, shared_file


def test_fullsize_sample_outcomes(tmp_path: Path) -> None:
    archive = shared_file("petimages-fullsize-sample.zip")
    summary = prepare(archive, tmp_path, Settings(image_size=64), progress=False)
    assert (summary.kept, summary.rejected) == (605, 11)
    assert summary.by_label == {
        "cat": {"kept": 302, "rejected": 6},
        "dog": {"kept": 303, "rejected": 5},
    }
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = {r["relpath"].removeprefix(SAMPLE_PREFIX): r for r in csv.DictReader(f)}
    rejected = {k: r["reason"] for k, r in rows.items() if r["status"] == "rejected"}
    assert rejected == {k: d.cleaning for k, d in SAMPLE_DEFECTS.items() if d.cleaning}
    for kept in (k for k, d in SAMPLE_DEFECTS.items() if d.cleaning is None):
        assert rows[kept]["status"] == "kept", kept
    assert prepare(archive, tmp_path, Settings(image_size=64), progress=False).reused == {
        "cleaning": True,
        "cache": True,
    }


def _statistics(photos: list[bytes], change=None) -> dict[str, np.ndarray]:
    """Bucket counts of the image statistics of `photos` (optionally changed), decoded at 96 px
    as served."""
    images, sizes = [], []
    for data in photos:
        img = preprocessing.open_image(data)
        sizes.append(img.size)
        pixels = preprocessing.decode(img, 96)
        images.append(change(pixels) if change else pixels)
    return stats.histograms(stats.image_statistics(np.stack(images), np.array(sizes)))


def test_real_photos_drift_only_when_shifted(report) -> None:
    """Half the full-size sample against the other half: no drift; the same half greyscale,
    darkened, or photos from another source (petimages-180: re-saved at 180x180) drift in the
    statistic that changed."""
    photos = list(sample_photos().values())
    with zipfile.ZipFile(shared_file("petimages-180.zip")) as other:
        names = sorted(n for n in other.namelist() if n.endswith(".jpg"))
        elsewhere = [other.read(n) for n in names[::80]]
    reference, served = photos[::2], photos[1::2]
    expected = _statistics(reference)
    grey = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    conditions = {
        "in-distribution": _statistics(served),
        "greyscale": _statistics(served, lambda p: np.repeat((p @ grey)[..., None], 3, -1)),
        "darkened": _statistics(served, lambda p: (p * 0.4).astype(np.uint8)),
        "petimages-180": _statistics(elsewhere),
    }
    figures = {
        name: {s: round(drift.psi(expected[s], counts[s]), 3) for s in stats.IMAGE}
        for name, counts in conditions.items()
    }
    report("real photos: PSI", {"reference": len(reference), "served": len(served), **figures})
    assert max(figures["in-distribution"].values()) < drift.PSI_DRIFT
    assert figures["greyscale"]["colourfulness"] > drift.PSI_DRIFT
    assert figures["darkened"]["brightness"] > drift.PSI_DRIFT
    assert figures["petimages-180"]["megapixels"] > drift.PSI_DRIFT
    assert figures["petimages-180"]["aspect_ratio"] > drift.PSI_DRIFT
