"""Deterministic, growth-stable train/val/test split from a keyed hash of each image's content.

An image's split depends only on its own bytes and the split seed: not on file names, file order or
the other images, so adding images never moves an old one. Each class is split by the same rule,
which makes every class's proportions match the targets up to binomial noise (about 0.3 points for
the 12,500 images per class of PetImages).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


def assign_split(sha256: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """'test' for the lowest hashes, then 'val', else 'train'; u is uniform in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def dataset_version(kept: Iterable[tuple[str, str, str]]) -> str:
    """Hash of the kept (sha256, label, split) set: changes exactly when usable data or split change."""
    lines = sorted(",".join(row) for row in kept)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
