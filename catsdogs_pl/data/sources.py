"""Find labelled image files in an archive or folder, whatever layout the user has.

Layouts: Microsoft's `PetImages/Cat|Dog`, any `root/<class>/*`, and the Kaggle competition's
`train/cat.0.jpg`. Archives are extracted once, safely (no entry may land outside the target folder),
into a folder of ours: the user's files are only ever read.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from catsdogs_pl.errors import CatsDogsError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_COMPETITION_NAME = re.compile(r"^([A-Za-z]+)\.\d+\.\w+$")  # cat.0.jpg


class SourceError(CatsDogsError, ValueError):
    """The source cannot be used as a dataset; the message says what to fix."""


@dataclass(frozen=True)
class SourceFile:
    relpath: str  # relative to the dataset root, with forward slashes
    label: str
    path: Path


def is_junk(name: str) -> bool:
    """macOS resource forks and dotfiles are never data."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


def natural_key(text: str) -> list[int | str]:
    """Sort Cat/2.jpg before Cat/10.jpg, so 'first' means what a person expects."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def _archive_members(archive: Path) -> Iterator[tuple[str, str, IO[bytes] | None]]:
    """Yield (name, kind, stream) for zip and tar entries; kind is 'file', 'dir' or 'link'."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    yield info.filename, "link", None
                elif info.is_dir():
                    yield info.filename, "dir", None
                else:
                    with zf.open(info) as stream:
                        yield info.filename, "file", stream
        return
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.isdir():
                yield member.name, "dir", None
            elif member.isfile():
                yield member.name, "file", tf.extractfile(member)
            else:
                yield member.name, "link", None


def _safe_target(root: Path, name: str, archive: Path) -> Path:
    """Refuse absolute paths and '..' so a hostile archive cannot write outside `root` (zip-slip)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise SourceError(
            f"{archive}: refusing to extract '{name}': it points outside the target folder"
        )
    target = (root / posix).resolve()
    if not target.is_relative_to(root.resolve()):
        raise SourceError(
            f"{archive}: refusing to extract '{name}': it points outside the target folder"
        )
    return target


def extract(archive: Path, dest_root: Path) -> Path:
    """Extract `archive` under `dest_root` once; a second call with the same archive reuses it."""
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    dest = dest_root / name
    marker = dest / ".extracted.json"
    st = archive.stat()
    stamp = {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return dest
    partial = dest_root / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for member, kind, stream in _archive_members(archive):
            target = _safe_target(partial, member, archive)
            if is_junk(member):
                continue
            if kind == "link":
                raise SourceError(
                    f"{archive}: refusing to extract '{member}': links are not allowed"
                )
            if kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise SourceError(f"{archive}: not a readable archive ({exc}); download it again") from exc
    except SourceError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / ".extracted.json").write_text(json.dumps(stamp))
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def _children(folder: Path) -> tuple[list[Path], list[Path]]:
    entries = [p for p in sorted(folder.iterdir()) if not is_junk(p.name)]
    return [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]


def _competition_files(folder: Path, root: Path) -> list[SourceFile]:
    found = []
    for path in folder.iterdir():
        match = _COMPETITION_NAME.match(path.name)
        if match and path.is_file():
            found.append(SourceFile(path.relative_to(root).as_posix(), match[1].lower(), path))
    return found


def find_files(root: Path, classes_needed: int = 2) -> list[SourceFile]:
    """Every candidate file with its label (lower-case class name), in natural order; a source
    added to another (users' labels) may hold one class, `<root>/<class>/` with no wrapper."""
    folder = root
    while True:  # step through wrappers such as kagglecatsanddogs_5340/PetImages/
        dirs, files = _children(folder)
        wrapper = len(dirs) == 1 and not files and dirs[0].name.lower() != "train"
        if wrapper and classes_needed > 1:  # a one-class source's one folder is its class
            folder = dirs[0]
            continue
        break
    train = next((d for d in dirs if d.name.lower() == "train"), None)
    found = _competition_files(train, root) if train else []
    found = found or _competition_files(folder, root)
    if not found:
        for class_dir in dirs:
            for path in class_dir.rglob("*"):
                rel = path.relative_to(root).as_posix()
                if path.is_file() and not is_junk(path.relative_to(class_dir).as_posix()):
                    found.append(SourceFile(rel, class_dir.name.lower(), path))
    if not found:
        raise SourceError(
            f"{root}: no class folders found; expected <root>/<class>/<image> "
            "(e.g. PetImages/Cat/1.jpg) or train/cat.0.jpg"
        )
    labels = sorted({f.label for f in found})
    if len(labels) < classes_needed:
        raise SourceError(
            f"{root}: only one class ({labels[0]!r}) found; a classifier needs at least two class folders"
        )
    return sorted(found, key=lambda f: natural_key(f.relpath))


def resolve(
    source: Path, extract_to: Path, classes_needed: int = 2
) -> tuple[Path, list[SourceFile]]:
    """The dataset root (extracted if `source` is an archive) and its labelled files."""
    source = Path(source)
    if not source.exists():
        raise SourceError(
            f"{source}: no such file or folder; pass --source with an archive or a folder of class "
            "sub-folders, or fetch the Kaggle archive with `python -m catsdogs_pl.data download`"
        )
    if source.is_file():
        if not source.name.endswith(ARCHIVE_SUFFIXES):
            raise SourceError(f"{source}: not a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive")
        source = extract(source, extract_to)
    return source, find_files(source, classes_needed)
