"""Where catsdogs keeps its state, and the serving names and addresses: one source for all commands.

Every command (`fit`, `package`, `serve`, `deploy`, `predict`) works from any folder because state
lives under one home folder: `$CATSDOGS_HOME`, by default `~/.catsdogs`. Ports and addresses are read
from `configs/torchserve/config.properties`, the file TorchServe itself, the tests, the Dockerfile
and docker compose use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "catsdogs"
TS_CONFIG = ROOT / "configs" / "torchserve" / "config.properties"
MODEL_CONFIG = ROOT / "configs" / "torchserve" / "model-config.yaml"
HANDLER = ROOT / "handlers" / "catsdogs_handler.py"


def home() -> Path:
    """The state folder: MLflow store (by default), model store, TorchServe logs and token keys."""
    return Path(os.environ.get("CATSDOGS_HOME", "~/.catsdogs")).expanduser().resolve()


def model_store() -> Path:
    return home() / "model-store"


def deployment_history() -> list[str]:
    """The versions `deploy` made the default, oldest first (what rollback goes back to)."""
    path = deployments_file()
    return json.loads(path.read_text()) if path.exists() else []


def deployments_file() -> Path:
    return home() / "deployments.json"


def mar_name(version: str | int) -> str:
    """The archive of registered version N: its TorchServe version is the MLflow version."""
    return f"{MODEL_NAME}_v{version}.mar"


def ts_properties(path: Path = TS_CONFIG) -> dict[str, str]:
    """config.properties as a dict (key=value lines, # comments)."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


ADDRESS_KINDS = ("inference", "management", "metrics", "worker_metrics", "monitor")


def address(kind: str, bind: bool = False) -> str:
    """'inference', 'management', 'metrics', 'worker_metrics' or 'monitor' base URL. TS_INFERENCE_ADDRESS
    and friends override config.properties, for TorchServe (enable_envvars_config=true) and for us
    alike; CATSDOGS_BIND_HOST (0.0.0.0 in the serve image, where 127.0.0.1 would reach nothing)
    replaces the host of the addresses they leave alone. A client reaches a server bound to
    0.0.0.0 at 127.0.0.1 (unless `bind`)."""
    key = f"{kind}_address"
    url = os.environ.get(f"TS_{key.upper()}")
    if not url:
        host = os.environ.get("CATSDOGS_BIND_HOST")
        url = ts_properties()[key]
        url = url.replace("//127.0.0.1:", f"//{host}:") if host else url
    return url if bind else url.replace("0.0.0.0", "127.0.0.1")
