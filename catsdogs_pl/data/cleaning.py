"""Clean by decoding: every file is hashed and decoded once; rejects keep their reason.

The decode that validates a file also produces its resized pixels (written to a staging file), so
cleaning and caching cost one JPEG decode per image, not two.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from catsdogs_pl import preprocessing


@dataclass
class Record:
    """One row of the manifest."""

    relpath: str
    label: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    status: str = "kept"
    reason: str = ""
    detail: str = ""
    split: str = ""

    def reject(self, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail, self.split = "rejected", reason, detail, ""


def inspect(
    path: Path, record: Record, size: int, staging: Path | None, index: int, limits: dict[str, int]
) -> Record:
    """Hash and decode one file; write its pixels to row `index` of `staging` when kept."""
    data = path.read_bytes()
    record.sha256 = hashlib.sha256(data).hexdigest()
    try:
        img = preprocessing.open_image(data, **limits)
        record.width, record.height = img.size
        pixels = preprocessing.decode(img, size)
    except preprocessing.BadImage as exc:
        record.reject(exc.reason, exc.detail)
        return record
    if staging is not None:
        fd = os.open(staging, os.O_WRONLY)
        try:
            os.pwrite(fd, pixels.tobytes(), index * pixels.nbytes)
        finally:
            os.close(fd)
    return record


ADDED = "+"  # relpaths of the folders `prepare --add` joins to the source start "+<k>/"


def reject_conflicts_and_duplicates(records: list[Record]) -> None:
    """Same bytes under two labels in the source: every copy goes (we cannot tell which label is
    right). An added folder's copy of a source photo never rejects it: the source's label stands,
    and the added copy goes (another label: `label_conflict`, else a duplicate), so an uploaded
    byte copy labelled the other class cannot delete a training photo. Same bytes twice under one
    label: the first in natural order stays."""
    by_sha: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        if rec.status == "kept":
            by_sha[rec.sha256].append(rec)
    for copies in by_sha.values():
        source = [rec for rec in copies if not rec.relpath.startswith(ADDED)]
        trusted = source or copies
        labels = sorted({rec.label for rec in trusted})
        if len(labels) > 1:
            others = ", ".join(rec.relpath for rec in copies)
            for rec in copies:
                rec.reject(
                    "label_conflict", f"same bytes filed as {' and '.join(labels)}: {others}"
                )
            continue
        for rec in copies:  # all but the first trusted copy: only an added one can differ
            if rec is trusted[0]:
                continue
            if rec.label != labels[0]:
                rec.reject(
                    "label_conflict",
                    f"labelled {rec.label}, but the source files the same bytes as {labels[0]} "
                    f"({trusted[0].relpath}): the source's label stands",
                )
            else:
                rec.reject("duplicate", f"byte copy of {trusted[0].relpath}")
