"""The outcome table of ../shared/data/README.md on real photos (skipped when the data is absent)."""

from __future__ import annotations

import csv
from pathlib import Path

from catsdogs_pl.data.prepare import Settings, prepare
from tests.helpers.shared_data import SAMPLE_DEFECTS, SAMPLE_PREFIX, shared_file


def test_fullsize_sample_outcomes(tmp_path: Path) -> None:
    archive = shared_file("petimages-fullsize-sample.zip")
    summary = prepare(archive, tmp_path, Settings(image_size=64), progress=False)
    assert (summary["kept"], summary["rejected"]) == (605, 11)
    assert summary["by_label"] == {
        "cat": {"kept": 302, "rejected": 6},
        "dog": {"kept": 303, "rejected": 5},
    }
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = {r["relpath"].removeprefix(SAMPLE_PREFIX): r for r in csv.DictReader(f)}
    rejected = {k: r["reason"] for k, r in rows.items() if r["status"] == "rejected"}
    assert rejected == {k: d.cleaning for k, d in SAMPLE_DEFECTS.items() if d.cleaning}
    for kept in (k for k, d in SAMPLE_DEFECTS.items() if d.cleaning is None):
        assert rows[kept]["status"] == "kept", kept
    assert prepare(archive, tmp_path, Settings(image_size=64), progress=False)["reused"] == {
        "cleaning": True,
        "cache": True,
    }
