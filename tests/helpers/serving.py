"""Serving helpers: tiny servable exports, the handler loaded the way TorchServe does, state folders
on free ports, and the session's one TorchServe with the states tests ask of it."""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from catsdogs_pl import places, preprocessing, registry, servable
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.serving import deploy, package, serve, sign
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.ports import torchserve_ports

SIZE = 32
ARCH = {"num_classes": 2, "width": 4, "depth": 2, "blocks_per_stage": 1, "dropout": 0.0}


def make_export(folder: Path, seed: int = 0) -> Path:
    """A signed servable export of a small random network, with model.onnx where it exports
    (distinct seeds give distinct weights)."""
    torch.manual_seed(seed)
    net = BaselineCNN(**ARCH)
    for p in net.parameters():  # random BN scales too, so outputs differ between seeds
        torch.nn.init.normal_(p, std=0.3)
    return sign.sign_export(servable.export(net, preprocessing.spec(SIZE, ["cat", "dog"]), folder))


class FakeMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, list[tuple[str, str]]]] = []

    def add_counter(self, name: str, value: float, idx: Any = None, dimensions: Any = None) -> None:
        self.calls.append((name, value, [(d.name, d.value) for d in dimensions or []]))

    def add_time(self, name: str, value: float, idx: Any = None, dimensions: Any = None) -> None:
        self.calls.append((name, value, [(d.name, d.value) for d in dimensions or []]))

    def add_metric(
        self, name: str, value: float, unit: str, idx: Any, dimensions: Any, metric_type: Any
    ) -> None:
        self.calls.append((name, value, [(d.name, d.value) for d in dimensions or []]))


class FakeContext:
    """What TorchServe hands a handler: properties, manifest, model config, status and metrics."""

    def __init__(self, model_dir: Path, version: str = "3", **handler_config: Any) -> None:
        config = yaml.safe_load(places.MODEL_CONFIG.read_text())
        config["handler"].update(handler_config)
        self.system_properties = {"model_dir": str(model_dir), "batch_size": 8}
        self.manifest = {"model": {"modelVersion": version, "serializedFile": servable.WEIGHTS}}
        self.model_yaml_config = config
        self.statuses: dict[int, tuple[int, str]] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.metrics = FakeMetrics()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers.setdefault(idx, {})[key] = value


def load_handler(model_dir: Path, context: FakeContext) -> Any:
    """Import the handler from a staged model folder, as TorchServe's model loader does."""
    sys.path.insert(0, str(model_dir))  # as in a worker, also while initialize() imports
    try:
        for name in ("catsdogs_handler", *(Path(n).stem for n in package.SOURCES)):
            sys.modules.pop(name, None)
        handler = importlib.import_module("catsdogs_handler").CatsDogsHandler()
        handler.initialize(context)
    finally:
        sys.path.remove(str(model_dir))
    return handler


def worker_pids() -> dict[str, int]:
    """Worker id -> process id, over every registered version: equal before and after means no
    worker was restarted."""
    return {w["id"]: w["pid"] for e in ts.describe("all") for w in e["workers"]}


