"""`python -m catsdogs_pl.serving.deploy`: put registry versions on the running TorchServe.

  deploy --model-version N | --alias champion | --run-id R   package if needed, register, wait
                                                             until READY, make it the default
  deploy --model-version N --gate DIR [--tolerance T]        the same, only if N scores on the
                                                             photos DIR/<class>/* at least as well
                                                             as the default (less T) and fails no
                                                             request; else exit 1, default kept
  deploy rollback                                            the previous default again
  deploy list                                                versions, default, workers
  deploy scale --workers K                                   workers of the default version

Each call says what changed. The defaults set by deploy are kept in `$CATSDOGS_HOME/deployments.json`
so rollback knows where to go back to, and the registry version gets the tag `default_since`.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

from catsdogs_pl import settings
from catsdogs_pl.errors import ConfigError, run
from catsdogs_pl.serving import gate
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.package import add_version_arguments, mlflow_settings, package
from catsdogs_pl.training import tracking
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


def _unregister(version: str) -> None:
    path = f"/models/{settings.MODEL_NAME}/{version}"
    ts.check(ts.call("management", "DELETE", path, timeout=120), f"unregister v{version}")


def _make_default(
    version: str, previous: str | None, registered: bool, mlflow: MlflowSettings
) -> str:
    """set-default, the history rollback walks back through, and the registry tag
    `default_since`, so the registry shows since when each version serves; says what changed."""
    _set_default(version)
    history = settings.deployment_history()
    if previous and (not history or history[-1] != previous):
        history.append(previous)  # the server had a default this file did not know about
    if not history or history[-1] != version:
        history.append(version)
    _save_history(history)
    if previous != version:
        tracking.client(mlflow).set_model_version_tag(
            mlflow.registered_model, version, "default_since", tracking.utc_now()
        )
    action = "registered and " if registered else ""
    was = f"v{previous}" if previous else "none"
    return f"catsdogs v{version}: {action}default now (was {was})"


def deploy(
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    mlflow: MlflowSettings | None = None,
) -> str:
    """Package (if needed), register and make the default one version of `mlflow`'s registered
    model (default: the fit config's); says what changed."""
    mlflow = mlflow or MlflowSettings.from_config()
    version, mar = package(version, alias, run_id, mlflow=mlflow)
    previous = ts.default_version()
    registered = _register(version, mar)
    return _make_default(version, previous, registered, mlflow)


def deploy_gated(
    folder: Path,
    tolerance: float = 0.0,
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    mlflow: MlflowSettings | None = None,
) -> tuple[bool, str]:
    """`deploy`, but only when the version, registered beside the default and asked through the
    inference API, scores on the photos of `folder` at least the default's accuracy less
    `tolerance` and fails no request; else the server is left as it was. (passed, what happened
    with both figures.)"""
    if not 0.0 <= tolerance <= 1.0:
        raise ConfigError(f"--tolerance {tolerance}: an accuracy difference, from 0 to 1")
    mlflow = mlflow or MlflowSettings.from_config()
    version, mar = package(version, alias, run_id, mlflow=mlflow)
    photos = gate.load_photos(folder, gate.archive_classes(mar))
    previous = ts.default_version()
    registered = _register(version, mar)  # beside the default, which TorchServe keeps
    passed = False
    try:
        candidate = gate.score(version, photos)
        baseline = gate.score(previous, photos) if previous else None
        passed = gate.passes(candidate, baseline, tolerance)
        gate.record(mlflow, candidate, baseline, passed, gate.folder_sha256(folder, photos))
    finally:
        if registered and not passed:
            _unregister(version)  # the server as before the gate, also when scoring broke
    figures = gate.explain(candidate, baseline, tolerance, folder)
    if passed:
        return True, f"gate passed v{version}: {figures}; " + _make_default(
            version, previous, registered, mlflow
        )
    kept = f"v{previous}" if previous else "none"
    undone = f"; v{version} unregistered again" if registered else ""
    return False, f"gate refused v{version}: {figures}; default stays {kept}{undone}"


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
        parser.add_argument(
            "--gate",
            type=Path,
            metavar="DIR",
            help="labelled photos DIR/<class>/*: make the version the default only if it scores "
            "on them at least as well as the current default and fails no request (else exit 1)",
        )
        parser.add_argument(
            "--tolerance",
            type=float,
            help="with --gate: how much lower than the default's accuracy passes (default 0.0)",
        )
    args = parser.parse_args(argv)
    if args.command == "rollback":
        print(rollback())
    elif args.command == "list":
        print(listing())
    elif args.command == "scale":
        print(scale(args.workers))
    elif args.gate:
        passed, message = deploy_gated(
            args.gate,
            args.tolerance or 0.0,
            args.model_version,
            args.alias,
            args.run_id,
            mlflow_settings(args),
        )
        print(message, file=sys.stdout if passed else sys.stderr)
        return 0 if passed else 1  # a refusal is a verdict, like smoke's
    elif args.tolerance is not None:
        parser.error("--tolerance goes with --gate DIR")
    else:
        print(deploy(args.model_version, args.alias, args.run_id, mlflow_settings(args)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
