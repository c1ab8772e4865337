"""The project's errors: each is something a user can fix, and every command exits 2 on one.

Commands wrap their `main` in `run`, so a wrong path, setting or unreachable server ends as one
`error: ...` line naming what to fix, never a traceback; anything else is a bug and keeps its
traceback. Standard library only: the mlflow image ships this file beside mlflow_server.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class CatsDogsError(Exception):
    """Base of every error a user can fix; the message names what to change."""


class ConfigError(CatsDogsError, ValueError):
    """A setting or argument has a value the command cannot use."""


class MissingError(CatsDogsError, FileNotFoundError):
    """A file or folder the command needs is not there."""


class UnreachableError(CatsDogsError, ConnectionError):
    """A server the command needs (MLflow tracking, TorchServe) does not answer."""


def exit_code(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """The exit code of a command: main's own (0 when it returns no int), 2 on a CatsDogsError."""
    try:
        code = main(argv)
    except CatsDogsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0
