"""Generated images, so fast tests need no real data."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(
    seed: int, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", mode: str = "RGB"
) -> bytes:
    """A unique noise image: distinct seeds give distinct bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buf, fmt)
    return buf.getvalue()


def make_class_folders(
    root: Path, per_class: int = 10, classes=("Cat", "Dog"), start: int = 0
) -> Path:
    """root/Cat/N.jpg and root/Dog/N.jpg, N in [start, start + per_class), all distinct."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            (root / name / f"{i}.jpg").write_bytes(image_bytes(10_000 * (c + 1) + i))
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = zlib.compress(b"\x00" * 4)
    idat = b"IDAT" + data
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(data))
        + idat
        + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )
