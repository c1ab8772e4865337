"""The MLflow store and Model Registry: where the tracking store is, run metadata, which version
is which (resolve_version) and the registry rules. Below training and serving: both use it.

One place decides the tracking URI for every command (`fit`, `package`, `deploy`, ...):
`--mlflow.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else an embedded SQLite store in the state
folder (`$CATSDOGS_HOME/mlflow.db`, artifacts in `$CATSDOGS_HOME/mlartifacts`), so every command finds
the same store from any working directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from catsdogs_pl import config, places
from catsdogs_pl.errors import CatsDogsError, ConfigError, UnreachableError

CHAMPION = "champion"
DATASET_TAG = "dataset_version"  # each version's prepared data: champions are compared on the same
FORWARD_TAG = (
    "forward_pass"  # what computes its answers (forward.json): runtime, precision, flip TTA
)


FIT_CONFIG = config.FIT


@dataclass
class MlflowSettings:
    """Where runs go and under which registered model versions are created."""

    experiment: str = "catsdogs"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else $CATSDOGS_HOME/mlflow.db
    registered_model: str = "catsdogs"

    @classmethod
    def from_config(cls, path: Path = FIT_CONFIG) -> MlflowSettings:
        """The `mlflow:` section of a fit config as fit reads it (configs/base.yaml underneath,
        catsdogs_pl.config), so the commands after `fit` (package, deploy) look in the store and
        under the registered model that fit wrote to; what it leaves out is the defaults here."""
        section = config.load(path).get("mlflow") or {}
        unknown = set(section) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{path}: unknown mlflow settings {sorted(unknown)}")
        return cls(**section)


def default_tracking_uri() -> str:
    places.home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{places.home() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location(uri: str) -> str | None:
    """Artifacts of the default store live beside it; other stores keep MLflow's own default."""
    return str(places.home() / "mlartifacts") if uri == default_tracking_uri() else None


def client(store: MlflowSettings) -> MlflowClient:
    """The tracking and registry client of `store`, so the commands after fit (deploy and
    its gate) write where fit wrote."""
    return MlflowClient(resolve_tracking_uri(store.tracking_uri))


def utc_now() -> str:
    """A registry tag's time: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UnreachableError(
            f"MLflow tracking server {uri} is unreachable ({exc}): start it, or unset "
            f"MLFLOW_TRACKING_URI / --mlflow.tracking_uri to use the local {default_tracking_uri()}"
        ) from exc


def git_commit() -> str:
    """The commit of the code that trained the model ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    import lightning
    import torch

    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "mlflow": mlflow.__version__,
    }


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    description: str,
    model_id: str | None = None,
) -> ModelVersion:
    """A new version of registered model `name`, tagged with what makes it comparable.
    `model_id`: the MLflow 3 logged model behind a `models:/m-...` URI (a server insists)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Cat vs dog classifier (catsdogs_pl)")
    return client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, description=description, model_id=model_id
    )


def update_champion(
    client: MlflowClient, name: str, version: ModelVersion, metric: str
) -> tuple[bool, str]:
    """Move the `champion` alias to `version` when there is none, or when `version` scores at
    least as well on the same dataset_version. Returns (moved, reason)."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return True, "no champion yet"
    new, old = float(version.tags[metric]), float(current.tags.get(metric, "nan"))
    same_data = current.tags.get(DATASET_TAG) == version.tags[DATASET_TAG]
    if not same_data:
        return False, (
            f"champion v{current.version} was tested on dataset {current.tags.get(DATASET_TAG)}, "
            f"this version on {version.tags[DATASET_TAG]}: not comparable, alias kept"
        )
    if new >= old:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return True, f"{metric} {new:.4f} >= champion v{current.version}'s {old:.4f}"
    return False, f"{metric} {new:.4f} < champion v{current.version}'s {old:.4f}: alias kept"


class NotRegisteredError(CatsDogsError, LookupError):
    """The registry has no such version, alias or run."""


def resolve_version(
    client: MlflowClient,
    name: str,
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
) -> tuple[str, str]:
    """(registered version, run id) from exactly one of version ("latest": the newest), alias or
    run id."""
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif run_id or version == "latest":
            query = f"name='{name}'" + (f" and run_id='{run_id}'" if run_id else "")
            found = client.search_model_versions(query)
            if not found:
                where = f"run {run_id} has" if run_id else "the registry has"
                raise NotRegisteredError(
                    f"{where} no registered version of '{name}': run fit first"
                )
            mv = max(found, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        wanted = f"alias '{alias}'" if alias else f"version {version}"
        raise NotRegisteredError(
            f"registered model '{name}' has no {wanted} ({exc.message})"
        ) from exc
    return str(mv.version), mv.run_id  # MLflow 3 returns int versions; TorchServe strings


VERSION_ARGUMENTS = ("model_version", "alias", "run_id")


def add_version_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model-version / --alias / --run-id, --config and --tracking-uri, shared by package,
    deploy and robustness (`required=False`: the caller checks, as deploy does where a
    subcommand may stand instead)."""
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("--model-version", help="registered version N, or 'latest'")
    which.add_argument("--alias", help="a registry alias, e.g. champion")
    which.add_argument("--run-id", help="the MLflow run that registered the version")
    add_store_arguments(parser)


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --tracking-uri: which registry (for package, deploy and rollback)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=FIT_CONFIG,
        help="the fit config whose mlflow section names the registered model and the store "
        "(default: configs/fit.yaml)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="default: the config's mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else the "
        "home store",
    )


def store_of(args: argparse.Namespace) -> MlflowSettings:
    """The config's mlflow section with --tracking-uri on top."""
    found = MlflowSettings.from_config(args.config)
    if args.tracking_uri:
        found.tracking_uri = args.tracking_uri
    return found
