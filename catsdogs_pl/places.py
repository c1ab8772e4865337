"""Where catsdogs keeps its state, and the serving names and addresses: one source for all commands.

Every command (`fit`, `package`, `serve`, `deploy`, `predict`) works from any folder because state
lives under one home folder: `$CATSDOGS_HOME`, by default `~/.catsdogs`. Ports and addresses are read
from `configs/torchserve/config.properties`, the file TorchServe itself, the tests, the Dockerfile
and docker compose use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from catsdogs_pl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "catsdogs"
TS_CONFIG = ROOT / "configs" / "torchserve" / "config.properties"
TS_LOG_CONFIG = TS_CONFIG.with_name("log4j2.xml")  # one line per event, no per-request DEBUG
MODEL_CONFIG = ROOT / "configs" / "torchserve" / "model-config.yaml"
HANDLER = ROOT / "handlers" / "catsdogs_handler.py"


def home() -> Path:
    """The state folder: MLflow store (by default), model store, TorchServe logs and token keys."""
    return Path(os.environ.get("CATSDOGS_HOME", "~/.catsdogs")).expanduser().resolve()


def model_store() -> Path:
    return home() / "model-store"


def captures() -> Path:
    """The capture store: the sample of served photos kept for users' feedback (capture.py)."""
    return home() / "captures"


def deployments_file() -> Path:
    return home() / "deployments.json"


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock on `name` in the state folder, for the block: every process and container
    that shares the folder (the compose trainer, K8s deploy pods) waits its turn."""
    path = home() / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a crash mid-write leaves the
    old file or the new one, never a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def deployment_history() -> list[str]:
    """The archives `deploy` made the default, oldest first (what rollback goes back to); an
    unreadable file is an error that names it, never a crash loop of `serve run`."""
    path = deployments_file()
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text())
        return [str(entry) for entry in history]
    except (json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a JSON list of archives ({exc}): fix or delete it"
        ) from exc


def save_deployment_history(history: list[str]) -> None:
    write_atomically(deployments_file(), json.dumps(history))


def mar_name(version: str | int, key: str) -> str:
    """The archive of registered version N, with `key` naming what is inside (see package.identity):
    its TorchServe version is the MLflow version, and TorchServe's modelUrl tells which build of
    that version it serves."""
    return f"{MODEL_NAME}_v{version}-{key}.mar"


def archive_version(mar: str) -> str:
    """The version of an archive name (`catsdogs_v3-0a1b2c3d4e5f.mar` -> "3"); a bare version, as
    older deployments.json files hold, is its own."""
    return mar.removeprefix(f"{MODEL_NAME}_v").removesuffix(".mar").split("-", 1)[0]


def find_mar(entry: str) -> Path | None:
    """The archive in the model store for a deployments.json entry: an archive name, or a bare
    version (the newest archive of that version, older `catsdogs_vN.mar` names included)."""
    store = model_store()
    if entry.endswith(".mar"):
        return store / entry if (store / entry).exists() else None
    found = [*store.glob(f"{MODEL_NAME}_v{entry}-*.mar"), *store.glob(f"{MODEL_NAME}_v{entry}.mar")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def ts_config() -> Path:
    """The TorchServe config: CATSDOGS_TS_CONFIG when it names one of the user's (say, with another
    token_expiration_min, which TorchServe reads from no environment variable), else ours."""
    return Path(os.environ.get("CATSDOGS_TS_CONFIG") or TS_CONFIG)


def ts_properties() -> dict[str, str]:
    """config.properties as a dict (key=value lines, # comments)."""
    props = {}
    for line in ts_config().read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def capture_properties() -> dict[str, str]:
    """config.properties' capture_* settings; TS_CAPTURE_FRACTION and friends override them (as
    TS_ variables override TorchServe's own settings), so compose and Kubernetes turn capture on
    without another config file."""
    found = {k: v for k, v in ts_properties().items() if k.startswith("capture_")}
    return {k: os.environ.get(f"TS_{k.upper()}", v) for k, v in found.items()}


ADDRESS_KINDS = ("inference", "management", "metrics", "worker_metrics", "monitor", "oip")


def address(kind: str, bind: bool = False) -> str:
    """'inference', 'management', 'metrics', 'worker_metrics', 'monitor' or 'oip' base URL. TS_INFERENCE_ADDRESS
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
