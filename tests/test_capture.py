"""The capture store keeps a sample of answers within its bounds, and a refused write costs only the
capture."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from catsdogs_pl import capture
from catsdogs_pl.capture import Capture, Feedback, Limits, Store


def _capture(when: float = 0.0, label: str = "cat") -> Capture:
    return Capture(uuid.uuid4().hex, "3", label, {"cat": 0.9, "dog": 0.1}, when or time.time())


def _store(folder: Path, **limits: float) -> Store:
    """A store that prunes only when the test says so."""
    store = Store(folder, Limits(fraction=1.0, **limits))
    store.next_prune = float("inf")
    return store


def test_the_fraction_of_answers_is_sampled(tmp_path: Path) -> None:
    draws = random.Random(0)
    store = Store(tmp_path, Limits(fraction=0.25), draw=draws.random)
    kept = sum(store.sampled() for _ in range(10_000))
    assert 2300 < kept < 2700
    assert not any(Store(tmp_path, Limits(fraction=0.0)).sampled() for _ in range(1000))


def test_a_capture_reads_back_whole(tmp_path: Path) -> None:
    store = Store(tmp_path, Limits(fraction=1.0))
    answer = _capture()
    assert store.keep(answer, b"\xff\xd8 jpeg bytes")
    assert store.get(answer.id) == Capture(**{**answer.__dict__, "size": 13})
    assert store.image(answer.id) == b"\xff\xd8 jpeg bytes"
    assert [c.id for c in store.captures()] == [answer.id]
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_and_malformed_ids_are_none(tmp_path: Path) -> None:
    store = Store(tmp_path, Limits(fraction=1.0))
    assert store.get(uuid.uuid4().hex) is None
    assert store.get("../../etc/passwd") is None
    with pytest.raises(ValueError, match="is not a capture id"):
        store.image("../x")


def test_the_oldest_go_first_past_the_size_bound(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=2500)
    now = time.time()
    answers = [_capture(now - 100 + i) for i in range(5)]
    for answer in answers:
        store.keep(answer, b"x" * 1000)
    store.prune(now)
    assert [c.id for c in store.captures()] == [a.id for a in answers[-2:]]
    assert len(list(tmp_path.glob("*.img"))) == 2


def test_captures_past_the_age_bound_go(tmp_path: Path) -> None:
    store = _store(tmp_path, max_age_s=3600)
    now = time.time()
    old, new = _capture(now - 7200), _capture(now - 60)
    for answer in (old, new):
        store.keep(answer, b"x")
    store.set_feedback(old.id, Feedback("dog"))
    assert store.prune(now) == 1
    assert [c.id for c in store.captures()] == [new.id]
    assert not list(tmp_path.glob(f"{old.id}*"))


def test_a_write_prunes_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "PRUNE_S", 0.0)
    store = Store(tmp_path, Limits(fraction=1.0, max_bytes=1500))
    for _ in range(3):
        store.keep(_capture(), b"x" * 1000)
        assert store.pruner is not None
        store.pruner.join()
    assert len(store.captures()) == 1


def test_a_full_disk_costs_the_capture_not_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path, Limits(fraction=1.0))
    real = Path.write_bytes

    def full(path: Path, data: bytes) -> int:
        if path.name.startswith(".") and ".json." in path.name:  # the record, after the image
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert store.keep(_capture(), b"image") is False
    if store.pruner is not None:  # a refused write still prunes: that is what frees a disk
        store.pruner.join()
    left = [p.name for p in tmp_path.iterdir() if p.name != ".lock"]  # the store's own lock
    assert left == []  # neither the image nor a temporary file stays


def test_a_full_disk_still_prunes_what_would_free_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path, Limits(fraction=1.0, max_bytes=1500))
    store.next_prune = float("inf")
    for _ in range(3):  # over the bound: the disk filled before the next prune
        store.keep(_capture(), b"x" * 1000)
    monkeypatch.setattr(capture, "PRUNE_S", 0.0)
    store.next_prune = 0.0

    def full(path: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    assert store.keep(_capture(), b"image") is False
    assert store.pruner is not None
    store.pruner.join()
    assert len(store.index()) == 1  # the prune ran all the same, and freed the disk


def test_an_image_a_crash_left_without_its_record_is_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path, Limits(fraction=1.0))
    orphan = tmp_path / f"{uuid.uuid4().hex}.img"
    orphan.write_bytes(b"x")
    os.utime(orphan, (time.time() - 600, time.time() - 600))
    fresh = tmp_path / f"{uuid.uuid4().hex}.img"  # perhaps still being written: it stays
    fresh.write_bytes(b"x")
    store.prune()
    assert not orphan.exists() and fresh.exists()


def test_the_later_label_stands(tmp_path: Path) -> None:
    store = Store(tmp_path, Limits(fraction=1.0))
    answer = _capture()
    store.keep(answer, b"x")
    assert store.set_feedback(answer.id, Feedback("dog", 1.0, "ann")) is None
    assert store.set_feedback(answer.id, Feedback("cat", 2.0, "ann")).label == "dog"
    assert store.set_feedback(answer.id, Feedback("dog", 3.0, "bob")).label == "cat"
    assert store.feedback(answer.id) == Feedback("dog", 3.0, "bob", {"ann": "cat", "bob": "dog"})


def test_serve_settings_reach_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"capture_fraction": "0.5", "capture_max_mb": "2", "capture_max_age_days": "1"}
    monkeypatch.setenv(capture.ENV, capture.settings(values, tmp_path))
    store = Store.from_env()
    assert store is not None and store.folder == tmp_path
    assert store.limits == Limits(0.5, 2_000_000, 86400.0, 1_000_000_000)
    monkeypatch.setenv(capture.ENV, capture.settings({"capture_fraction": "0"}, tmp_path))
    assert Store.from_env() is None  # off: the handler keeps nothing
    with pytest.raises(ValueError, match="capture fraction 2.0: use a number from 0 to 1"):
        capture.settings({"capture_fraction": "2"}, tmp_path)
    assert json.loads(capture.settings({}, tmp_path))["fraction"] == 0.0


def test_labelled_captures_are_not_evicted_for_room(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=2500)
    now = time.time()
    answers = [_capture(now - 100 + i) for i in range(6)]
    for answer in answers:
        store.keep(answer, b"x" * 1000)
    for answer in answers[:2]:  # the oldest: what the size bound removed first
        store.set_feedback(answer.id, Feedback("dog"))
    store.prune(now)
    kept = [c.id for c in store.captures()]
    assert kept == [a.id for a in answers[:2] + answers[-2:]]  # unlabelled ones fit 2500 bytes
    assert [store.feedback(a.id) is not None for a in answers[:2]] == [True, True]


def test_past_the_label_bound_a_new_label_is_refused_not_an_old_one_lost(tmp_path: Path) -> None:
    store = _store(tmp_path, max_label_bytes=2500)
    answers = [_capture() for _ in range(3)]
    for answer in answers:
        store.keep(answer, b"x" * 1000)
    store.set_feedback(answers[0].id, Feedback("dog"))
    store.set_feedback(answers[1].id, Feedback("dog"))
    with pytest.raises(capture.LabelStoreFull, match="raise capture_label_max_mb"):
        store.set_feedback(answers[2].id, Feedback("dog"))
    store.set_feedback(answers[1].id, Feedback("cat"))  # relabelling takes no more room
    assert store.label_bytes() == 2000 and store.feedback(answers[2].id) is None


def test_a_label_for_a_capture_removed_meanwhile_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, max_age_s=3600)
    old = _capture(time.time() - 7200)
    store.keep(old, b"x")
    assert store.get(old.id) is not None
    store.prune()
    with pytest.raises(capture.Gone):
        store.set_feedback(old.id, Feedback("dog"))
    assert not list(tmp_path.glob(f"{old.id}*"))  # no label left behind without its photo


def test_pruning_reads_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path, max_bytes=1500)
    now = time.time()
    answers = [_capture(now - 10 + i) for i in range(3)]
    for answer in answers:
        store.keep(answer, b"x" * 1000)

    def refuse(*_: object) -> None:
        raise AssertionError("prune read a record: it should need only the folder's listing")

    monkeypatch.setattr(Store, "get", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    assert store.prune(now) == 2
    assert [e.id for e in store.index()] == [answers[-1].id]


def test_photos_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    store = _store(tmp_path)
    answer = _capture()
    store.keep(answer, b"x")
    store.set_feedback(answer.id, Feedback("dog"))
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob(f"{answer.id}*")}
    assert len(modes) == 3 and set(modes.values()) == {0o600}


def _jpeg_with_location(orientation: int = 6) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)})
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(out, "JPEG", exif=exif.tobytes())
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><exif:GPSLatitude>52,31.2N"
    segment = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    data = out.getvalue()
    return data[:2] + segment + data[2:]  # an XMP packet repeating the location


def test_a_captured_photo_keeps_its_pixels_and_orientation_not_its_location(
    tmp_path: Path,
) -> None:
    from PIL import Image

    sent = _jpeg_with_location()
    assert Image.open(io.BytesIO(sent)).getexif().get_ifd(0x8825)  # the upload has a location
    store = _store(tmp_path)
    answer = _capture()
    store.keep(answer, sent)
    kept = store.image(answer.id)
    exif = Image.open(io.BytesIO(kept)).getexif()
    assert exif.get_ifd(0x8825) == {} and b"GPSLatitude" not in kept
    assert exif[0x0112] == 6 and exif[0x010F] == "PhoneMaker"
    assert Image.open(io.BytesIO(kept)).tobytes() == Image.open(io.BytesIO(sent)).tobytes()
    for other in (b"not a jpeg at all", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00garbage!"):
        assert capture.without_location(other) == other  # nothing to strip, or unparsable: as is
