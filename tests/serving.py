"""Helpers for serving tests: tiny servable exports and the handler loaded the way TorchServe does."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from catsdogs_pl import preprocessing, settings
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.serving import package, serve
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.training import export

SIZE = 32
ARCH = {"num_classes": 2, "width": 4, "depth": 2, "blocks_per_stage": 1, "dropout": 0.0}


def make_export(folder: Path, seed: int = 0) -> Path:
    """A servable export of a small random network (distinct seeds give distinct weights)."""
    torch.manual_seed(seed)
    net = BaselineCNN(**ARCH)
    for p in net.parameters():  # random BN scales too, so outputs differ between seeds
        torch.nn.init.normal_(p, std=0.3)
    return export.export(net, ARCH, preprocessing.describe(SIZE, ["cat", "dog"]), folder)


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
        config = yaml.safe_load(settings.MODEL_CONFIG.read_text())
        config["handler"].update(handler_config)
        self.system_properties = {"model_dir": str(model_dir), "batch_size": 8}
        self.manifest = {"model": {"modelVersion": version, "serializedFile": export.WEIGHTS}}
        self.model_yaml_config = config
        self.statuses: dict[int, tuple[int, str]] = {}
        self.metrics = FakeMetrics()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)


def load_handler(model_dir: Path, context: FakeContext) -> Any:
    """Import the handler from a staged model folder, as TorchServe's model loader does."""
    sys.path.insert(0, str(model_dir))
    try:
        for name in ("catsdogs_handler", *(Path(n).stem for n in package.SOURCES)):
            sys.modules.pop(name, None)
        module = importlib.import_module("catsdogs_handler")
    finally:
        sys.path.remove(str(model_dir))
    handler = module.CatsDogsHandler()
    handler.initialize(context)
    return handler


@contextlib.contextmanager
def state_folder(home: Path) -> Iterator[None]:
    """Every command's state in `home`, the embedded MLflow store, the addresses of
    config.properties, and nothing already serving there (a test must not talk to it)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CATSDOGS_HOME", str(home))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.delenv("CATSDOGS_BIND_HOST", raising=False)
    for kind in settings.ADDRESS_KINDS:
        patch.delenv(f"TS_{kind.upper()}_ADDRESS", raising=False)
    try:
        if serve.is_up():
            pytest.fail(f"something already serves on {settings.address('inference')}: stop it")
        yield
    finally:
        patch.undo()


def worker_pids() -> dict[str, int]:
    """Worker id -> process id, over every registered version: equal before and after means no
    worker was restarted."""
    return {w["id"]: w["pid"] for e in ts.describe("all") for w in e["workers"]}
