"""`python -m catsdogs_pl.serving.deploy`: put registry versions on the running TorchServe.

  deploy --model-version N | --alias champion | --run-id R   package if needed, register, wait
                                                             until READY, make it the default
  deploy --model-version N --gate DIR [--tolerance T]        the same, only if N scores on the
                                                             photos DIR/<class>/* at least as well
                                                             as the default (less T) and fails no
                                                             request; else exit 1, default kept
  deploy rollback                                            the previous default again
  deploy list                                                versions, default, workers, retired
  deploy list --card N                                       version N's model card (verified)
  deploy scale --workers K                                   workers of the default version

Each call says what changed. The archives deploy made the default are kept, oldest first, in
`$CATSDOGS_HOME/deployments.json` (written atomically, under a lock of the state folder), so rollback
knows where to go back to; the registry version gets the tag `default_since` (the one it replaced,
`default_until`). Versions are what they say: TorchServe's modelUrl names the archive it serves
(`catsdogs_vN-<key>.mar`, see package), and a version registered from another archive (another
tracking store's "vN") is registered again. A bounded lifecycle: the default and the `--keep`
(default 1) newest previous defaults stay registered with their workers; older ones are
unregistered, their archives kept for rollback. Every archive is verified against its signature
before it is registered (package.verify_archive): one that does not verify changes nothing on the
server, and the call says what verified the one it registered.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
import zipfile
from pathlib import Path

from mlflow.exceptions import MlflowException

from catsdogs_pl import places, registry, servable
from catsdogs_pl.errors import CatsDogsError, ConfigError, MissingError, exit_code
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.serving import gate
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.package import package_version, read_forward, verify_archive

KEEP = 1  # previous defaults that stay registered with workers, for an instant rollback


def _set_default(version: str) -> None:
    path = f"/models/{places.MODEL_NAME}/{version}/set-default"
    ts.check(ts.call("management", "PUT", path), f"set-default v{version}")


def _registered() -> dict[str, str]:
    """Registered version -> the archive TorchServe loaded it from."""
    return {e["modelVersion"]: e["modelUrl"] for e in ts.describe("all")}


def _default_archive() -> str | None:
    found = ts.describe("")
    return found[0]["modelUrl"] if found else None


def _register(version: str, mar: Path) -> bool:
    """Register `mar` as `version` unless TorchServe already serves this very archive, and wait
    until it is READY; a version registered from another archive is unregistered first. True
    when it was registered now."""
    registered = _registered()
    if registered.get(version) == mar.name:
        ts.wait_ready(version)
        return False
    if not mar.exists():
        raise ts.TorchServeError(f"v{version} is not registered and {mar} is missing: deploy it")
    if version in registered:  # another build under the same number: never serve it as this one
        others = sorted(set(registered) - {version}, key=int)
        if ts.default_version() == version and others:
            _set_default(others[-1])  # TorchServe refuses to unregister a default with company
        _unregister(version)
    query = urllib.parse.urlencode(
        {"url": mar.name, "model_name": places.MODEL_NAME, "synchronous": "true"}
    )
    response = ts.call("management", "POST", f"/models?{query}", timeout=300)
    logs = places.home() / "logs" / "model_log.log"  # a broken archive's traceback is there
    ts.check(response, f"register {mar} (the workers' errors: {logs})")
    ts.wait_ready(version)
    return True


def _unregister(version: str, tries: int = 3) -> None:
    """DELETE the version. TorchServe 0.12 sometimes answers 500 "Interrupted while cleaning
    resources" (seen under load in the chaos test), the version gone or not: what counts is
    whether it is still registered, and a second DELETE usually succeeds."""
    path = f"/models/{places.MODEL_NAME}/{version}"
    for attempt in range(tries):
        response = ts.call("management", "DELETE", path, timeout=120)
        if response.status < 500 or version not in _registered():
            break
        time.sleep(2 * (attempt + 1))
    if response.status >= 500 and version not in _registered():
        return
    ts.check(response, f"unregister v{version}")


def _retire(history: list[str], keep: int) -> list[str]:
    """Unregister every version but the default and the `keep` newest previous defaults of
    `history`; their archives stay in the model store. Returns the versions retired."""
    default = ts.default_version()
    kept = [default]
    for entry in reversed(history):
        version = places.archive_version(entry)
        if len(kept) > keep:
            break
        if version not in kept:
            kept.append(version)
    retired = []
    for version in sorted(set(_registered()) - set(kept), key=int):
        try:
            _unregister(version)
            retired.append(version)
        except ts.TorchServeError as exc:  # the deploy is done; the next one retires it
            print(f"warning: v{version} stays registered: {exc}", file=sys.stderr)
    return retired


def _tag_default(mlflow: MlflowSettings, version: str, replaced: str | None) -> str:
    """Registry tags: `default_since` on the new default, `default_until` on the one it replaced.
    Serving has already changed, so a registry that does not answer is reported, not fatal."""
    try:
        client = registry.client(mlflow)
        now = registry.utc_now()
        client.set_model_version_tag(mlflow.registered_model, version, "default_since", now)
        if replaced and replaced != version:
            client.set_model_version_tag(mlflow.registered_model, replaced, "default_until", now)
    except (MlflowException, CatsDogsError, OSError) as exc:
        return f"; registry tags not set ({exc})"
    return ""


def _make_default(
    version: str,
    mar: Path,
    previous: str | None,
    registered: bool,
    mlflow: MlflowSettings,
    keep: int = KEEP,
) -> str:
    """The history rollback walks back through (`previous`: the archive that was the default),
    then set-default, the retired versions and the registry tags, under the state folder's lock
    (two deploys at once keep both entries); says what changed. Recorded first: a disk that
    refuses the record leaves the server's default as it was, never one rollback cannot see."""
    with places.locked("deployments"):
        before = places.deployment_history()
        history = list(before)
        if not history or history[-1] != mar.name:  # one deploy over many pods is one entry
            if previous and (not history or history[-1] != previous):
                history.append(previous)  # the server had a default this file did not know about
            history.append(mar.name)
            places.save_deployment_history(history)
        try:
            _set_default(version)
        except BaseException:
            if history != before:
                places.save_deployment_history(before)  # the record as the server still is
            raise
        retired = _retire(history, keep)
    was = places.archive_version(previous) if previous else None
    tags = _tag_default(mlflow, version, was)
    action = "registered and " if registered else ""
    gone = f"; retired {', '.join('v' + v for v in retired)} (archives kept)" if retired else ""
    return (
        f"catsdogs v{version}: {action}default now (was {'v' + was if was else 'none'}){gone}{tags}"
    )


