"""`python -m catsdogs_pl.serving.serve start|run|stop|status|ready|key`: TorchServe with the shared config.

`start` runs it in the background (laptops, tests); `run` in the foreground (the container's command);
`ready` is the health check (exit 0 when the default version has a READY worker); `key` prints the
current inference key (renewed when it expired) for clients that do not share the state folder.

The Java process runs in the state folder (`$CATSDOGS_HOME`), so its token file `key_file.json` and
its logs land there; `start` returns only when the server answers, and when a version was asked for,
only when that version has READY workers (TorchServe's /ping is healthy long before).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from catsdogs_pl import capture, errors, places, prometheus, signing
from catsdogs_pl.serving import torchserve as ts

METRICS_CONFIG = places.ROOT / "configs" / "torchserve" / "metrics.yaml"


def _torchserve() -> str:
    """The torchserve launcher of this Python environment (works without an activated venv)."""
    return shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"


def is_up() -> bool:
    """A server answers on the inference address: healthy or not, with a valid key or not (a
    running server whose key was refused is still running, and its key file must stay)."""
    try:
        ts.call("inference", "GET", "/ping", timeout=5)
        return True
    except ts.TorchServeError:
        return False


def _prepare(mar: Path | None) -> tuple[list[str], dict[str, str], Path]:
    """The one TorchServe command line, environment and working folder of `start` and `run`."""
    home = places.home()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    places.model_store().mkdir(parents=True, exist_ok=True)
    (home / ts.KEY_FILE).unlink(missing_ok=True)  # a stale key would be read before the new one
    env = {
        **os.environ,
        "TS_METRICS_CONFIG": str(METRICS_CONFIG),  # absolute: the server's cwd is the state folder
        "LOG_LOCATION": str(home / "logs"),
        "METRICS_LOCATION": str(home / "logs"),
        "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads starve other workers (bench/serve.py)
        capture.ENV: capture.settings(places.capture_properties(), places.captures()),
        # what workers verify every archive by before they load it (the handler refuses without)
        signing.PUBLIC_ENV: str(signing.public_key_file(places.home())),
        # TorchServe binds where every client of ours looks (CATSDOGS_BIND_HOST included)
        **{f"TS_{k.upper()}_ADDRESS": places.address(k, bind=True) for k in places.ADDRESS_KINDS},
    }
    cmd = [_torchserve(), "--start", "--ncs", "--model-store", str(places.model_store())]
    cmd += ["--ts-config", str(places.ts_config()), "--log-config", str(places.TS_LOG_CONFIG)]
    if mar is not None:
        cmd += ["--models", f"{places.MODEL_NAME}={mar.name}"]
    return cmd, env, home


def start(mar: Path | None = None, timeout: float = 120) -> str:
    """Start TorchServe in the background (optionally with one archive as the default version)
    and wait for it."""
    if is_up():
        return "TorchServe is already running"
    cmd, env, home = _prepare(mar)
    # no pipes: the Java server inherits them and would keep run() waiting forever
    launched = subprocess.run(
        cmd, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    if launched.returncode != 0:
        raise ts.TorchServeError(
            f"`{' '.join(cmd)}` exited {launched.returncode}: see {home / 'logs'}/ts_log.log"
        )
    deadline = time.monotonic() + timeout
    keys = ts.token_auth()  # no key file comes with token authorization off
    while (keys and not (home / ts.KEY_FILE).exists()) or not is_up():
        if time.monotonic() > deadline:
            raise ts.TorchServeError(
                f"TorchServe did not answer within {timeout}s: see {home / 'logs'}/ts_log.log"
            )
        time.sleep(0.5)
    if mar is not None:
        ts.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
    return f"TorchServe is up: inference {places.address('inference')}, state in {home}"


def last_deployed() -> Path | None:
    """The archive of the newest default set by `deploy` that is still in the model store."""
    for entry in reversed(places.deployment_history()):
        mar = places.find_mar(entry)
        if mar is not None:
            return mar
    return None


def key() -> str:
    """The current inference key, renewed first when it expired; "" with token authorization off."""
    ts.call("inference", "GET", "/ping", timeout=10)  # a refused key is renewed here
    return ts.read_key("inference") or ""


def worker_metrics() -> str:
    """Prometheus text with the READY workers of each registered version: TorchServe exports no
    worker status, and "no READY worker" is the outage an alert must catch."""
    lines = [
        "# HELP catsdogs_ready_workers READY TorchServe workers per registered catsdogs version",
        "# TYPE catsdogs_ready_workers gauge",
    ]
    try:
        default = ts.default_version()
        for entry in ts.describe("all"):
            version = entry["modelVersion"]
            labels = f'model_version="{version}",default="{str(version == default).lower()}"'
            lines.append(f"catsdogs_ready_workers{{{labels}}} {ts.ready_workers(entry)}")
        up = 1
    except ts.TorchServeError:
        up = 0
    lines += [
        "# HELP catsdogs_management_up 1 when TorchServe's management API answered this scrape",
        "# TYPE catsdogs_management_up gauge",
        f"catsdogs_management_up {up}",
    ]
    return "\n".join(lines) + "\n"


def run() -> int:
    """TorchServe in the foreground (the container's command), serving the last deployed version
    again after a restart, with worker metrics beside it; SIGTERM and SIGINT stop it cleanly.
    Returns TorchServe's exit code."""
    try:
        mar = last_deployed()
    except errors.ConfigError as exc:  # serving nothing beats a restart loop; deploy mends it
        print(f"warning: starting without a model: {exc}", file=sys.stderr)
        mar = None
    cmd, env, home = _prepare(mar)
    server = subprocess.Popen([*cmd, "--foreground"], cwd=home, env=env)
    prometheus.expose("worker_metrics", worker_metrics)

    def forward(signum: int, frame: object) -> None:
        subprocess.run([_torchserve(), "--stop"], cwd=home, check=False)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return server.wait()


def ready() -> tuple[bool, str]:
    """Readiness, for health checks: the default version of catsdogs has a READY worker."""
    try:
        found = ts.describe("")
    except ts.TorchServeError as exc:
        return False, str(exc)
    if not found:
        return False, f"no {places.MODEL_NAME} version is registered: deploy one"
    workers = ts.ready_workers(found[0])
    return (
        workers > 0,
        f"{places.MODEL_NAME} v{found[0]['modelVersion']}: {workers} READY workers",
    )


def stop(timeout: float = 60) -> str:
    """Stop the server of the pid file, also one that never became ready."""
    was_up = is_up()
    subprocess.run([_torchserve(), "--stop"], check=False, stdout=subprocess.DEVNULL)
    if not was_up:
        return "TorchServe is not running"
    deadline = time.monotonic() + timeout
    while is_up() and time.monotonic() < deadline:
        time.sleep(0.5)
    return "TorchServe stopped" if not is_up() else "TorchServe did not stop in time"


def status() -> str:
    if not is_up():
        return f"TorchServe is not running (inference {places.address('inference')})"
    lines = [f"TorchServe is up: inference {places.address('inference')}"]
    default = ts.default_version()
    for entry in ts.describe("all"):
        mark = " (default)" if entry["modelVersion"] == default else ""
        lines.append(
            f"  {entry['modelName']} v{entry['modelVersion']}{mark}: "
            f"{ts.ready_workers(entry)}/{len(entry.get('workers', []))} workers READY"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.serving.serve", description=__doc__
    )
    parser.add_argument("command", choices=("start", "run", "stop", "status", "ready", "key"))
    parser.add_argument("--mar", type=Path, help="start with this archive from the model store")
    args = parser.parse_args(argv)
    if args.command == "start":
        print(start(args.mar))
    elif args.command == "run":
        return run()
    elif args.command == "ready":
        ok, message = ready()
        print(message)
        return 0 if ok else 1
    elif args.command == "stop":
        print(stop())
    elif args.command == "key":
        print(key())
    else:
        print(status())
    return 0


if __name__ == "__main__":
    sys.exit(errors.exit_code(main))
