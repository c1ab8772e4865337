"""Shared fixtures: tiny generated images, so fast tests need no real data; figures to report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            (root / name / f"{i}.jpg").write_bytes(image_bytes(10_000 * (c + 1) + i))
    return root


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "src")


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real-data tests need ../shared/data)")
    return path


FIGURES: dict[str, object] = {}


@pytest.fixture(scope="session")
def report():
    """Record a figure under a name, printed at the end of the run: report("load", {...})."""
    return FIGURES.__setitem__


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for name, figures in FIGURES.items():
            terminalreporter.write_line(f"{name}: {json.dumps(figures)}")
