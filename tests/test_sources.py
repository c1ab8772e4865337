"""Layouts and safe, idempotent extraction."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from catsdogs_pl.data.sources import SourceError, extract, find_files, resolve
from tests.helpers.images import image_bytes, make_class_folders


def labels_of(files) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in files:
        out[f.label] = out.get(f.label, 0) + 1
    return out


def test_class_folders_and_petimages_wrapper(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "kaggle" / "PetImages", per_class=3)
    files = find_files(tmp_path / "kaggle")
    assert labels_of(files) == {"cat": 3, "dog": 3}
    assert files[0].relpath == "PetImages/Cat/0.jpg"
    assert [f.relpath for f in files[:3]] == [f"PetImages/Cat/{i}.jpg" for i in range(3)]


def test_natural_order(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=12)
    cats = [f.relpath for f in find_files(tmp_path) if f.label == "cat"]
    assert cats[:3] == ["Cat/0.jpg", "Cat/1.jpg", "Cat/2.jpg"] and cats[-1] == "Cat/11.jpg"


def test_kaggle_competition_layout(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test1").mkdir()
    for i in range(3):
        (tmp_path / "train" / f"cat.{i}.jpg").write_bytes(image_bytes(i))
        (tmp_path / "train" / f"dog.{i}.jpg").write_bytes(image_bytes(100 + i))
        (tmp_path / "test1" / f"{i}.jpg").write_bytes(image_bytes(200 + i))  # unlabelled
    files = find_files(tmp_path)
    assert labels_of(files) == {"cat": 3, "dog": 3}
    assert all(f.relpath.startswith("train/") for f in files)


def test_dotfiles_and_macosx_are_skipped(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=2)
    (tmp_path / "Cat" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "__MACOSX" / "Cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "Cat" / "._0.jpg").write_bytes(b"junk")
    files = find_files(tmp_path)
    assert labels_of(files) == {"cat": 2, "dog": 2}


def test_missing_path_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file.*download"):
        resolve(tmp_path / "nope", tmp_path / "x")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no class folders"):
        find_files(tmp_path / "empty")


def test_one_class_only(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=2, classes=("Cat",))
    (tmp_path / "Dog").mkdir()
    with pytest.raises(SourceError, match="only one class \\('cat'\\)"):
        find_files(tmp_path)


def make_zip(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


GOOD = {
    f"PetImages/{c}/{i}.jpg": image_bytes(i + 50 * n)
    for n, c in enumerate(("Cat", "Dog"))
    for i in range(2)
}


def test_zip_extracts_once_and_reuses(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "pets.zip", {**GOOD, "__MACOSX/PetImages/._x": b"j", ".hidden": b"j"}
    )
    root, files = resolve(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "pets" and labels_of(files) == {"cat": 2, "dog": 2}
    assert not (root / "__MACOSX").exists() and not (root / ".hidden").exists()
    first = (root / "PetImages/Cat/0.jpg").stat().st_mtime_ns
    os.utime(root / "PetImages/Cat/0.jpg", ns=(1, 1))
    assert extract(archive, tmp_path / "out") == root
    assert (root / "PetImages/Cat/0.jpg").stat().st_mtime_ns == 1 != first  # not re-extracted


@pytest.mark.parametrize(
    "bad", ["../evil.jpg", "{tmp}/abs/evil.jpg", "PetImages/../../evil.jpg", "C:/evil.jpg"]
)
def test_zip_slip_is_refused(tmp_path: Path, bad: str) -> None:
    bad = bad.format(tmp=tmp_path)  # an absolute path, but this test's own (no fixed /tmp name)
    archive = make_zip(tmp_path / "bad.zip", {**GOOD, bad: b"x"})
    with pytest.raises(SourceError, match="refusing to extract"):
        resolve(archive, tmp_path / "out")
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "abs" / "evil.jpg").exists()
    assert not (tmp_path / "out" / "bad").exists()  # nothing half-extracted looks usable


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "l.zip", GOOD, links={"PetImages/Cat/link.jpg": "/etc/passwd"})
    with pytest.raises(SourceError, match="links are not allowed"):
        resolve(archive, tmp_path / "out")


def test_tar_gz_and_tar_symlink(tmp_path: Path) -> None:
    good = tmp_path / "pets.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        for name, data in GOOD.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    root, files = resolve(good, tmp_path / "out")
    assert root.name == "pets" and len(files) == 4
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("PetImages/Cat/evil.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(SourceError, match="links are not allowed"):
        resolve(bad, tmp_path / "out")


def test_corrupt_archive(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip at all")
    with pytest.raises(SourceError, match="not a readable archive"):
        resolve(tmp_path / "x.zip", tmp_path / "out")


def test_an_added_folder_may_hold_one_class(tmp_path: Path) -> None:
    """A reviewed folder of users' labels (`prepare --add`): its one folder is its class, never a
    wrapper to step through; a source still needs two classes."""
    make_class_folders(tmp_path / "reviewed", per_class=2, classes=("dog",))
    found = find_files(tmp_path / "reviewed", classes_needed=1)
    assert [(f.relpath, f.label) for f in found] == [("dog/0.jpg", "dog"), ("dog/1.jpg", "dog")]
    with pytest.raises(SourceError, match="no class folders found"):
        find_files(tmp_path / "reviewed")  # as a source: dog/ is a wrapper with no classes
