"""Resized images as one memory-mappable uint8 `.npy` per split, so an epoch costs no JPEG decoding.

Files are streamed row by row from the staging file written during cleaning (no array of the whole
dataset is ever held in memory), then a key names the data version and size they were built for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from catsdogs_pl.data.cleaning import Record
from catsdogs_pl.data.split import SPLITS


def cache_dir(out: Path, image_size: int) -> Path:
    return out / "cache" / f"{image_size}px"


def split_files(out: Path, image_size: int, split: str) -> tuple[Path, Path]:
    """(images, labels) `.npy` paths of one split."""
    folder = cache_dir(out, image_size)
    return folder / f"{split}_images.npy", folder / f"{split}_labels.npy"


def _key(dataset_version: str, image_size: int) -> dict[str, object]:
    return {"dataset_version": dataset_version, "image_size": image_size}


def is_current(out: Path, dataset_version: str, image_size: int) -> bool:
    """True when the cache was built for exactly this data version and size."""
    key_path = cache_dir(out, image_size) / "key.json"
    if not key_path.exists():
        return False
    return json.loads(key_path.read_text()) == _key(dataset_version, image_size)


def build(
    out: Path,
    records: list[Record],
    classes: list[str],
    image_size: int,
    staging: Path,
    dataset_version: str,
) -> None:
    """Write each split's images (N, S, S, 3) and labels (N,) from staged rows, then the key."""
    folder = cache_dir(out, image_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").unlink(missing_ok=True)  # a crash mid-build must not look current
    row_bytes = image_size * image_size * 3
    fd = os.open(staging, os.O_RDONLY)
    try:
        for split in SPLITS:
            rows = [i for i, rec in enumerate(records) if rec.split == split]
            images_path, labels_path = split_files(out, image_size, split)
            header = {
                "descr": "|u1",
                "fortran_order": False,
                "shape": (len(rows), image_size, image_size, 3),
            }
            with open(images_path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                for i in rows:
                    f.write(os.pread(fd, row_bytes, i * row_bytes))
            labels = np.array([classes.index(records[i].label) for i in rows], dtype=np.int64)
            np.save(labels_path, labels)
    finally:
        os.close(fd)
    (folder / "key.json").write_text(json.dumps(_key(dataset_version, image_size)))
