"""`python -m catsdogs_pl.serving.deploy`: put registry versions on the running TorchServe.

  deploy --model-version N | --alias champion | --run-id R   package if needed, register, wait
                                                             until READY, make it the default
  deploy rollback                                            the previous default again
  deploy list                                                versions, default, workers
  deploy scale --workers K                                   workers of the default version

Each call says what changed. The defaults set by deploy are kept in `$CATSDOGS_HOME/deployments.json`
so rollback knows where to go back to.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

from catsdogs_pl import settings
from catsdogs_pl.errors import run
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.package import add_version_arguments, mlflow_settings, package
from catsdogs_pl.training.tracking import MlflowSettings


def _save_history(history: list[str]) -> None:
    settings.deployments_file().write_text(json.dumps(history))


def _set_default(version: str) -> None:
    path = f"/models/{settings.MODEL_NAME}/{version}/set-default"
    ts.check(ts.call("management", "PUT", path), f"set-default v{version}")


def _register(version: str, mar: Path) -> bool:
    """Register `mar` as `version` unless TorchServe already has it, and wait until it is READY.
    True when it was registered now."""
    registered = version in {e["modelVersion"] for e in ts.describe("all")}
    if not registered:
        if not mar.exists():
            raise ts.TorchServeError(
                f"v{version} is not registered and {mar} is missing: deploy it"
            )
        query = urllib.parse.urlencode(
            {"url": mar.name, "model_name": settings.MODEL_NAME, "synchronous": "true"}
        )
        response = ts.call("management", "POST", f"/models?{query}", timeout=300)
        logs = settings.home() / "logs" / "model_log.log"  # a broken archive's traceback is there
        ts.check(response, f"register {mar} (the workers' errors: {logs})")
    ts.wait_ready(version)
    return not registered


def deploy(
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    mlflow: MlflowSettings | None = None,
) -> str:
    """Package (if needed), register and make the default one version of `mlflow`'s registered
    model (default: the fit config's); says what changed."""
    version, mar = package(version, alias, run_id, mlflow=mlflow)
    previous = ts.default_version()
    registered = _register(version, mar)
    _set_default(version)
    history = settings.deployment_history()
    if previous and (not history or history[-1] != previous):
        history.append(previous)  # the server had a default this file did not know about
    if not history or history[-1] != version:
        history.append(version)
    _save_history(history)
    action = "registered and " if registered else ""
    return (
        f"catsdogs v{version}: {action}default now (was {f'v{previous}' if previous else 'none'})"
    )


def rollback() -> str:
    history = settings.deployment_history()
    current = ts.default_version()
    if current and history and history[-1] != current:
        history.append(current)
    if len(history) < 2:
        raise ts.TorchServeError("nothing to roll back to: only one version was ever the default")
    history.pop()
    target = history[-1]
    # a restarted server registers only the last default: the target comes back from the store
    _register(target, settings.model_store() / settings.mar_name(target))
    _set_default(target)
    _save_history(history)
    return f"catsdogs: default rolled back from v{current} to v{target}"


def scale(workers: int) -> str:
    query = urllib.parse.urlencode(
        {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
    )
    path = f"/models/{settings.MODEL_NAME}?{query}"
    ts.check(ts.call("management", "PUT", path, timeout=300), f"scale to {workers}")
    entry = ts.wait_ready()
    return f"catsdogs v{entry['modelVersion']} (default): {ts.ready_workers(entry)} workers READY"


def listing() -> str:
    default = ts.default_version()
    lines = []
    for entry in sorted(ts.describe("all"), key=lambda e: int(e["modelVersion"])):
        mark = "*" if entry["modelVersion"] == default else " "
        lines.append(
            f"{mark} v{entry['modelVersion']}  {entry['modelUrl']}  "
            f"{ts.ready_workers(entry)}/{len(entry.get('workers', []))} workers READY"
        )
    return "\n".join(lines) or "no catsdogs version is registered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.serving.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("rollback", help="make the previous default the default again")
    sub.add_parser("list", help="registered versions and their workers")
    scaling = sub.add_parser("scale", help="set the workers of the default version")
    scaling.add_argument("--workers", type=int, required=True)
    if not argv or argv[0].startswith("-"):
        add_version_arguments(parser)
    args = parser.parse_args(argv)
    if args.command == "rollback":
        print(rollback())
    elif args.command == "list":
        print(listing())
    elif args.command == "scale":
        print(scale(args.workers))
    else:
        print(deploy(args.model_version, args.alias, args.run_id, mlflow_settings(args)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
