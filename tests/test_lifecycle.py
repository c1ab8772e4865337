"""Versions over a long life: archives that say what they hold, a bounded number of registered
versions, a deployment history that survives crashes, concurrent deploys and many pods, and the
registry tags that follow the default. The session's TorchServe (tests/conftest.py) where a
server is needed."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import errors, places, prometheus, registry
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.serving import deploy, package, serve
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import predict
from tests.helpers.images import image_bytes
from tests.helpers.serving import environment, register_exports, state_folder

java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")


def _store(tmp_path: Path, name: str, seeds: list[int]) -> MlflowSettings:
    """Another tracking store (as after a switch of MLFLOW_TRACKING_URI) with a version per seed."""
    uri = f"sqlite:///{tmp_path / name}.db"
    register_exports(uri, tmp_path / name, seeds)
    return MlflowSettings(tracking_uri=uri)


def _served_identity(version: str) -> package.Identity | None:
    (entry,) = ts.describe(version)
    return package.read_identity(places.model_store() / entry["modelUrl"])


def _cleanup_store_archives(keep: set[Path]) -> None:
    for mar in places.model_store().glob("*.mar"):
        if mar not in keep:
            mar.unlink()


# --- no server -------------------------------------------------------------------------------


def test_package_rebuilds_when_the_identity_differs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path / "home"))
    first, second = _store(tmp_path, "a", [1]), _store(tmp_path, "b", [2])
    version_a, mar_a = package.package_version("1", mlflow=first)
    version_b, mar_b = package.package_version("1", mlflow=second)
    assert version_a == version_b == "1" and mar_a != mar_b  # "v1" of two stores: two archives
    run_a = MlflowClient(first.tracking_uri).get_model_version("catsdogs", "1").run_id
    run_b = MlflowClient(second.tracking_uri).get_model_version("catsdogs", "1").run_id
    identity_a, identity_b = package.read_identity(mar_a), package.read_identity(mar_b)
    assert (identity_a.run_id, identity_b.run_id) == (run_a, run_b)
    assert identity_a.weights_sha256 != identity_b.weights_sha256
    assert identity_a.registered_model == "catsdogs" and identity_a.version == "1"
    assert mar_a.name == places.mar_name("1", identity_a.key)
    stamp = mar_a.stat().st_mtime_ns
    assert package.package_version("1", mlflow=first)[1] == mar_a  # the same identity: reused
    assert mar_a.stat().st_mtime_ns == stamp


def _append_entries(worker: int, count: int) -> None:
    for i in range(count):
        with places.locked("deployments"):
            history = places.deployment_history()
            places.save_deployment_history([*history, f"catsdogs_v{worker}-{i}.mar"])


def test_deployment_history_concurrent_writers_lose_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    workers = [
        multiprocessing.get_context("fork").Process(target=_append_entries, args=(w, 25))
        for w in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert len(places.deployment_history()) == 100
    assert not list(tmp_path.glob(".deployments.json.*.tmp"))


def test_deployment_history_survives_a_crash_mid_write(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    places.save_deployment_history(["catsdogs_v1-a.mar"])

    def crash(*args: object) -> None:
        raise OSError("disk gone mid-write")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        places.save_deployment_history(["catsdogs_v1-a.mar", "catsdogs_v2-b.mar"])
    assert places.deployment_history() == ["catsdogs_v1-a.mar"]


def test_a_full_disk_leaves_the_default_as_it_was(tmp_path: Path, monkeypatch) -> None:
    """deploy records the new default before TorchServe serves it: a refused record changes
    nothing rollback cannot see, and a refused set-default leaves the record as it was."""
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    places.save_deployment_history(["catsdogs_v1-a.mar"])
    served: list[str] = []
    monkeypatch.setattr(deploy, "_set_default", served.append)
    real = places.save_deployment_history

    def full(history: list[str]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(places, "save_deployment_history", full)
    mar, settings = Path("catsdogs_v2-b.mar"), MlflowSettings()
    with pytest.raises(OSError, match="No space"):
        deploy._make_default("2", mar, "catsdogs_v1-a.mar", False, settings)
    assert served == [] and places.deployment_history() == ["catsdogs_v1-a.mar"]
    monkeypatch.setattr(places, "save_deployment_history", real)

    def refused(version: str) -> None:
        raise ts.TorchServeError("set-default v2: 500")

    monkeypatch.setattr(deploy, "_set_default", refused)
    with pytest.raises(ts.TorchServeError):
        deploy._make_default("2", mar, "catsdogs_v1-a.mar", False, settings)
    assert places.deployment_history() == ["catsdogs_v1-a.mar"]


def test_unreadable_history_is_named_and_serve_run_starts_anyway(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    places.deployments_file().write_text('["catsdogs_v1-a.m')  # what a torn write looked like
    with pytest.raises(errors.ConfigError, match="deployments.json"):
        places.deployment_history()
    started = {}

    class Server:  # TorchServe's launcher, not started here
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            started["cmd"] = cmd

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(serve.subprocess, "Popen", Server)
    monkeypatch.setattr(prometheus, "expose", lambda *a: None)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    assert serve.run() == 0
    assert "--models" not in started["cmd"]
    assert "starting without a model" in capsys.readouterr().err


def test_scale_to_zero_workers_is_refused_at_once(capsys) -> None:
    assert errors.exit_code(deploy.main, ["scale", "--workers", "0"]) == 2
    assert "--workers 0: at least 1" in capsys.readouterr().err


def test_an_unregister_answered_500_counts_by_what_stays_registered(monkeypatch, capsys) -> None:
    interrupted = ts.Response(500, b'{"message": "Interrupted while cleaning resources: catsdogs"}')
    calls = []
    monkeypatch.setattr(ts, "call", lambda *a, **k: calls.append(a) or interrupted)
    monkeypatch.setattr(deploy, "_registered", lambda: {"2": "catsdogs_v2-b.mar"})
    monkeypatch.setattr(deploy.time, "sleep", lambda s: None)
    deploy._unregister("1")  # gone despite the 500: done
    assert len(calls) == 1
    with pytest.raises(ts.TorchServeError, match="unregister v2: HTTP 500"):
        deploy._unregister("2")  # still there after every try
    assert len(calls) == 4
    # retiring is after the deploy: a version that stays registered is a warning, not a failure
    monkeypatch.setattr(ts, "default_version", lambda: "3")
    assert deploy._retire(["catsdogs_v2-b.mar", "catsdogs_v3-c.mar"], keep=0) == []
    assert "v2 stays registered" in capsys.readouterr().err


def test_predict_sends_the_local_key_only_to_its_own_server(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    (tmp_path / ts.KEY_FILE).write_text(json.dumps({"inference": {"key": "local-secret"}}))
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(1))
    url = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        assert predict(image, url=url)[0] == 200
        monkeypatch.setenv("CATSDOGS_INFERENCE_KEY", "their-key")
        assert predict(image, url=url)[0] == 200
    finally:
        other.shutdown()
    assert seen == [None, "Bearer their-key"]


# --- the session's TorchServe ----------------------------------------------------------------


@java
def test_the_same_version_from_another_store_is_served_as_itself(
    blank_torchserve: Path, tmp_path: Path
) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(4, (90, 70)))
    keep = {*places.model_store().glob("*.mar"), package.package_version("1")[1]}
    deploy.deploy_version(version="1")
    ours = predict(image)[1]["probabilities"]
    other = _store(tmp_path, "other", [7])
    try:
        message = deploy.deploy_version(version="1", mlflow=other)
        assert "v1: registered and default now" in message, message
        run_b = MlflowClient(other.tracking_uri).get_model_version("catsdogs", "1").run_id
        assert _served_identity("1").run_id == run_b
        status, answer = predict(image)
        assert status == 200 and answer["model_version"] == "1"
        assert answer["probabilities"] != ours  # the other store's weights answer now
        deploy.deploy_version(version="1")  # and back: the session store's v1 again
        assert predict(image)[1]["probabilities"] == ours
    finally:
        _cleanup_store_archives(keep)


@java
def test_ten_deploys_keep_the_registered_versions_bounded(
    blank_torchserve: Path, tmp_path: Path, report
) -> None:
    many = _store(tmp_path, "many", list(range(10, 20)))
    per_version = []
    try:
        for version in range(1, 11):
            deploy.deploy_version(version=str(version), mlflow=many)
            per_version.append(sum(len(e["workers"]) for e in ts.describe("all")))
        registered = sorted(int(e["modelVersion"]) for e in ts.describe("all"))
        listing = deploy.listing()
        report("ten deploys", {"workers after each": per_version, "registered": registered})
        workers = ts.ready_workers(ts.describe("10")[0])
        assert registered == [9, 10]  # the default and one previous (KEEP)
        assert max(per_version) <= (deploy.KEEP + 1) * workers
        assert "* v10" in listing and "  v9 " in listing
        assert "  v8  catsdogs_v8-" in listing and "retired (archive kept)" in listing
        assert len(list(places.model_store().glob("catsdogs_v*-*.mar"))) == 10  # none deleted
        deploy.rollback(many)
        deploy.rollback(many)  # v8 was retired: registered again from its archive
        assert ts.default_version() == "8"
        assert sorted(int(e["modelVersion"]) for e in ts.describe("all")) == [8, 9]
    finally:
        _cleanup_store_archives(set())


@java
def test_one_deploy_over_many_pods_is_one_history_entry(blank_torchserve: Path) -> None:
    deploy.deploy_version(version="1")
    deploy.deploy_version(version="2")
    # the K8s Job deploys to each pod in turn: the next pod (here the same server set back)
    # still serves v1 when v2 reaches it
    deploy._set_default("1")
    deploy.deploy_version(version="2")
    history = [places.archive_version(e) for e in places.deployment_history()]
    assert history == ["1", "2"]
    assert "rolled back from v2 to v1" in deploy.rollback()
    with pytest.raises(ts.TorchServeError, match="nothing to roll back to"):
        deploy.rollback()


@java
def test_rollback_moves_the_default_tags(blank_torchserve: Path) -> None:
    deploy.deploy_version(version="1")
    deploy.deploy_version(version="2")
    deploy.rollback()
    client = MlflowClient(registry.resolve_tracking_uri())
    one = client.get_model_version("catsdogs", "1").tags
    two = client.get_model_version("catsdogs", "2").tags
    assert one["default_since"] >= two["default_since"]
    assert two["default_until"] >= two["default_since"]


@java
@pytest.mark.integration
def test_token_authorization_off_starts_at_once(tmp_path: Path) -> None:
    with state_folder(tmp_path), environment({"TS_DISABLE_TOKEN_AUTHORIZATION": "true"}):
        try:
            assert serve.start(timeout=90).startswith("TorchServe is up")
            assert not (tmp_path / ts.KEY_FILE).exists()
            assert ts.call("inference", "GET", "/ping", token=False).status == 200
            path = "/models?" + urllib.parse.urlencode({"limit": 10})
            assert ts.call("management", "GET", path, token=False).status == 200
        finally:
            serve.stop()
