"""Users' labels come in on the monitor's port and from CSV files: each bad case gets its own answer,
and only captured answers can be labelled."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catsdogs_pl import places, prometheus
from catsdogs_pl.capture import Capture, Feedback, Limits, Store
from catsdogs_pl.data import feedback as data_feedback
from catsdogs_pl.data.prepare import Settings, prepare, read_manifest
from catsdogs_pl.errors import ConfigError
from catsdogs_pl.monitoring import feedback, labellers
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.images import image_bytes, make_class_folders
from tests.helpers.ports import free_ports

KEY = "k" * 32
INFERENCE_KEY = "i" * 32


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The state folder's capture store with two answers, TorchServe's key file (the inference
    key, which does not label) and the labeller alice, whose key is KEY."""
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    (tmp_path / ts.KEY_FILE).write_text(json.dumps({"inference": {"key": INFERENCE_KEY}}))
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    (tmp_path / labellers.FILE).write_text(json.dumps({digest: "alice"}))
    found = Store(places.captures(), Limits(fraction=1.0))
    found.next_prune = float("inf")  # no background prune: the tests say when the store prunes
    for label in ("cat", "dog"):
        answer = Capture(uuid.uuid4().hex, "2", label, {"cat": 0.8, "dog": 0.2}, time.time())
        found.keep(answer, b"image")
    return found


