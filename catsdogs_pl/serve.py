"""`python -m catsdogs_pl.serve start|stop|status`: TorchServe, natively, with the shared config.

The Java process runs in the state folder (`$CATSDOGS_HOME`), so its token file `key_file.json` and
its logs land there; `start` returns only when the server answers, and when a version was asked for,
only when that version has READY workers (TorchServe's /ping is healthy long before).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from catsdogs_pl import settings
from catsdogs_pl import torchserve as ts

METRICS_CONFIG = settings.ROOT / "configs" / "torchserve" / "metrics.yaml"


def _torchserve() -> str:
    """The torchserve launcher of this Python environment (works without an activated venv)."""
    return shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"


def is_up() -> bool:
    try:
        return ts.call("inference", "GET", "/ping", timeout=5).status == 200
    except ts.TorchServeError:
        return False


def start(mar: Path | None = None, timeout: float = 120) -> str:
    """Start TorchServe (optionally with one archive as the default version) and wait for it."""
    if is_up():
        return "TorchServe is already running"
    home = settings.home()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    settings.model_store().mkdir(parents=True, exist_ok=True)
    (home / ts.KEY_FILE).unlink(missing_ok=True)  # a stale key would be read before the new one
    env = {
        **os.environ,
        "TS_METRICS_CONFIG": str(METRICS_CONFIG),  # absolute: the server's cwd is the state folder
        "LOG_LOCATION": str(home / "logs"),
        "METRICS_LOCATION": str(home / "logs"),
        "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads starve other workers (bench/serve.py)
    }
    cmd = [_torchserve(), "--start", "--ncs", "--model-store", str(settings.model_store())]
    cmd += ["--ts-config", str(settings.TS_CONFIG)]
    if mar is not None:
        cmd += ["--models", f"{settings.MODEL_NAME}={mar.name}"]
    # no pipes: the Java server inherits them and would keep run() waiting forever
    subprocess.run(
        cmd, cwd=home, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout
    while not (home / ts.KEY_FILE).exists() or not is_up():
        if time.monotonic() > deadline:
            raise ts.TorchServeError(
                f"TorchServe did not answer within {timeout}s: see {home / 'logs'}/ts_log.log"
            )
        time.sleep(0.5)
    if mar is not None:
        ts.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
    return f"TorchServe is up: inference {settings.address('inference')}, state in {home}"


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
        return f"TorchServe is not running (inference {settings.address('inference')})"
    lines = [f"TorchServe is up: inference {settings.address('inference')}"]
    default = ts.default_version()
    for entry in ts.describe("all"):
        mark = " (default)" if entry["modelVersion"] == default else ""
        lines.append(
            f"  {entry['modelName']} v{entry['modelVersion']}{mark}: "
            f"{ts.ready_workers(entry)}/{len(entry.get('workers', []))} workers READY"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catsdogs_pl.serve", description=__doc__)
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--mar", type=Path, help="start with this archive from the model store")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.mar))
        elif args.command == "stop":
            print(stop())
        else:
            print(status())
    except (ts.TorchServeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
