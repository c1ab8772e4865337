"""The capture store: a bounded sample of what the server answered, so users' labels can come back.

The handler keeps a `fraction` of its answers in `<state folder>/captures/`: `<id>.img` (the image
bytes as received) and `<id>.json` (a Capture: id, version, label, probabilities, time). Feedback
adds `<id>.label.json`, a reviewer's decision `<id>.review.json`. The `.json` of a capture is
written last, so a capture exists once it is complete; every file goes through a temporary file
and a rename, readable by its owner only (0600). A JPEG's location (EXIF GPS, XMP) is removed
before it is stored; its pixels and the rest of its EXIF (orientation) are kept.

Unlabelled captures are bounded by `max_bytes`, the oldest removed first; labelled ones are
records of their own, never evicted for room: they have their own bound, `max_label_bytes`, past
which a new label is refused (LabelStoreFull) rather than an old one dropped. Every capture,
labelled or not, goes at `max_age_s` (the photo's retention: a label lives as long as its photo).
A disk that refuses a write costs the capture, never the answer. Pruning and the label bound read
one listing of the folder (names and sizes, never a record), and a lock file keeps a label from
arriving while its capture is being removed.

Stdlib only: every `.mar` ships it as `catsdogs_capture.py` for the handler; the feedback API and
the data export read the same folder through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENV = "CATSDOGS_CAPTURE"  # JSON of `folder` and the Limits: serve sets it
PRUNE_S = 10.0  # a writer rescans the folder at most this often: bounds hold within it
ORPHAN_S = 60.0  # an image without its record this long is what a crash between writes left
_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: also what keeps a path inside the folder


@dataclass(frozen=True)
class Limits:
    """How much is kept: the fraction of answers sampled (0: nothing), the bytes of unlabelled
    images (the oldest go past it), the bytes of labelled ones (new labels are refused past it)
    and the age (seconds) past which every capture goes."""

    fraction: float = 0.0
    max_bytes: int = 1_000_000_000
    max_age_s: float = 30 * 86400.0
    max_label_bytes: int = 1_000_000_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"capture fraction {self.fraction}: use a number from 0 to 1")
        if min(self.max_bytes, self.max_age_s, self.max_label_bytes) <= 0:
            raise ValueError("capture max_bytes, max_age_s and max_label_bytes must be positive")


@dataclass(frozen=True)
class Entry:
    """A complete capture as the folder's listing shows it: its image's bytes and time (the
    capture's), and whether it is labelled."""

    id: str
    size: int
    time: float
    labelled: bool


class LabelStoreFull(OSError):
    """A new label would take the labelled photos past `max_label_bytes`."""


class Gone(LookupError):
    """The capture was removed (expired or evicted) before its label could be recorded."""


@dataclass(frozen=True)
class Capture:
    """One kept answer. `size`: the bytes of its image."""

    id: str
    version: str
    label: str
    probabilities: dict[str, float]
    time: float
    size: int = 0


@dataclass(frozen=True)
class Feedback:
    """What a user said a captured photo really was, when, and who said it (a labeller's name).
    `votes`: every giver's latest label of the photo, so givers who disagree can be reviewed."""

    label: str
    time: float = field(default_factory=time.time)
    giver: str = ""
    votes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Review:
    """A reviewer's decision on a labelled capture, applied by every later export: the label it
    trains with (None: dropped), who decided, and when."""

    label: str | None
    reviewer: str
    time: float = field(default_factory=time.time)


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_GPS_IFD = 0x8825
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def without_location(data: bytes) -> bytes:
    """A JPEG's bytes with its location gone and nothing else changed: the EXIF GPS entries and
    their values zeroed in place (the GPS directory left empty, so orientation and the rest of
    EXIF still read), XMP packets (which can repeat the location) removed. Pixels are untouched.
    Anything that is not a JPEG, or whose EXIF does not parse, is returned as it came."""
    if data[:2] != b"\xff\xd8":
        return data
    out, at = bytearray(data[:2]), 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xDA:  # start of scan: the image data follows, no more metadata
            break
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        segment = bytearray(data[at:end])
        if marker == 0xE1 and segment[4:10] == b"Exif\x00\x00":
            with contextlib.suppress(IndexError, KeyError, ValueError):  # not EXIF after all
                _zero_gps(segment, 10)
        if not (marker == 0xE1 and bytes(segment[4 : 4 + len(_XMP)]) == _XMP):
            out += segment
        at = end
    return bytes(out + data[at:])


def _zero_gps(segment: bytearray, tiff: int) -> None:
    """Zero the GPS directory of the TIFF structure at `segment[tiff:]`, in place."""
    order = {b"II": "little", b"MM": "big"}[bytes(segment[tiff : tiff + 2])]

    def number(at: int, size: int) -> int:
        if tiff + at + size > len(segment):
            raise IndexError(at)
        return int.from_bytes(segment[tiff + at : tiff + at + size], order)

    ifd0 = number(4, 4)
    for k in range(number(ifd0, 2)):
        entry = ifd0 + 2 + 12 * k
        if number(entry, 2) == _GPS_IFD:
            gps = number(entry + 8, 4)
            count = number(gps, 2)
            for j in range(count):
                item = gps + 2 + 12 * j
                size = _TIFF_SIZES.get(number(item + 2, 2), 1) * number(item + 4, 4)
                if size > 4:  # the value lives elsewhere: zero it there
                    start = tiff + number(item + 8, 4)
                    segment[start : start + size] = bytes(min(size, len(segment) - start))
            segment[tiff + gps : tiff + gps + 2 + 12 * count] = bytes(2 + 12 * count)
            return


def _write(path: Path, data: bytes, when: float | None = None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.touch(mode=0o600)  # users' photos: the owner only, before a byte is in it
        tmp.write_bytes(data)
        if when is not None:
            os.utime(tmp, (when, when))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Store:
    """One capture folder. Safe across processes: each file appears whole or not at all, and
    pruning tolerates files that another process removed first."""

    def __init__(
        self, folder: Path, limits: Limits, draw: Callable[[], float] = random.random
    ) -> None:
        self.folder = Path(folder)
        self.limits = limits
        self.draw = draw
        self.next_prune = 0.0
        self.pruner: threading.Thread | None = None

    @classmethod
    def from_env(cls) -> Store | None:
        """The store `serve` configured for TorchServe's workers; None when capture is off."""
        text = os.environ.get(ENV)
        if not text:
            return None
        found = json.loads(text)
        store = cls(Path(found.pop("folder")), Limits(**found))
        return store if store.limits.fraction > 0 else None

    @classmethod
    def reader(cls, folder: Path) -> Store:
        """A store to read and label (its limits matter only to the handler, which writes)."""
        return cls(folder, Limits())

    def sampled(self) -> bool:
        return self.draw() < self.limits.fraction

    def keep(self, capture: Capture, data: bytes) -> bool:
        """Write one capture (and prune in a thread, at most every PRUNE_S, also when the write
        failed: a full disk is what pruning frees); False, with nothing of it left behind, when
        the disk refuses it."""
        image, record = self._paths(capture.id)
        data = without_location(data)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write(image, data, capture.time)  # its time is the capture's: the index reads it
            _write(record, json.dumps(asdict(capture) | {"size": len(data)}).encode())
            kept = True
        except OSError:
            image.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            kept = False
        if time.monotonic() >= self.next_prune and not (self.pruner and self.pruner.is_alive()):
            self.next_prune = time.monotonic() + PRUNE_S  # off the request's path: a scan of a
            self.pruner = threading.Thread(target=self.prune, daemon=True)  # big folder is slow
            self.pruner.start()
        return kept

    def _paths(self, capture_id: str) -> tuple[Path, Path]:
        if not valid_id(capture_id):
            raise ValueError(f"{capture_id!r} is not a capture id (32 hex digits)")
        return self.folder / f"{capture_id}.img", self.folder / f"{capture_id}.json"

    def get(self, capture_id: str) -> Capture | None:
        """The capture `capture_id`, or None (unknown, removed, or not an id at all)."""
        if not valid_id(capture_id):
            return None
        try:
            return Capture(**json.loads(self._paths(capture_id)[1].read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def captures(self) -> list[Capture]:
        """Every complete capture, oldest first (reads every record: for small stores and tests;
        `index` and `labelled` are what the server's paths use)."""
        found = (self.get(entry.id) for entry in self.index())
        return [c for c in found if c is not None]

    def index(self) -> list[Entry]:
        """Every complete capture, oldest first, from one listing of the folder (no record read)."""
        images, records, labels = self._listing()
        entries = []
        for capture_id in records & images.keys():
            try:
                stat = images[capture_id].stat()
            except OSError:  # removed since the listing
                continue
            entries.append(Entry(capture_id, stat.st_size, stat.st_mtime, capture_id in labels))
        return sorted(entries, key=lambda e: e.time)

    def _listing(self) -> tuple[dict[str, os.DirEntry[str]], set[str], set[str]]:
        """(id -> image entry, ids with a record, ids with a label) of the folder."""
        images, records, labels = {}, set(), set()
        try:
            listing = os.scandir(self.folder)
        except FileNotFoundError:
            return images, records, labels
        with listing:
            for entry in listing:
                stem, _, kind = entry.name.partition(".")
                if not valid_id(stem):
                    continue
                if kind == "img":
                    images[stem] = entry
                elif kind == "json":
                    records.add(stem)
                elif kind == "label.json":
                    labels.add(stem)
        return images, records, labels

    def labelled(self) -> list[tuple[Capture, Feedback]]:
        """Every labelled capture with its label, oldest capture first (reads only those)."""
        found = []
        for entry in self.index():
            if entry.labelled:
                answer, given = self.get(entry.id), self.feedback(entry.id)
                if answer is not None and given is not None:
                    found.append((answer, given))
        return found

    def label_bytes(self) -> int:
        """The bytes of the labelled photos: what `max_label_bytes` bounds."""
        images, records, labels = self._listing()
        total = 0
        for capture_id in labels & records & images.keys():
            with contextlib.suppress(OSError):  # removed since the listing
                total += images[capture_id].stat().st_size
        return total

    def image(self, capture_id: str) -> bytes:
        return self._paths(capture_id)[0].read_bytes()

    def feedback(self, capture_id: str) -> Feedback | None:
        try:
            return Feedback(**json.loads(self._label_path(capture_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def set_feedback(self, capture_id: str, feedback: Feedback) -> Feedback | None:
        """Record `feedback` for a capture (the later label stands, its giver's vote joins the
        others'); the one it replaced. Gone
        when the capture was removed meanwhile, LabelStoreFull when a first label of a capture
        would take the labelled photos past `max_label_bytes`."""
        image, record = self._paths(capture_id)
        with self._locked():
            if not record.exists():
                raise Gone(capture_id)
            before = self.feedback(capture_id)
            if before is None:
                size = image.stat().st_size
                if self.label_bytes() + size > self.limits.max_label_bytes:
                    raise LabelStoreFull(
                        f"labelled photos would exceed {self.limits.max_label_bytes} bytes: "
                        "raise capture_label_max_mb (config.properties), or let the oldest "
                        "labels expire with their photos (capture_max_age_days)"
                    )
            votes = (before.votes if before else {}) | {feedback.giver: feedback.label}
            recorded = asdict(feedback) | {"votes": votes}
            _write(self._label_path(capture_id), json.dumps(recorded).encode())
        return before

    def _label_path(self, capture_id: str) -> Path:
        return self._paths(capture_id)[0].with_suffix(".label.json")

    def _review_path(self, capture_id: str) -> Path:
        return self._paths(capture_id)[0].with_suffix(".review.json")

    def review(self, capture_id: str) -> Review | None:
        try:
            return Review(**json.loads(self._review_path(capture_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def set_review(self, capture_id: str, review: Review) -> None:
        """Record a reviewer's decision (the later one stands); Gone when the capture is gone."""
        with self._locked():
            if not self._paths(capture_id)[1].exists():
                raise Gone(capture_id)
            _write(self._review_path(capture_id), json.dumps(asdict(review)).encode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Labelling and removing exclude each other across processes (an flock)."""
        try:
            handle = open(self.folder / ".lock", "a")  # noqa: SIM115 - held across the yield
        except OSError:  # a folder so full it refuses an empty file: removing must still work
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def prune(self, now: float | None = None) -> int:
        """Remove captures past `max_age_s`, then the oldest unlabelled ones until those fit
        `max_bytes`, and images a crash left without their record; the number of captures
        removed. Labelled captures are never removed for room."""
        now = time.time() if now is None else now
        entries = self.index()
        expired = [e for e in entries if now - e.time > self.limits.max_age_s]
        unlabelled = [
            e for e in entries if not e.labelled and now - e.time <= self.limits.max_age_s
        ]
        total = sum(e.size for e in unlabelled)
        for entry in unlabelled:
            if total <= self.limits.max_bytes:
                break
            total -= entry.size
            expired.append(entry)
        removed = 0
        with self._locked():
            for entry in expired:
                aged = now - entry.time > self.limits.max_age_s
                if aged or not self._label_path(entry.id).exists():  # labelled since the listing
                    self._remove(entry.id)
                    removed += 1
        images, records, _ = self._listing()
        for capture_id, image in images.items():
            try:
                orphan = capture_id not in records and now - image.stat().st_mtime > ORPHAN_S
            except OSError:
                continue
            if orphan:
                Path(image.path).unlink(missing_ok=True)
        return removed

    def _remove(self, capture_id: str) -> None:
        image, record = self._paths(capture_id)
        record.unlink(missing_ok=True)  # first: what is left is an orphan image, pruned later
        image.unlink(missing_ok=True)
        self._label_path(capture_id).unlink(missing_ok=True)
        self._review_path(capture_id).unlink(missing_ok=True)


def limits(values: dict[str, Any]) -> Limits:
    """The Limits of config.properties' capture_* values."""
    return Limits(
        fraction=float(values.get("capture_fraction", 0)),
        max_bytes=int(float(values.get("capture_max_mb", 1000)) * 1_000_000),
        max_age_s=float(values.get("capture_max_age_days", 30)) * 86400,
        max_label_bytes=int(float(values.get("capture_label_max_mb", 1000)) * 1_000_000),
    )


def settings(values: dict[str, Any], folder: Path) -> str:
    """The ENV value for TorchServe's workers, from config.properties' capture_* values."""
    return json.dumps({"folder": str(folder), **asdict(limits(values))})
