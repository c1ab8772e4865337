"""The outcome table of ../shared/data/README.md on real photos (skipped when the data is absent)."""

from __future__ import annotations

import csv
from pathlib import Path

from catsdogs_pl.data.prepare import Settings, prepare
from tests.conftest import shared_file

EXPECTED_REJECTED = {
    "Cat/666.jpg": "empty",
    "Dog/11702.jpg": "truncated",
    "Cat/Thumbs.db": "not_an_image",
    "Dog/Thumbs.db": "not_an_image",
    "Cat/10001.jpg": "not_an_image",
    "Cat/10007.jpg": "label_conflict",
    "Dog/10007.jpg": "label_conflict",
    "Cat/23.jpg": "label_conflict",
    "Dog/10008.jpg": "duplicate",
    "Cat/10009.jpg": "too_small",
    "Dog/10011.jpg": "decompression_bomb",
}


def test_fullsize_sample_outcomes(tmp_path: Path) -> None:
    archive = shared_file("petimages-fullsize-sample.zip")
    summary = prepare(archive, tmp_path, Settings(image_size=64), progress=False)
    assert (summary["kept"], summary["rejected"]) == (605, 11)
    assert summary["by_label"] == {
        "cat": {"kept": 302, "rejected": 6},
        "dog": {"kept": 303, "rejected": 5},
    }
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = {r["relpath"].removeprefix("PetImages/"): r for r in csv.DictReader(f)}
    rejected = {k: r["reason"] for k, r in rows.items() if r["status"] == "rejected"}
    assert rejected == EXPECTED_REJECTED
    for kept in (
        "Dog/10002.jpg",
        "Cat/10003.jpg",
        "Dog/10004.jpg",
        "Cat/10005.jpg",
        "Dog/10006.jpg",
        "Cat/10010.jpg",
        "Dog/5.jpg",
    ):
        assert rows[kept]["status"] == "kept", kept
    assert prepare(archive, tmp_path, Settings(image_size=64), progress=False)["reused"] == {
        "cleaning": True,
        "cache": True,
    }
