"""../shared/data (real photos, never committed) and what its full-size sample holds.

Tests that use it skip when the folder is absent: a user's fresh clone has none.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FULLSIZE_SAMPLE = SHARED_DATA / "petimages-fullsize-sample.zip"
SAMPLE_PREFIX = "PetImages/"  # the archive's top folder; the table below is relative to it


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real-data tests need ../shared/data)")
    return path


@dataclass(frozen=True)
class SampleFile:
    """One file of the full-size sample that reproduces a defect of the real archive."""

    what: str
    cleaning: str | None  # the reason `prepare` rejects it with; None: kept
    served: str | None  # the error TorchServe answers 400 with for its bytes; None: 200, a label


# ../shared/data/README.md's table, file by file: what cleaning makes of each file, and what the
# server answers when a client sends its bytes (a duplicate or a label conflict is a valid photo
# to the server). Every test of the sample's defects reads this table.
SAMPLE_DEFECTS: dict[str, SampleFile] = {
    "Cat/666.jpg": SampleFile("0 bytes", "empty", "empty"),
    "Dog/11702.jpg": SampleFile("JPEG cut after 30% of its bytes", "truncated", "truncated"),
    "Cat/Thumbs.db": SampleFile("Windows thumbnail cache", "not_an_image", "not_an_image"),
    "Dog/Thumbs.db": SampleFile("Windows thumbnail cache", "not_an_image", "not_an_image"),
    "Cat/10001.jpg": SampleFile("an HTML error page named .jpg", "not_an_image", "not_an_image"),
    "Dog/10002.jpg": SampleFile("a photo stored as PNG, named .jpg", None, None),
    "Cat/10003.jpg": SampleFile("a CMYK JPEG", None, None),
    "Dog/10004.jpg": SampleFile("a greyscale JPEG", None, None),
    "Cat/10005.jpg": SampleFile("a 2-frame animated GIF named .jpg", None, None),
    "Dog/10006.jpg": SampleFile("EXIF orientation 6 (stored rotated)", None, None),
    "Cat/10007.jpg": SampleFile("the bytes of Cat/23.jpg, filed as a cat", "label_conflict", None),
    "Dog/10007.jpg": SampleFile("the bytes of Cat/23.jpg, filed as a dog", "label_conflict", None),
    "Cat/23.jpg": SampleFile("a photo whose bytes are also filed as a dog", "label_conflict", None),
    "Dog/10008.jpg": SampleFile("a byte copy of Dog/5.jpg", "duplicate", None),
    "Dog/5.jpg": SampleFile("a photo with a byte copy (the copy kept)", None, None),
    "Cat/10009.jpg": SampleFile("a 1x1 pixel image", "too_small", "too_small"),
    "Cat/10010.jpg": SampleFile("valid JPEG with junk after the end marker", None, None),
    "Dog/10011.jpg": SampleFile(
        "tiny PNG whose header claims 30000x30000 pixels",
        "decompression_bomb",
        "decompression_bomb",
    ),
}


def sample_photos() -> dict[str, bytes]:
    """The full-size sample's photos, its defect files left out, by their path under PetImages/
    (sorted); skips the test when ../shared/data is absent."""
    with zipfile.ZipFile(shared_file(FULLSIZE_SAMPLE.name)) as sample:
        return {
            rel: sample.read(name)
            for name in sorted(sample.namelist())
            if name.endswith(".jpg")
            and (rel := name.removeprefix(SAMPLE_PREFIX)) not in SAMPLE_DEFECTS
        }