def deploy_version(
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    mlflow: MlflowSettings | None = None,
    keep: int = KEEP,
) -> str:
    """Package (if needed), register and make the default one version of `mlflow`'s registered
    model (default: the fit config's), keeping `keep` previous defaults registered; says what
    changed."""
    mlflow = mlflow or MlflowSettings.from_config()
    version, mar = package_version(version, alias, run_id, mlflow=mlflow)
    verified = verify_archive(mar)  # an archive in the model store may be older, or swapped
    previous = _default_archive()
    registered = _register(version, mar)
    return f"{verified}; {_make_default(version, mar, previous, registered, mlflow, keep)}"


def deploy_gated(
    folder: Path,
    tolerance: float = 0.0,
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    mlflow: MlflowSettings | None = None,
    keep: int = KEEP,
) -> tuple[bool, str]:
    """`deploy`, but only when the version, registered beside the default and asked through the
    inference API, scores on the photos of `folder` at least the default's accuracy less
    `tolerance` and fails no request; else the server and the model store are left as they were.
    (passed, what happened with both figures.)"""
    if not 0.0 <= tolerance <= 1.0:
        raise ConfigError(f"--tolerance {tolerance}: an accuracy difference, from 0 to 1")
    mlflow = mlflow or MlflowSettings.from_config()
    archives = set(places.model_store().glob("*.mar"))
    version, mar = package_version(version, alias, run_id, mlflow=mlflow)
    verified = verify_archive(mar)
    photos = gate.load_photos(folder, gate.archive_classes(mar))
    previous = _default_archive()
    registered = _register(version, mar)  # beside the default, which TorchServe keeps
    passed = False
    try:
        baseline_version = places.archive_version(previous) if previous else None
        candidate = gate.score(version, photos)
        baseline = gate.score(baseline_version, photos) if baseline_version else None
        passed = gate.passes(candidate, baseline, tolerance)
        gate.record(mlflow, candidate, baseline, passed, gate.folder_sha256(folder, photos))
    finally:
        if registered and not passed:
            _unregister(version)  # the server as before the gate, also when scoring broke
        if not passed and mar not in archives:
            mar.unlink(missing_ok=True)  # packaged for the gate alone
    figures = gate.explain(candidate, baseline, tolerance, folder)
    if passed:
        made = _make_default(version, mar, previous, registered, mlflow, keep)
        return True, f"gate passed v{version}: {figures}; {verified}; {made}"
    kept = f"v{baseline_version}" if baseline_version else "none"
    undone = f"; v{version} unregistered again" if registered else ""
    return False, f"gate refused v{version}: {figures}; default stays {kept}{undone}"


def rollback(mlflow: MlflowSettings | None = None, keep: int = KEEP) -> str:
    """The previous default of deployments.json again (re-registered from its archive when it was
    retired or the server restarted); the tags move with it."""
    with places.locked("deployments"):
        history = places.deployment_history()
        current = _default_archive()
        if current and history and history[-1] != current:
            history.append(current)
        if len(history) < 2:
            raise ts.TorchServeError(
                "nothing to roll back to: only one version was ever the default"
            )
        history.pop()
        mar = places.find_mar(history[-1])
        if mar is None:
            raise ts.TorchServeError(
                f"cannot roll back to {history[-1]}: it is not in {places.model_store()}; "
                "deploy that version again"
            )
        target = places.archive_version(mar.name)
        verified = verify_archive(mar)
        _register(target, mar)
        _set_default(target)
        places.save_deployment_history(history)
        _retire([*history, current] if current else history, keep)  # the one it left is recent
    was = places.archive_version(current) if current else None
    tags = _tag_default(mlflow or MlflowSettings.from_config(), target, was)
    return f"{verified}; catsdogs: default rolled back from v{was} to v{target}{tags}"


