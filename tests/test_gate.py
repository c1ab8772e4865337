"""`deploy --gate DIR`: a version becomes the default only if, asked through the inference API, it
scores on trusted photos at least as well as the current default and fails no request.

The session registry gets two extra versions set by hand (tests/helpers/gate.py): one right on every
gate photo, one wrong on every one; they are gone again, from TorchServe and the registry, after
this module."""

from __future__ import annotations

import http.client
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import places, registry
from catsdogs_pl.errors import ConfigError, MissingError, UnreachableError, exit_code
from catsdogs_pl.serving import deploy, gate
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.gate import (
    CLASSES,
    brightness_net,
    delete_versions,
    make_gate_folder,
    register_versions,
)
from tests.helpers.ports import free_ports
from tests.helpers.serving import SessionTorchServe


def test_gate_folder_must_hold_the_models_classes(tmp_path: Path) -> None:
    with pytest.raises(MissingError, match="no such folder"):
        gate.load_photos(tmp_path / "nope", CLASSES)
    (tmp_path / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="no class folders"):
        gate.load_photos(tmp_path, CLASSES)
    for name in ("cat", "Dog"):
        (tmp_path / name).mkdir()
    with pytest.raises(ConfigError, match=r"\['Dog', 'cat'\] are not the model's classes"):
        gate.load_photos(tmp_path, CLASSES)
    (tmp_path / "Dog").rename(tmp_path / "dog")
    with pytest.raises(ConfigError, match="hold no photo"):
        gate.load_photos(tmp_path, CLASSES)


def test_gate_hash_covers_names_and_bytes(tmp_path: Path) -> None:
    folder = make_gate_folder(tmp_path / "a", per_class=2)
    (folder / "dog" / ".DS_Store").write_bytes(b"finder")  # hidden: neither scored nor hashed
    photos = gate.load_photos(folder, CLASSES)
    assert [(p.relative_to(folder).as_posix(), c) for p, c in photos][:2] == [
        ("cat/000.jpg", "cat"),
        ("cat/001.jpg", "cat"),
    ]
    assert len(photos) == 4
    first = gate.folder_sha256(folder, photos)
    copy = shutil.copytree(folder, tmp_path / "b")  # the same photos elsewhere: the same hash
    assert gate.folder_sha256(copy, gate.load_photos(copy, CLASSES)) == first
    (copy / "cat" / "001.jpg").rename(copy / "cat" / "002.jpg")
    assert gate.folder_sha256(copy, gate.load_photos(copy, CLASSES)) != first
    (folder / "dog" / "000.jpg").write_bytes(b"other bytes")
    assert gate.folder_sha256(folder, gate.load_photos(folder, CLASSES)) != first


def test_verdict_tolerance_and_failures() -> None:
    good, base = gate.Score("3", 10, correct=9), gate.Score("2", 10, correct=10)
    assert not gate.passes(good, base, 0.0) and gate.passes(good, base, 0.1)
    assert gate.passes(gate.Score("3", 10, correct=10), base, 0.0)  # equal passes
    failed = gate.Score("3", 10, correct=10, failures=["cat/1.jpg: HTTP 400"])
    assert not gate.passes(failed, None, 1.0) and gate.passes(good, None, 0.0)
    text = gate.explain(good, base, 0.0, Path("trusted"))
    assert text == (
        "accuracy 0.900 on 10 photos of trusted is under v2's 1.000 - tolerance 0.00, "
        "no request failed"
    )


def test_no_answer_from_the_server_ends_the_gate_unscored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = gate.load_photos(make_gate_folder(tmp_path / "photos", per_class=2), CLASSES)
    address = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TS_INFERENCE_ADDRESS", address)
    with pytest.raises(UnreachableError) as raised:  # the first refused connection: no waiting
        gate.score("4", photos)
    assert str(raised.value).startswith(
        f"gate: no answer to v4's requests from TorchServe's inference API at {address} ("
    )
    assert "set TS_INFERENCE_ADDRESS to where it listens. Nothing recorded" in str(raised.value)

    def lost(*_args: object, **_kwargs: object) -> tuple[int, dict[str, str]]:
        """A request sent, then the connection dropped (what a worker that dies may cause)."""
        try:
            raise http.client.RemoteDisconnected("closed without response")
        except OSError as exc:
            raise ts.TorchServeError(f"TorchServe is not answering at {address} ({exc})") from exc

    answers = iter([lost, lambda *a, **k: (200, {"label": "cat"})] + [lost] * 2)
    monkeypatch.setattr(gate, "predict", lambda *a, **k: next(answers)(*a, **k))
    result = gate.score("4", photos)  # one answer: the others are the version's failures
    assert (result.correct, len(result.failures)) == (1, 3)
    monkeypatch.setattr(gate, "predict", lost)
    with pytest.raises(UnreachableError, match=re.escape(address)):  # no answer at all
        gate.score("4", photos)


