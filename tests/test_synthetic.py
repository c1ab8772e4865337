"""Synthetic cat/dog generator: layout, determinism, stability, uniqueness, no colour cue."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsdogs_pl.data.synthetic import draw_animal, generate


def _files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under root (anything stray shows up here)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_and_counts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert generate(root, per_class=4, size=32) == root
    expected = {f"{c}/{i:05d}.jpg" for c in ("cat", "dog") for i in range(4)}
    assert set(_files(root)) == expected  # no temp files or extra folders left behind


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", per_class=3, size=32, seed=5))
    b = _files(generate(tmp_path / "b", per_class=3, size=32, seed=5))
    c = _files(generate(tmp_path / "c", per_class=3, size=32, seed=6))
    assert a == b
    assert all(a[k] != c[k] for k in a)  # the seed matters


def test_growing_keeps_earlier_images(tmp_path: Path) -> None:
    root = tmp_path / "grow"
    first = _files(generate(root, per_class=5, size=32))
    grown = _files(generate(root, per_class=8, size=32))
    assert len(grown) == 16
    assert {k: grown[k] for k in first} == first
    assert grown == _files(generate(tmp_path / "fresh", per_class=8, size=32))


def test_existing_files_are_not_rewritten(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", per_class=2, size=32)
    marker = root / "cat" / "00001.jpg"
    marker.write_bytes(b"left alone")
    generate(root, per_class=2, size=32)
    assert marker.read_bytes() == b"left alone"


def test_all_images_distinct(tmp_path: Path) -> None:
    files = _files(generate(tmp_path / "u", per_class=40, size=32))
    digests = {hashlib.sha256(data).hexdigest() for data in files.values()}
    assert len(digests) == len(files) == 80


@pytest.mark.parametrize("size", [48, 96])
def test_images_decode_to_rgb_of_requested_size(tmp_path: Path, size: int) -> None:
    root = generate(tmp_path / str(size), per_class=2, size=size)
    for path in root.rglob("*.jpg"):
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (size, size)


def test_draw_animal_is_deterministic_and_validates_label() -> None:
    one = draw_animal("dog", np.random.default_rng(3), size=40)
    two = draw_animal("dog", np.random.default_rng(3), size=40)
    assert one.mode == "RGB" and one.size == (40, 40)
    assert one.tobytes() == two.tobytes()
    with pytest.raises(ValueError, match="got 'horse'"):
        draw_animal("horse", np.random.default_rng(0))


def _best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best single cut on one statistic (either direction)."""
    accs = [((values > t) == labels).mean() for t in np.unique(values)]
    return max(max(accs), 1 - min(accs))


def test_classes_not_separable_by_colour_statistics() -> None:
    """A model must learn shapes; mean colour or contrast alone must not give the label away."""
    stats = {"cat": [], "dog": []}
    for ci, label in enumerate(("cat", "dog")):
        for i in range(100):
            pixels = np.asarray(draw_animal(label, np.random.default_rng([9, ci, i]), 32), float)
            pixels = pixels.reshape(-1, 3)
            stats[label].append([*pixels.mean(0), pixels.mean(), pixels.std()])
    cat, dog = np.array(stats["cat"]), np.array(stats["dog"])
    spread = np.concatenate([cat, dog]).std(0)
    assert np.all(np.abs(cat.mean(0) - dog.mean(0)) < 0.3 * spread)
    labels = np.array([0] * len(cat) + [1] * len(dog))
    for column in np.concatenate([cat, dog]).T:  # R, G, B, brightness, contrast
        assert _best_threshold_accuracy(column, labels) < 0.7