@pytest.fixture
def post(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """POST to /feedback of a monitor port on a free port: (status, answer)."""
    port = free_ports(1)[0]
    monkeypatch.setenv("TS_MONITOR_ADDRESS", f"http://127.0.0.1:{port}")
    route = feedback.route(None, rate=0.001, burst=20)
    server = prometheus.expose("monitor", lambda: "", {"/feedback": route})

    def send(body: Any, key: str | None = KEY, raw: bytes | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request("POST", "/feedback", raw if raw is not None else json.dumps(body), headers)
        response = conn.getresponse()
        answer = (response.status, json.loads(response.read()))
        conn.close()
        return answer

    yield send
    server.shutdown()


def test_a_label_is_recorded_and_the_later_one_stands(store: Store, post: Any) -> None:
    first = store.captures()[0]
    assert post({"id": first.id, "label": "dog"}) == (
        200,
        {
            "id": first.id,
            "label": "dog",
            "answered": first.label,
            "replaced": None,
            "giver": "alice",
        },
    )
    status, answer = post({"id": first.id, "label": "cat"})
    assert (status, answer["replaced"]) == (200, "dog")
    assert store.feedback(first.id).label == "cat"


@pytest.mark.parametrize(
    ("body", "key", "status", "says"),
    [
        ({"id": uuid.uuid4().hex, "label": "cat"}, KEY, 404, "no captured answer"),
        ({"id": "../../etc", "label": "cat"}, KEY, 404, "no captured answer"),
        ("first", KEY, 400, "use one of cat, dog"),  # "first": the first capture's id
        ({"label": "cat"}, KEY, 400, 'send a JSON object {"id"'),
        ("first-no-label", KEY, 400, 'the "label" must be a class name'),
        ({"id": "x", "label": "cat"}, None, 401, "send a labeller's key"),
        ({"id": "x", "label": "cat"}, "wrong", 401, "send a labeller's key"),
        ({"id": "x", "label": "cat"}, INFERENCE_KEY, 401, "the inference key is not one"),
    ],
)
def test_bad_feedback_is_refused_naming_why(
    store: Store, post: Any, body: Any, key: str | None, status: int, says: str
) -> None:
    first = store.captures()[0].id
    if isinstance(body, str):  # a case about the first capture, whose id the fixture chose
        body = {"first": {"id": first, "label": "horse"}, "first-no-label": {"id": first}}[body]
    got, answer = post(body, key)
    assert got == status and says in answer["error"]
    assert store.feedback(first) is None


def test_a_full_label_store_refuses_the_new_label_and_keeps_the_old(
    store: Store, post: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TS_CAPTURE_LABEL_MAX_MB", "0.000005")  # one 5-byte photo
    first, second = (c.id for c in store.captures())
    assert post({"id": first, "label": "dog"})[0] == 200
    status, answer = post({"id": second, "label": "dog"})
    assert status == 507 and "raise capture_label_max_mb" in answer["error"]
    assert store.feedback(first).label == "dog" and store.feedback(second) is None


def test_an_oversized_or_malformed_body_is_refused(post: Any) -> None:
    status, answer = post(None, raw=b"{" * (prometheus.MAX_BODY + 1))
    assert status == 413 and str(prometheus.MAX_BODY) in answer["error"]
    assert post(None, raw=b"not json")[0] == 400


def test_a_flood_is_bounded(store: Store, post: Any) -> None:
    first = store.captures()[0].id
    codes = [post({"id": first, "label": "cat"})[0] for _ in range(30)]
    assert codes[:20] == [200] * 20 and set(codes[20:]) == {429}


def test_a_csv_file_says_what_it_accepted_and_refused(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat, dog = store.captures()
    rows = f"id,label\n{cat.id},dog\n{dog.id},dog\n{uuid.uuid4().hex},cat\n{cat.id},horse\nx\n"
    (tmp_path / "labels.csv").write_text(rows)
    assert feedback.main(["add", str(tmp_path / "labels.csv")]) == 1
    out = capsys.readouterr().out
    assert "2 labels recorded, 3 refused" in out
    assert "line 4: no captured answer" in out and "line 5: label 'horse'" in out
    assert "line 6: 1 cells, expected id,label" in out
    assert store.feedback(cat.id).label == "dog" and store.feedback(dog.id).label == "dog"


def test_labelled_accuracy_per_version_over_the_window(tmp_path: Path) -> None:
    found = Store(tmp_path, Limits(fraction=1.0))
    found.next_prune = float("inf")
    now = time.time()
    answers = [  # (version, answered, the user's label, captured and labelled seconds ago)
        ("2", "cat", "cat", 10, 5),
        ("2", "dog", "cat", 7200, 20),  # captured long ago, labelled late: it counts now
        ("2", "dog", "dog", 7200, 7000),  # labelled outside a one-hour window
        ("3", "cat", "cat", 30, 10),
        ("3", "dog", None, 40, 0),  # never labelled
    ]
    for version, answered, given, ago, labelled_ago in answers:
        answer = Capture(uuid.uuid4().hex, version, answered, {"cat": 0.5, "dog": 0.5}, now - ago)
        found.keep(answer, b"x")
        if given:
            found.set_feedback(answer.id, Feedback(given, now - labelled_ago))
    recent = feedback.tally(found, now - 3600)
    assert {v: (t.labelled, t.correct) for v, t in recent.items()} == {"2": (2, 1), "3": (1, 1)}
    everything = feedback.tally(found)
    assert (everything["2"].labelled, everything["2"].correct) == (3, 2)
    text = feedback.gauges(recent)
    assert 'catsdogs_labelled_accuracy{model_version="2"} 0.5' in text
    assert 'catsdogs_labelled_answers{model_version="3"} 1' in text
    assert "labelled answers of v2: 1/2 right, accuracy 0.500" in feedback.report(recent)


def test_labels_become_the_next_dataset_and_conflicts_are_flagged(
    class_folders: Path, tmp_path: Path
) -> None:
    settings = Settings(image_size=32, val_fraction=0.2, test_fraction=0.2)
    first = prepare(class_folders, tmp_path / "v1", settings, workers=2, progress=False)
    before = {r.sha256: r.split for r in read_manifest(tmp_path / "v1" / "manifest.csv")}
    found = Store(tmp_path / "captures", Limits(fraction=1.0))
    found.next_prune = float("inf")
    uploads = {  # what the user said, what the server answered with which confidence, the bytes
        "new": ("cat", "cat", 0.6, image_bytes(77, (64, 48))),
        "relabelled": ("dog", "cat", 0.55, image_bytes(78, (64, 48))),
        "conflict": ("dog", "cat", 0.97, image_bytes(79, (64, 48))),
        "known": ("cat", "cat", 0.99, (class_folders / "Cat" / "3.jpg").read_bytes()),
    }
    ids = {}
    for name, (given, answered, p, data) in uploads.items():
        probabilities = {answered: p, ({"cat", "dog"} - {answered}).pop(): 1 - p}
        answer = Capture(uuid.uuid4().hex, "1", answered, probabilities, time.time())
        found.keep(answer, data)
        feedback.give(found, answer.id, "cat" if name == "relabelled" else given, "alice")
        ids[name] = answer.id
    found.keep(Capture(uuid.uuid4().hex, "1", "dog", {"dog": 1.0, "cat": 0.0}, 1.0), b"x")
    assert data_feedback.export(found, tmp_path / "labels", 1.0).labels == {"cat": 3, "dog": 1}
    feedback.give(
        found, ids["relabelled"], "dog", "alice"
    )  # the later label stands, and moves the photo
    assert data_feedback.export(found, tmp_path / "labels", 1.0).labels == {"cat": 2, "dog": 2}
    assert not (tmp_path / "labels" / "cat" / f"{ids['relabelled']}.jpg").exists()
    second = prepare(
        class_folders,
        tmp_path / "v2",
        settings,
        workers=2,
        progress=False,
        added=[tmp_path / "labels"],
    )
    rows = {r.relpath: r for r in read_manifest(tmp_path / "v2" / "manifest.csv")}
    assert all(before[r.sha256] == r.split for r in rows.values() if r.sha256 in before and r.split)
    assert rows[f"+1/cat/{ids['new']}.jpg"].status == "kept"
    assert rows[f"+1/dog/{ids['relabelled']}.jpg"].status == "kept"
    flagged = rows[f"+1/dog/{ids['conflict']}.jpg"]
    assert (flagged.status, flagged.reason) == ("rejected", "feedback_conflict")
    assert "v1 answered cat with 0.97" in flagged.detail
    assert rows[f"+1/cat/{ids['known']}.jpg"].reason == "duplicate"
    assert second.kept == first.kept + 2
    assert second.dataset_version != first.dataset_version
    assert str(tmp_path / "labels") in second.source


def test_the_client_waits_out_a_429(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_ports(1)[0]
    monkeypatch.setenv("TS_MONITOR_ADDRESS", f"http://127.0.0.1:{port}")
    route = feedback.route(None, rate=20.0, burst=1)
    server = prometheus.expose("monitor", lambda: "", {"/feedback": route})
    try:
        first = store.captures()[0].id
        assert [feedback.send(first, "dog", KEY)[0] for _ in range(3)] == [200, 200, 200]
        assert feedback.send(first, "dog", KEY, tries=1)[0] == 429  # no wait: the bucket is empty
    finally:
        server.shutdown()


def _labelled(tmp_path: Path, n: int) -> tuple[Store, list[str]]:
    """A capture store holding `n` answers, each labelled by a user."""
    found = Store(tmp_path / "captures", Limits(fraction=1.0))
    found.next_prune = float("inf")
    ids = []
    for k in range(n):
        answer = Capture(uuid.uuid4().hex, "1", "cat", {"cat": 0.6, "dog": 0.4}, time.time() + k)
        found.keep(answer, image_bytes(90 + k, (40, 40)))
        feedback.give(found, answer.id, "dog" if k % 2 else "cat", "alice")
        ids.append(answer.id)
    return found, ids


def test_an_export_is_a_snapshot_of_the_labels_still_stored(tmp_path: Path) -> None:
    found, ids = _labelled(tmp_path, 3)
    out = tmp_path / "labels"
    assert data_feedback.export(found, out, 1.0).labels == {"cat": 2, "dog": 1}
    found._remove(ids[0])  # its capture pruned: the next export no longer has it
    assert data_feedback.export(found, out, 1.0).labels == {"cat": 1, "dog": 1}
    images = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.jpg"))
    assert images == sorted([f"dog/{ids[1]}.jpg", f"cat/{ids[2]}.jpg"])
    assert data_feedback.conflicts(out) == {}  # the list matches its images
    assert not list(tmp_path.glob(".labels.*"))  # nothing left beside it
    reviewed = tmp_path / "reviewed" / "dog"
    reviewed.mkdir(parents=True)
    (out / "dog" / f"{ids[1]}.jpg").rename(reviewed / f"{ids[1]}.jpg")  # a reviewer moved it
    assert data_feedback.conflicts(out) == {}


def test_an_interrupted_export_leaves_the_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found, ids = _labelled(tmp_path, 3)
    out = tmp_path / "labels"
    data_feedback.export(found, out, 1.0)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    feedback.give(found, ids[0], "dog", "alice")

    read = found.image

    def dies(capture_id: str) -> bytes:
        if capture_id != ids[0]:  # the relabelled photo written, then the export stopped
            raise KeyboardInterrupt
        return read(capture_id)

    monkeypatch.setattr(found, "image", dies)
    with pytest.raises(KeyboardInterrupt):
        data_feedback.export(found, out, 1.0)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert data_feedback.conflicts(out) == {}


def test_export_never_replaces_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    found, _ = _labelled(tmp_path, 1)
    source = tmp_path / "photos"
    (source / "cat").mkdir(parents=True)
    (source / "cat" / "1.jpg").write_bytes(b"a user's photo")
    with pytest.raises(ConfigError, match="not a feedback export"):
        data_feedback.export(found, source, 1.0)
    assert (source / "cat" / "1.jpg").read_bytes() == b"a user's photo"


def _break_cut(out: Path) -> str:
    text = (out / data_feedback.LIST).read_text()
    (out / data_feedback.LIST).write_text(text[: text.rindex(",")])  # the last row cut short
    return "is cut short"


def _break_empty(out: Path) -> str:
    (out / data_feedback.LIST).write_text("")
    return "lacks the columns"


def _break_unlisted(out: Path) -> str:
    (out / "cat" / "stray.jpg").write_bytes(b"an image nobody listed")
    return "does not list"


def _break_changed(out: Path) -> str:
    next(out.glob("dog/*.jpg")).write_bytes(b"other bytes")
    return "not the image its list names"


@pytest.mark.parametrize("damage", [_break_cut, _break_empty, _break_unlisted, _break_changed])
def test_prepare_refuses_an_export_whose_list_does_not_match(
    class_folders: Path, tmp_path: Path, damage: Any
) -> None:
    found, _ = _labelled(tmp_path, 3)
    out = tmp_path / "labels"
    data_feedback.export(found, out, 1.0)
    message = damage(out)
    settings = Settings(image_size=32, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(ConfigError, match=message) as refused:
        prepare(class_folders, tmp_path / "v2", settings, workers=1, progress=False, added=[out])
    assert "feedback-export --out" in str(refused.value)  # it says how to fix it
    assert not (tmp_path / "v2" / "manifest.csv").exists()


def test_a_users_copy_labelled_the_other_class_never_rejects_the_source_photo(
    class_folders: Path, tmp_path: Path
) -> None:
    settings = Settings(image_size=32, val_fraction=0.2, test_fraction=0.2)
    first = prepare(class_folders, tmp_path / "v1", settings, workers=1, progress=False)
    before = {r.relpath: r for r in read_manifest(tmp_path / "v1" / "manifest.csv")}
    forged = tmp_path / "forged"
    (forged / "dog").mkdir(parents=True)
    (forged / "dog" / "copy.jpg").write_bytes((class_folders / "Cat" / "3.jpg").read_bytes())
    second = prepare(
        class_folders, tmp_path / "v2", settings, workers=1, progress=False, added=[forged]
    )
    rows = {r.relpath: r for r in read_manifest(tmp_path / "v2" / "manifest.csv")}
    source = rows["Cat/3.jpg"]
    assert (source.status, source.split) == ("kept", before["Cat/3.jpg"].split)
    copy = rows["+1/dog/copy.jpg"]
    assert (copy.status, copy.reason) == ("rejected", "label_conflict")
    assert "the source's label stands" in copy.detail
    assert second.kept == first.kept


def test_users_labels_join_the_training_split_only(class_folders: Path, tmp_path: Path) -> None:
    settings = Settings(image_size=32, val_fraction=0.3, test_fraction=0.3)
    labels = make_class_folders(
        tmp_path / "labels", per_class=20, classes=("cat", "dog"), start=1000
    )
    first = prepare(class_folders, tmp_path / "v1", settings, workers=1, progress=False)
    second = prepare(
        class_folders, tmp_path / "v2", settings, workers=1, progress=False, added=[labels]
    )
    rows = [r for r in read_manifest(tmp_path / "v2" / "manifest.csv") if r.status == "kept"]
    assert {r.split for r in rows if r.relpath.startswith("+1/")} == {"train"}
    assert len([r for r in rows if r.relpath.startswith("+1/")]) == 40
    for split in ("val", "test"):  # the source's held-out photos, untouched
        assert second.splits[split] == first.splits[split]
    assert second.splits["train"]["total"] == first.splits["train"]["total"] + 40


def test_a_label_needs_a_labellers_key_even_with_token_auth_off(
    store: Store, post: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TS_DISABLE_TOKEN_AUTHORIZATION", "true")  # the Kubernetes overlays
    first = store.captures()[0].id
    assert post({"id": first, "label": "dog"}, key=None)[0] == 401
    assert post({"id": first, "label": "dog"}, key=INFERENCE_KEY)[0] == 401
    assert store.feedback(first) is None
    assert post({"id": first, "label": "dog"})[0] == 200
    assert store.feedback(first).giver == "alice"  # who gave it, recorded with it


def test_each_giver_has_a_rate_bound_of_its_own(store: Store, post: Any) -> None:
    bob = labellers.add("bob")
    first = store.captures()[0].id
    codes = [post({"id": first, "label": "cat"})[0] for _ in range(25)]
    assert codes[:20] == [200] * 20 and set(codes[20:]) == {429}
    assert post({"id": first, "label": "dog"}, key=bob)[0] == 200
    assert store.feedback(first).votes == {"alice": "cat", "bob": "dog"}


def test_labeller_keys_are_kept_hashed_and_can_be_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    key = labellers.add("carol")
    assert labellers.giver({"Authorization": f"Bearer {key}"}) == "carol"
    assert key not in labellers.path().read_text()
    assert labellers.path().stat().st_mode & 0o777 == 0o600
    renewed = labellers.add("carol")  # a new key replaces the old one
    assert labellers.giver({"Authorization": f"Bearer {key}"}) is None
    assert (
        labellers.remove("carol")
        and labellers.giver({"Authorization": f"Bearer {renewed}"}) is None
    )
    with pytest.raises(ConfigError, match="labeller name"):
        labellers.add("a,b")


@pytest.mark.parametrize(
    ("given", "share", "most"),
    [
        ({"a": 5}, 1.0, 5),  # one labeller, allowed all of the export
        ({"a": 5}, 0.1, 0),  # one labeller can never be 10 % or less of an export
        ({"flood": 1000, "a": 10, "b": 10, "c": 10}, 0.1, 0),  # 4 givers: each is >= 25 %
        ({"flood": 1000, **{f"g{k}": 10 for k in range(10)}}, 0.1, 11),  # 11 <= 0.1 * 111
        ({f"g{k}": 4 for k in range(20)}, 0.1, 4),  # many small givers: all of it
    ],
)
def test_the_cap_holds_each_giver_to_its_share(given: dict, share: float, most: int) -> None:
    assert data_feedback.cap(given, share) == most
    kept = {g: min(n, most) for g, n in given.items()}
    assert all(n <= share * sum(kept.values()) + 1e-9 for n in kept.values())


def test_givers_who_disagree_send_the_photo_to_review(tmp_path: Path) -> None:
    found = Store(tmp_path / "captures", Limits(fraction=1.0))
    answer = Capture(uuid.uuid4().hex, "1", "cat", {"cat": 0.6, "dog": 0.4}, time.time())
    found.keep(answer, image_bytes(5, (40, 40)))
    feedback.give(found, answer.id, "cat", "ann")
    feedback.give(found, answer.id, "dog", "bob")  # the later label stands, but not alone
    out = tmp_path / "labels"
    data_feedback.export(found, out, 1.0)
    assert data_feedback.conflicts(out) == {
        f"dog/{answer.id}.jpg": "givers disagree (ann: cat, bob: dog): look at the photo and "
        f"decide: python -m catsdogs_pl.feedback review {answer.id} keep|drop|LABEL"
    }


def test_a_review_decision_sticks_through_every_later_export(tmp_path: Path) -> None:
    found = Store(tmp_path / "captures", Limits(fraction=1.0))
    ids = []
    for k in range(3):  # each labelled dog against a confident cat: all three flagged
        answer = Capture(uuid.uuid4().hex, "1", "cat", {"cat": 0.97, "dog": 0.03}, time.time())
        found.keep(answer, image_bytes(300 + k, (40, 40)))
        feedback.give(found, answer.id, "dog", "ann")
        ids.append(answer.id)
    out = tmp_path / "labels"
    data_feedback.export(found, out, 1.0)
    assert len(data_feedback.conflicts(out)) == 3
    decisions = zip(ids, ("keep", "drop", "cat"), strict=True)
    decided = [feedback.review(found, i, d, "rev") for i, d in decisions]
    assert (
        "trains as dog" in decided[0] and "dropped" in decided[1] and "trains as cat" in decided[2]
    )
    for _ in range(2):  # a later export, and the one after it: nothing comes back
        summary = data_feedback.export(found, out, 1.0)
        assert data_feedback.conflicts(out) == {}
        files = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.jpg"))
        assert files == sorted([f"dog/{ids[0]}.jpg", f"cat/{ids[2]}.jpg"])
        assert (summary.reviewed, summary.dropped) == (2, 1)
    with pytest.raises(ConfigError, match="use keep, drop or one of"):
        feedback.review(found, ids[0], "horse", "rev")


def test_a_flood_from_one_giver_stays_within_its_share(
    class_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: Any
) -> None:
    """One key holder posts 1,000 labels against the model's answers; ten others label 10 each.
    The giver's rate bounds what is recorded, the share cap what is exported, and the gate's test
    split is the source's, untouched."""
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path / "state"))
    found = Store(places.captures(), Limits(fraction=1.0))
    found.next_prune = float("inf")
    answers = []
    for k in range(1100):
        answer = Capture(uuid.uuid4().hex, "1", "cat", {"cat": 0.95, "dog": 0.05}, time.time())
        found.keep(answer, image_bytes(2000 + k, (64, 48)))
        answers.append(answer.id)
    port = free_ports(1)[0]
    monkeypatch.setenv("TS_MONITOR_ADDRESS", f"http://127.0.0.1:{port}")
    outcomes = feedback.Outcomes()
    server = prometheus.expose("monitor", lambda: "", {"/feedback": feedback.route(None, outcomes)})
    try:
        flood = labellers.add("flood")
        start = time.monotonic()
        codes = [feedback.send(a, "dog", flood, tries=1)[0] for a in answers[:1000]]
        elapsed = time.monotonic() - start
        for k, name in enumerate(f"giver{k}" for k in range(10)):
            key = labellers.add(name)
            for a in answers[1000 + 10 * k : 1010 + 10 * k]:
                assert feedback.send(a, "cat", key)[0] == 200
    finally:
        server.shutdown()
    accepted = codes.count(200)
    assert feedback.BURST <= accepted <= feedback.BURST + feedback.RATE_PER_S * elapsed + 1
    assert f'catsdogs_feedback_total{{outcome="rate_limited"}} {1000 - accepted}' in outcomes.text()
    summary = data_feedback.export(found, tmp_path / "labels")
    others = {f"giver{k}": 10 for k in range(10)}
    assert summary.given == {"flood": accepted, **others}
    assert summary.exported == {"flood": 11, **others}  # 11 of 111: under 10 %
    settings = Settings(image_size=32, val_fraction=0.2, test_fraction=0.2)
    first = prepare(class_folders, tmp_path / "v1", settings, workers=1, progress=False)
    second = prepare(
        class_folders,
        tmp_path / "v2",
        settings,
        workers=1,
        progress=False,
        added=[tmp_path / "labels"],
    )
    assert second.splits["test"] == first.splits["test"]  # what the gate decides on
    flagged = [
        r
        for r in read_manifest(tmp_path / "v2" / "manifest.csv")
        if r.reason == "feedback_conflict"
    ]
    assert len(flagged) == 11  # the flood's labels contradict answers given with 0.95
    report(
        "feedback flood",
        {
            "posted": 1000,
            "accepted": accepted,
            "exported": summary.exported["flood"],
            "export": sum(summary.exported.values()),
            "test split unchanged": True,
        },
    )


def test_retention_holds_without_traffic(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No capture arrives, so no worker prunes: the monitor's round and `feedback prune` do."""
    old = Capture(uuid.uuid4().hex, "2", "cat", {"cat": 0.8, "dog": 0.2}, time.time() - 40 * 86400)
    store.keep(old, b"an old photo")
    store.set_feedback(old.id, Feedback("dog", giver="alice"))
    line, gauges = feedback.labels_round(feedback.default_store(), 0.0)
    assert "1 captures past their bounds removed" in line and store.get(old.id) is None
    assert 'catsdogs_captures{labelled="false"} 2' in gauges
    assert "catsdogs_label_store_bytes 0" in gauges
    store.keep(old, b"an old photo")
    assert feedback.main(["prune"]) == 0
    assert "1 captures removed; 2 kept (0 labelled)" in capsys.readouterr().out
    assert not list(store.folder.glob(f"{old.id}*"))


def test_a_folder_too_full_for_the_lock_file_still_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = Store(tmp_path, Limits(fraction=1.0, max_age_s=3600))
    found.next_prune = float("inf")  # no background prune: the one below is what is tested
    old = Capture(uuid.uuid4().hex, "2", "cat", {"cat": 0.8, "dog": 0.2}, time.time() - 7200)
    found.keep(old, b"x")
    real = open

    def full(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(".lock"):
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    assert found.prune() == 1  # the prune that frees the disk is not refused for want of it