def register_exports(uri: str, folder: Path, seeds: list[int]) -> list[ModelVersion]:
    """A registry version of catsdogs in the store at `uri` for each seed (a small network with
    the seed's weights, artifacts under `folder`), in order."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("it", artifact_location=str(folder / "artifacts"))
    registered = []
    for seed in seeds:
        run_id = client.create_run(experiment).info.run_id
        client.log_artifacts(run_id, str(make_export(folder / f"export{seed}", seed)), "servable")
        tags = {"dataset_version": "d", "test/acc": "0.5"}
        registered.append(
            registry.register(client, places.MODEL_NAME, "servable", run_id, tags, "it")
        )
    return registered


def mar_path(version: str) -> Path:
    """The archive of `version` in the model store (the newest, when there are more)."""
    found = places.find_mar(version)
    assert found is not None, f"no archive of v{version} in {places.model_store()}"
    return found


def state_env(home: Path, scratch: Path) -> dict[str, str | None]:
    """The environment of a server's state (None: unset): every command's state in `home`, the
    embedded MLflow store, TorchServe's addresses and gRPC ports on free ports, and `scratch` as
    its temporary folder, which would otherwise be /tmp for every TorchServe on this machine:
    TMPDIR holds the launcher's pid file (.model_server.pid, what `torchserve --stop` stops) and
    TEMP becomes java.io.tmpdir (the unpacked archives in models/, the workers' Unix sockets
    .ts.sock.9000 and up)."""
    return {
        "CATSDOGS_HOME": str(home),
        "MLFLOW_TRACKING_URI": None,
        "CATSDOGS_BIND_HOST": None,
        "TMPDIR": str(scratch),
        "TEMP": str(scratch),
        **torchserve_ports(),
    }


@contextlib.contextmanager
def environment(env: dict[str, str | None]) -> Iterator[None]:
    """`env` in os.environ (None: unset) for the block, what was there before afterwards."""
    patch = pytest.MonkeyPatch()
    try:
        for key, value in env.items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        yield
    finally:
        patch.undo()


def scratch_folder() -> Path:
    """A temporary folder of the system's (short: Unix socket paths have at most 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="catsdogs-ts-"))


@contextlib.contextmanager
def state_folder(home: Path) -> Iterator[dict[str, str | None]]:
    """state_env(home, a fresh scratch folder) applied for the block; yields it. Nothing can be
    serving on the chosen ports: the kernel handed them out unused a moment before."""
    scratch = scratch_folder()
    try:
        env = state_env(home, scratch)
        with environment(env):
            yield env
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class SessionTorchServe:
    """The session's one TorchServe (tests/conftest.py's `torchserve` fixture), with the shared
    config, in a state folder of its own on free ports.

    Its registry (the MLflow store of the state folder) has versions 1 and 2 of catsdogs, two
    small networks with different weights. Tests ask for a state and get it, whatever the tests
    before them left: `serving_only(version)` or `blank()`. Their calls work only inside
    `environment()`, where the clients (places.address, the token) find this server."""

    VERSIONS = ("1", "2")

    def __init__(self, home: Path) -> None:
        self.home = home
        self.scratch = scratch_folder()
        self.env = state_env(home, self.scratch)

    def environment(self) -> contextlib.AbstractContextManager[None]:
        return environment(self.env)

    def start(self) -> None:
        """Registry versions 1 and 2, and TorchServe started serving nothing."""
        registered = register_exports(
            registry.resolve_tracking_uri(), self.home, [int(v) for v in self.VERSIONS]
        )
        assert [v.version for v in registered] == [int(v) for v in self.VERSIONS]
        serve.start()

    def stop(self) -> None:
        serve.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _up(self) -> None:
        """Started again if a test stopped it (a restart test that failed half-way)."""
        if not serve.is_up():
            serve.start()

    def serving_only(self, version: str = "1") -> None:
        """`version` registered, READY and the default; no other version registered; the archives
        of versions 1 and 2 in the model store (packaged from the registry where missing)."""
        self._up()
        mars = {
            v: package.package_version(v)[1] for v in self.VERSIONS
        }  # reuses archives that are there
        registered = {e["modelVersion"] for e in ts.describe("all")}
        deploy._register(version, mars[version])  # as deploy does it: registered, READY
        if ts.default_version() != version:
            deploy._set_default(version)
        for other in sorted(registered - {version}):
            deploy._unregister(other)
        found = ts.describe("all")
        assert [e["modelVersion"] for e in found] == [version], found

    def blank(self) -> None:
        """Nothing registered on TorchServe, no deployment history, no archive in the model
        store: `deploy` packages from the registry and registers, as on a new server."""
        self._up()
        default = ts.default_version()
        registered = {e["modelVersion"] for e in ts.describe("all")}
        for version in [*sorted(registered - {default}), *([default] if default else [])]:
            deploy._unregister(version)
        assert ts.describe("all") == []
        places.deployments_file().unlink(missing_ok=True)
        for mar in places.model_store().glob("*.mar"):
            mar.unlink()
