"""prepare: cleaning outcomes, manifest, split properties, cache and idempotency."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from catsdogs_pl.data import cache
from catsdogs_pl.data.prepare import Settings, prepare
from catsdogs_pl.data.split import assign_split
from catsdogs_pl.preprocessing import load_rgb
from tests.helpers.images import image_bytes, make_class_folders, png_claiming

S = Settings(image_size=32)
README_MANIFEST_COLUMNS = [
    "relpath",
    "label",
    "sha256",
    "width",
    "height",
    "status",
    "reason",
    "detail",
    "split",
]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return {row["relpath"]: row for row in csv.DictReader(f)}


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    src = make_class_folders(tmp_path / "src", per_class=20)
    (src / "Cat" / "empty.jpg").write_bytes(b"")
    (src / "Cat" / "page.jpg").write_bytes(b"<html>error</html>")
    (src / "Cat" / "cut.jpg").write_bytes(image_bytes(7, (300, 200))[:2000])
    (src / "Cat" / "tiny.jpg").write_bytes(image_bytes(8, (1, 1)))
    (src / "Dog" / "bomb.jpg").write_bytes(png_claiming(30_000, 30_000))
    (src / "Dog" / "copy.jpg").write_bytes((src / "Dog" / "3.jpg").read_bytes())
    (src / "Cat" / "x.jpg").write_bytes((src / "Cat" / "5.jpg").read_bytes())
    (src / "Dog" / "x.jpg").write_bytes((src / "Cat" / "5.jpg").read_bytes())
    (src / "Dog" / "photo.jpg").write_bytes(image_bytes(9, (80, 60), fmt="PNG"))  # PNG named .jpg
    return src


def test_cleaning_outcomes_and_source_untouched(messy: Path, tmp_path: Path) -> None:
    before = tree_digest(messy)
    summary = prepare(messy, tmp_path / "out", S, workers=2, progress=False)
    assert tree_digest(messy) == before
    rows = manifest(tmp_path / "out")
    expected = {
        "Cat/empty.jpg": "empty",
        "Cat/page.jpg": "not_an_image",
        "Cat/cut.jpg": "truncated",
        "Cat/tiny.jpg": "too_small",
        "Dog/bomb.jpg": "decompression_bomb",
        "Dog/copy.jpg": "duplicate",
        "Cat/5.jpg": "label_conflict",
        "Cat/x.jpg": "label_conflict",
        "Dog/x.jpg": "label_conflict",
    }
    rejected = {k: r["reason"] for k, r in rows.items() if r["status"] == "rejected"}
    assert rejected == expected
    assert rows["Dog/3.jpg"]["status"] == "kept" and rows["Dog/photo.jpg"]["status"] == "kept"
    assert all(r["split"] == "" for r in rows.values() if r["status"] == "rejected")
    assert all(
        r["split"] in ("train", "val", "test") for r in rows.values() if r["status"] == "kept"
    )
    assert (summary.files, summary.kept, summary.rejected) == (49, 40, 9)
    assert summary.by_reason["label_conflict"] == 3
    # the format README.md documents (the header is written from the code's own column list)
    assert list(rows[next(iter(rows))].keys()) == README_MANIFEST_COLUMNS


def test_summary_preprocessing_and_cache(class_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare(class_folders, out, S, workers=1, progress=False)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["dataset_version"] == summary.dataset_version
    assert on_disk["settings"]["image_size"] == 32 and on_disk["classes"] == ["cat", "dog"]
    assert sum(s["total"] for s in on_disk["splits"].values()) == on_disk["kept"] == 20
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["image_size"] == 32 and pre["classes"] == ["cat", "dog"] and len(pre["mean"]) == 3
    rows = manifest(out)
    for split in ("train", "val", "test"):
        images_path, labels_path = cache.split_files(out, 32, split)
        images, labels = np.load(images_path, mmap_mode="r"), np.load(labels_path)
        members = [k for k, r in rows.items() if r["split"] == split]
        assert images.shape == (len(members), 32, 32, 3) and images.dtype == np.uint8
        for i, relpath in enumerate(members):  # the cache holds exactly what serving would compute
            assert np.array_equal(images[i], load_rgb((class_folders / relpath).read_bytes(), 32))
            assert labels[i] == ["cat", "dog"].index(rows[relpath]["label"])


def test_second_run_reuses_everything(class_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare(class_folders, out, S, progress=False)
    images, _ = cache.split_files(out, 32, "train")
    mtime = images.stat().st_mtime_ns
    second = prepare(class_folders, out, S, progress=False)
    assert second.reused == {"cleaning": True, "cache": True}
    assert second.dataset_version == first.dataset_version
    assert images.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate", "delete"])
def test_damaged_cache_file_is_detected_and_rebuilt(
    class_folders: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    prepare(class_folders, out, S, progress=False)
    images, _ = cache.split_files(out, 32, "train")
    good = images.read_bytes()
    if (
        damage == "flip_a_byte"
    ):  # same size, same header, one pixel changed: only a checksum sees it
        images.write_bytes(good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:])
    elif damage == "truncate":
        images.write_bytes(good[: len(good) // 2])
    else:
        images.unlink()
    assert "does not match the checksum" in cache.check(out, prepare_version(out), 32)
    again = prepare(class_folders, out, S, progress=False)
    assert again.reused == {"cleaning": True, "cache": False}
    assert images.read_bytes() == good  # rebuilt from the source, identical
    assert "rebuilding the cache" in caplog.text and str(images) in caplog.text
    assert cache.check(out, again.dataset_version, 32) is None


def test_cache_without_checksums_is_rebuilt_once(class_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare(class_folders, out, S, progress=False)
    key_path = cache.cache_dir(out, 32) / "key.json"
    key = json.loads(key_path.read_text())
    del key["sha256"]  # as an older catsdogs wrote it: nothing to verify against
    key_path.write_text(json.dumps(key))
    assert "no checksums" in cache.check(out, first.dataset_version, 32)
    assert prepare(class_folders, out, S, progress=False).reused["cache"] is False
    assert prepare(class_folders, out, S, progress=False).reused["cache"] is True


def prepare_version(out: Path) -> str:
    return json.loads((out / "summary.json").read_text())["dataset_version"]


def test_new_size_reuses_cleaning_and_rebuilds_cache(class_folders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(class_folders, out, S, progress=False)
    again = prepare(class_folders, out, Settings(image_size=40), progress=False)
    assert again.reused == {"cleaning": True, "cache": False}
    images, _ = cache.split_files(out, 40, "train")
    assert np.load(images, mmap_mode="r").shape[1:] == (40, 40, 3)


def test_growth_moves_no_old_image(tmp_path: Path) -> None:
    src = make_class_folders(tmp_path / "src", per_class=60)
    out = tmp_path / "out"
    first = prepare(src, out, S, progress=False)
    old = {k: r["split"] for k, r in manifest(out).items()}
    make_class_folders(src, per_class=50, start=60)  # 100 new images
    second = prepare(src, out, S, progress=False)
    new = {k: r["split"] for k, r in manifest(out).items()}
    assert len(new) == len(old) + 100
    assert {k: new[k] for k in old} == old
    assert second.dataset_version != first.dataset_version
    assert second.reused["cleaning"] is False


def test_split_ignores_names_and_order(class_folders: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "renamed"
    for path in class_folders.rglob("*.jpg"):
        target = renamed / path.parent.name / f"img_{999 - int(path.stem)}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    a = prepare(class_folders, tmp_path / "a", S, progress=False)
    b = prepare(renamed, tmp_path / "b", S, progress=False)
    assert a.dataset_version == b.dataset_version and a.splits == b.splits


def test_each_picture_is_kept_once_so_none_is_in_two_splits(messy: Path, tmp_path: Path) -> None:
    """The split is drawn from the sha256, so a picture can only be in two splits as two kept
    copies: cleaning keeps at most one row per sha256."""
    prepare(messy, tmp_path / "out", S, progress=False)
    rows = manifest(tmp_path / "out")
    kept = Counter(r["sha256"] for r in rows.values() if r["status"] == "kept")
    assert len(kept) == 40 and set(kept.values()) == {1}
    copied = rows["Dog/3.jpg"]["sha256"]  # Dog/copy.jpg has the same bytes
    assert rows["Dog/copy.jpg"]["sha256"] == copied and kept[copied] == 1


def test_split_is_stratified_and_hits_the_fractions() -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        shas = [
            hashlib.sha256(f"{label}{rng.random()}".encode()).hexdigest() for _ in range(10_000)
        ]
        splits = [assign_split(s, 0, 0.1, 0.1) for s in shas]
        for name, target in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs(splits.count(name) / len(splits) - target) < 0.01, (label, name)


def test_split_seed_changes_the_split(class_folders: Path, tmp_path: Path) -> None:
    a = prepare(class_folders, tmp_path / "a", S, progress=False)
    b = prepare(
        class_folders, tmp_path / "b", Settings(image_size=32, split_seed=1), progress=False
    )
    assert a.dataset_version != b.dataset_version


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="val_fraction=0.6, test_fraction=0.5"):
        Settings(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="image_size=8"):
        Settings(image_size=8)
