"""`python -m catsdogs_pl.mlflow_server [mlflow server options]`: the compose stack's MLflow server.

MLflow takes its database as one URI, and a password pasted into a URI breaks on `@`, `/`, `%` or
`:` (MLflow then connects with the wrong one). This builds the URI from POSTGRES_USER,
POSTGRES_PASSWORD, POSTGRES_HOST, POSTGRES_PORT and POSTGRES_DB with every part percent-encoded,
names the driver (psycopg 3, which the image installs) instead of leaving SQLAlchemy to guess, and
execs `mlflow server`. An explicit MLFLOW_BACKEND_STORE_URI wins. Standard library only: the mlflow
image holds this file, errors.py and MLflow, nothing else of ours.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from urllib.parse import quote

from catsdogs_pl.errors import ConfigError, exit_code

DRIVER = "postgresql+psycopg"


def backend_store_uri(env: Mapping[str, str]) -> str:
    """The SQLAlchemy URI of the PostgreSQL database that `env` describes, parts percent-encoded."""
    if env.get("MLFLOW_BACKEND_STORE_URI"):
        return env["MLFLOW_BACKEND_STORE_URI"]
    if not env.get("POSTGRES_PASSWORD"):
        raise ConfigError("POSTGRES_PASSWORD is not set: the MLflow server needs its database's")
    user = quote(env.get("POSTGRES_USER", "mlflow"), safe="")
    password = quote(env["POSTGRES_PASSWORD"], safe="")
    host = env.get("POSTGRES_HOST", "postgres")
    port = env.get("POSTGRES_PORT", "5432")
    database = quote(env.get("POSTGRES_DB", "mlflow"), safe="")
    return f"{DRIVER}://{user}:{password}@{host}:{port}/{database}"


def main(argv: list[str]) -> int:
    """Exec `mlflow server` with the backend URI set (returns only on a configuration error)."""
    uri = backend_store_uri(os.environ)
    os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
    os.execvp("mlflow", ["mlflow", "server", *argv])


if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
