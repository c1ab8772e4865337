"""Resized images as one memory-mappable uint8 `.npy` per split, so an epoch costs no JPEG decoding.

Files are streamed row by row from the staging file written during cleaning (no array of the whole
dataset is ever held in memory), then a key names the data version and size they were built for
and the sha256 of every file as written: a file damaged since (disk, a stray write, a partial copy)
is found before training on it, and the cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check(out: Path, dataset_version: str, image_size: int, verify: bool = True) -> str | None:
    """None when the cache was built for exactly this data version and size and (with `verify`)
    every file still has the checksum it was written with; otherwise why it must be rebuilt."""
    folder = cache_dir(out, image_size)
    try:
        key = json.loads((folder / "key.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return f"no complete cache in {folder}"
    if (key.get("dataset_version"), key.get("image_size")) != (dataset_version, image_size):
        return f"the cache in {folder} is for another data version or image size"
    if verify and "sha256" not in key:
        return f"the cache in {folder} has no checksums (built before they were recorded)"
    for name, expected in key.get("sha256", {}).items() if verify else ():
        path = folder / name
        if not path.exists() or _sha256(path) != expected:
            return f"{path} does not match the checksum it was written with"
    return None


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
    checksums = {}
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
            digest = hashlib.sha256()
            with open(images_path, "wb") as f:
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, header)
                for chunk in (
                    head.getvalue(),
                    *(os.pread(fd, row_bytes, i * row_bytes) for i in rows),
                ):
                    f.write(chunk)
                    digest.update(chunk)
            checksums[images_path.name] = digest.hexdigest()
            labels = np.array([classes.index(records[i].label) for i in rows], dtype=np.int64)
            np.save(labels_path, labels)
            checksums[labels_path.name] = _sha256(labels_path)
    finally:
        os.close(fd)
    key = {"dataset_version": dataset_version, "image_size": image_size, "sha256": checksums}
    (folder / "key.json").write_text(json.dumps(key, indent=2))
