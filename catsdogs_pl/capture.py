"""The capture store: a bounded sample of what the server answered, so users' labels can come back.

The handler keeps a `fraction` of its answers in `<state folder>/captures/`: `<id>.img` (the image
bytes as received) and `<id>.json` (a Capture: id, version, label, probabilities, time). Feedback
adds `<id>.label.json`. The `.json` of a capture is written last, so a capture exists once it is
complete; every file goes through a temporary file and a rename. The store is bounded by
`max_bytes` and `max_age_s`, the oldest removed first, and a disk that refuses a write costs the
capture, never the answer.

Stdlib only: every `.mar` ships it as `catsdogs_capture.py` for the handler; the feedback API and
the data export read the same folder through it.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENV = "CATSDOGS_CAPTURE"  # JSON {"folder", "fraction", "max_bytes", "max_age_s"}: serve sets it
PRUNE_S = 10.0  # a writer rescans the folder at most this often: bounds hold within it
ORPHAN_S = 60.0  # an image without its record this long is what a crash between writes left
_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: also what keeps a path inside the folder


@dataclass(frozen=True)
class Limits:
    """How much is kept: the fraction of answers sampled (0: nothing), the bytes of images and
    the age (seconds) past which the oldest captures go."""

    fraction: float = 0.0
    max_bytes: int = 1_000_000_000
    max_age_s: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"capture fraction {self.fraction}: use a number from 0 to 1")
        if self.max_bytes <= 0 or self.max_age_s <= 0:
            raise ValueError("capture max_bytes and max_age_s must be positive")


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
    """What a user said a captured photo really was, and when."""

    label: str
    time: float = field(default_factory=time.time)


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
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
        """Write one capture (and prune in a thread, at most every PRUNE_S); False, with nothing
        of it left behind, when the disk refuses it."""
        image, record = self._paths(capture.id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write(image, data)
            _write(record, json.dumps(asdict(capture) | {"size": len(data)}).encode())
        except OSError:
            image.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            return False
        if time.monotonic() >= self.next_prune and not (self.pruner and self.pruner.is_alive()):
            self.next_prune = time.monotonic() + PRUNE_S  # off the request's path: a scan of a
            self.pruner = threading.Thread(target=self.prune, daemon=True)  # big folder is slow
            self.pruner.start()
        return True

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
        """Every complete capture, oldest first."""
        answers = (p for p in self.folder.glob("*.json") if not p.name.endswith(".label.json"))
        found = (self.get(path.stem) for path in answers)
        return sorted((c for c in found if c is not None), key=lambda c: c.time)

    def image(self, capture_id: str) -> bytes:
        return self._paths(capture_id)[0].read_bytes()

    def feedback(self, capture_id: str) -> Feedback | None:
        try:
            return Feedback(**json.loads(self._label_path(capture_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def set_feedback(self, capture_id: str, feedback: Feedback) -> Feedback | None:
        """Record `feedback` for a capture (the later label stands); the one it replaced."""
        before = self.feedback(capture_id)
        _write(self._label_path(capture_id), json.dumps(asdict(feedback)).encode())
        return before

    def _label_path(self, capture_id: str) -> Path:
        return self._paths(capture_id)[0].with_suffix(".label.json")

    def prune(self, now: float | None = None) -> int:
        """Remove captures past `max_age_s`, then the oldest until the images fit `max_bytes`,
        and images a crash left without their record; the number of captures removed."""
        now = time.time() if now is None else now
        kept = self.captures()
        expired = [c for c in kept if now - c.time > self.limits.max_age_s]
        kept = kept[len(expired) :] if expired else kept
        total = sum(c.size for c in kept)
        while kept and total > self.limits.max_bytes:
            total -= kept[0].size
            expired.append(kept.pop(0))
        for capture in expired:
            self._remove(capture.id)
        recorded = {c.id for c in kept}
        for image in self.folder.glob("*.img"):
            try:
                orphan = image.stem not in recorded and now - image.stat().st_mtime > ORPHAN_S
            except OSError:
                continue
            if orphan:
                image.unlink(missing_ok=True)
        return len(expired)

    def _remove(self, capture_id: str) -> None:
        image, record = self._paths(capture_id)
        record.unlink(missing_ok=True)  # first: what is left is an orphan image, pruned later
        image.unlink(missing_ok=True)
        self._label_path(capture_id).unlink(missing_ok=True)


def settings(values: dict[str, Any], folder: Path) -> str:
    """The ENV value for TorchServe's workers, from config.properties' capture_* values."""
    limits = Limits(
        fraction=float(values.get("capture_fraction", 0)),
        max_bytes=int(float(values.get("capture_max_mb", 1000)) * 1_000_000),
        max_age_s=float(values.get("capture_max_age_days", 30)) * 86400,
    )
    return json.dumps({"folder": str(folder), **asdict(limits)})