@pytest.fixture(scope="module")
def gate_setup(
    torchserve: SessionTorchServe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """(good version, bad version, gate folder): two hand-set networks as new registry versions.
    Afterwards the server serves v1 only, the deployment history is as before, and the registry
    and model store no longer have the two versions."""
    folder = make_gate_folder(tmp_path_factory.mktemp("gate") / "photos")
    with torchserve.environment():
        history = places.deployments_file()
        before = history.read_text() if history.exists() else None
        versions = register_versions(torchserve.home, [brightness_net(True), brightness_net(False)])
    try:
        yield versions[0], versions[1], folder
    finally:
        with torchserve.environment():
            torchserve.serving_only("1")  # unregisters whatever else is registered
            delete_versions(versions)
            if before is None:
                history.unlink(missing_ok=True)
            else:
                history.write_text(before)


def gated(capsys: pytest.CaptureFixture[str], version: str, folder: Path) -> tuple[int, str]:
    """`python -m catsdogs_pl.serving.deploy --model-version N --gate DIR`: (exit code, its last
    line: on stdout when it passed, else on stderr, after MLflow's download progress)."""
    code = exit_code(deploy.main, ["--model-version", version, "--gate", str(folder)])
    out = capsys.readouterr()
    return code, (out.out if code == 0 else out.err).splitlines()[-1]


def recorded(version: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(registry version tags, its run's metrics, its run's tags)."""
    client = MlflowClient(registry.resolve_tracking_uri())
    found = client.get_model_version(places.MODEL_NAME, version)
    data = client.get_run(found.run_id).data
    return found.tags, data.metrics, data.tags


def test_gate_accepts_a_version_at_least_as_good(
    served: Path,
    gate_setup: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
    report,
) -> None:
    good, _, folder = gate_setup
    code, message = gated(capsys, good, folder)
    report("gate accepts", message)
    assert code == 0, message
    assert message.startswith(f"gate passed v{good}: accuracy 1.000 on 40 photos of {folder} ")
    assert "is at least v1's" in message and "- tolerance 0.00, no request failed" in message
    assert message.endswith(f"catsdogs v{good}: registered and default now (was v1)")
    assert ts.default_version() == good
    tags, metrics, run_tags = recorded(good)
    assert tags["gate_passed"] == "true" and tags["gate_baseline_version"] == "1"
    assert tags["gate_acc"] == "1.000000" and tags["default_since"] >= tags["gate_at"]
    assert metrics == {"serving/acc": 1.0, "serving/count": 40.0, "serving/failed": 0.0}
    sha = gate.folder_sha256(folder, gate.load_photos(folder, CLASSES))
    assert run_tags["serving/gate_sha256"] == tags["gate_dir_sha256"] == sha


def test_gate_refuses_a_worse_version_and_leaves_the_server_as_it_was(
    served: Path,
    gate_setup: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
    report,
) -> None:
    good, bad, folder = gate_setup
    client = MlflowClient(registry.resolve_tracking_uri())
    if "default_since" in recorded(good)[0]:  # set by an earlier test: this deploy must set it
        client.delete_model_version_tag(places.MODEL_NAME, good, "default_since")
    assert deploy.deploy_version(version=good).endswith(
        "default now (was v1)"
    )  # a deploy without gate
    assert "default_since" in recorded(good)[0]
    before = {e["modelVersion"] for e in ts.describe("all")}
    code, message = gated(capsys, bad, folder)
    report("gate refuses", message)
    assert code == 1, message
    assert message == (
        f"gate refused v{bad}: accuracy 0.000 on 40 photos of {folder} is under v{good}'s 1.000 "
        f"- tolerance 0.00, no request failed; default stays v{good}; v{bad} unregistered again"
    )
    assert ts.default_version() == good
    assert {e["modelVersion"] for e in ts.describe("all")} == before
    assert not list(places.model_store().glob(places.mar_name(bad, "*")))  # packaged, removed
    tags, metrics, _ = recorded(bad)
    assert tags["gate_passed"] == "false" and "default_since" not in tags
    assert (tags["gate_acc"], tags["gate_baseline_acc"]) == ("0.000000", "1.000000")
    assert tags["gate_baseline_version"] == good and metrics["serving/acc"] == 0.0
    # usage errors: one line, exit 2, nothing registered
    code, message = gated(capsys, bad, folder / "missing")
    assert code == 2 and message == f"error: --gate {folder / 'missing'}: no such folder"
    assert {e["modelVersion"] for e in ts.describe("all")} == before


def test_a_failed_request_refuses_even_with_nothing_deployed(
    blank_torchserve: Path,
    gate_setup: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    report,
) -> None:
    good, _, folder = gate_setup
    photos = shutil.copytree(folder, tmp_path / "photos")
    (photos / "cat" / "notes.txt").write_text("not a photo")  # TorchServe answers 400
    code, message = gated(capsys, good, photos)
    report("gate refuses a failed request", message)
    assert code == 1, message
    assert message.startswith(
        f"gate refused v{good}: accuracy 0.976 on 41 photos of {photos} "
        f"(no current default to compare with); 1 of 41 requests to v{good} failed (first: "
        "cat/notes.txt: HTTP 400 "
    )
    assert message.endswith(f"default stays none; v{good} unregistered again")
    assert ts.describe("all") == []
    assert recorded(good)[0]["gate_baseline_version"] == "none"


def test_an_unreachable_inference_api_records_nothing(
    served: Path,
    gate_setup: tuple[str, str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only TS_MANAGEMENT_ADDRESS right (the compose trainer before issue 21): the gate cannot
    score, so it says where it asked, and neither the registry nor the server changes."""
    good, _, folder = gate_setup
    client = MlflowClient(registry.resolve_tracking_uri())
    run_id = client.get_model_version(places.MODEL_NAME, good).run_id
    before = recorded(good), len(client.get_metric_history(run_id, "serving/acc"))
    served_before = {e["modelVersion"] for e in ts.describe("all")}
    address = f"http://127.0.0.1:{free_ports(1)[0]}"
    with monkeypatch.context() as patch:
        patch.setenv("TS_INFERENCE_ADDRESS", address)
        code, message = gated(capsys, good, folder)
    assert code == 2, message
    assert message.startswith(
        f"error: gate: no answer to v{good}'s requests from TorchServe's inference API at {address}"
    )
    assert (recorded(good), len(client.get_metric_history(run_id, "serving/acc"))) == before
    assert {e["modelVersion"] for e in ts.describe("all")} == served_before  # unregistered again
    assert ts.default_version() == "1"