def scale(workers: int) -> str:
    if workers < 1:
        raise ConfigError(
            f"--workers {workers}: at least 1 (a default version without workers serves nothing); "
            "to take a version off the server, deploy or roll back to another"
        )
    query = urllib.parse.urlencode(
        {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
    )
    path = f"/models/{places.MODEL_NAME}?{query}"
    ts.check(ts.call("management", "PUT", path, timeout=300), f"scale to {workers}")
    entry = ts.wait_ready()
    return f"catsdogs v{entry['modelVersion']} (default): {ts.ready_workers(entry)} workers READY"


def listing() -> str:
    """Registered versions with their archive, workers and the forward pass the gate accepted
    (the workers serve float32 where this CPU lacks its units: CatsDogsForwardPass says), then
    the retired defaults whose archives rollback can bring back."""
    default = ts.default_version()
    entries = sorted(ts.describe("all"), key=lambda e: int(e["modelVersion"]))
    lines = []
    for entry in entries:
        mark = "*" if entry["modelVersion"] == default else " "
        mar = places.find_mar(entry["modelUrl"])
        lines.append(
            f"{mark} v{entry['modelVersion']}  {entry['modelUrl']}  "
            f"{ts.ready_workers(entry)}/{len(entry.get('workers', []))} workers READY  "
            f"{read_forward(mar) if mar else 'archive missing'}"
        )
    served = {e["modelUrl"] for e in entries}
    retired = dict.fromkeys(e for e in places.deployment_history() if e not in served)
    for entry in retired:
        where = "archive kept" if places.find_mar(entry) else "archive missing"
        lines.append(f"  v{places.archive_version(entry)}  {entry}  retired ({where})")
    return "\n".join(lines) or "no catsdogs version is registered"


def card(version: str, mlflow: MlflowSettings | None = None) -> str:
    """The model card of registry version `version`, read from its archive (packaged if needed)
    once the archive verifies: what `deploy` would serve is what it describes."""
    version, mar = package_version(version, mlflow=mlflow or MlflowSettings.from_config())
    verify_archive(mar)
    with zipfile.ZipFile(mar) as zf:
        if servable.CARD not in zf.namelist():
            raise MissingError(f"v{version} has no {servable.CARD}: published before cards were")
        return zf.read(servable.CARD).decode()


def _add_keep_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        type=int,
        default=KEEP,
        help=f"previous defaults that stay registered with workers (default {KEEP})",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.serving.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    back = sub.add_parser("rollback", help="make the previous default the default again")
    _add_keep_argument(back)
    registry.add_store_arguments(back)
    listed = sub.add_parser("list", help="registered versions, their workers, the retired ones")
    listed.add_argument("--card", metavar="N", help="print version N's model card instead")
    registry.add_store_arguments(listed)
    scaling = sub.add_parser("scale", help="set the workers of the default version")
    scaling.add_argument("--workers", type=int, required=True)
    registry.add_version_arguments(parser, required=False)  # deploying needs one: checked below
    _add_keep_argument(parser)
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
    chosen = [f"--{n.replace('_', '-')}" for n in registry.VERSION_ARGUMENTS if getattr(args, n)]
    if args.command and (chosen or args.gate or args.tolerance is not None):
        parser.error(f"{args.command} takes none of {', '.join(chosen) or '--gate, --tolerance'}")
    if not args.command and not chosen:
        parser.error("one of the arguments --model-version --alias --run-id is required")
    if args.keep < 0:
        parser.error(f"--keep {args.keep}: 0 or more previous versions")
    if args.command == "rollback":
        print(rollback(registry.store_of(args), args.keep))
    elif args.command == "list":
        print(card(args.card, registry.store_of(args)) if args.card else listing())
    elif args.command == "scale":
        print(scale(args.workers))
    elif args.gate:
        passed, message = deploy_gated(
            args.gate,
            args.tolerance or 0.0,
            args.model_version,
            args.alias,
            args.run_id,
            registry.store_of(args),
            args.keep,
        )
        print(message, file=sys.stdout if passed else sys.stderr)
        return 0 if passed else 1  # a refusal is a verdict, like smoke's
    elif args.tolerance is not None:
        parser.error("--tolerance goes with --gate DIR")
    else:
        print(
            deploy_version(
                args.model_version,
                args.alias,
                args.run_id,
                registry.store_of(args),
                args.keep,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
