"""The compose stack of tests/stack on a real Docker engine: one project, its services on the host's
network, and the host-side view of it (published ports, TorchServe's token copied from its volume).

`make images`, then docker-compose with docker-compose.yml and tests/stack/compose.host.yml (host
networking: the engines here have no bridge network), the service images chosen by
CATSDOGS_POSTGRES_IMAGE / CATSDOGS_PROMETHEUS_IMAGE (upstream tags by default). The `stack`
fixture (tests/stack/conftest.py) brings it up once for the whole folder through `bring_up`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catsdogs_pl import places
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.deployment import COMPOSE_FILE, compose_binary

PROJECT = "catsdogs-stacktest"  # never the user's own `catsdogs` project and volumes
OVERRIDE = places.ROOT / "tests" / "stack" / "compose.host.yml"
PASSWORD = "p@ss/w%rd:1"  # each of @ / % : breaks a URI that pastes it unencoded
INFERENCE_PORT = "8001"
MLFLOW = "http://127.0.0.1:5000"
PROMETHEUS = "http://127.0.0.1:9090"
SERVICES = ["postgres", "mlflow", "prometheus", "torchserve", "monitor"]
if os.environ.get("CATSDOGS_STACK_GRAFANA") == "1":
    SERVICES.append("grafana")
PORTS = (5000, 5432, 8001, 8081, 8082, 8083, 8084, 9090)
STATE = "/srv/catsdogs"  # torchserve's state volume, as mounted in its container
# The stack binds fixed host ports (host networking) and uses one compose project and one image
# tag: two runs at once on one machine (two clones, two `make test`) would take each other's
# ports, containers and volumes. Free ports would mean a compose file of their own for the test,
# so instead the whole stack fixture holds this machine-wide lock: concurrent runs take turns.
LOCK = Path(tempfile.gettempdir()) / "catsdogs-stack-test.lock"


def engine_problem() -> str | None:
    """Why no Docker engine answers, or None when one does."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker: {exc}"
    return None if info.returncode == 0 else info.stderr.strip()[-300:]


@contextlib.contextmanager
def one_stack_at_a_time() -> Iterator[None]:
    """LOCK held for the block (fcntl.flock: released by the kernel if the holder dies)."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another run's stack test runs
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_ok(cmd: list[str], env: dict[str, str], timeout: float = 600) -> str:
    """Run a command; its standard output, or a failure that shows all it printed."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{output[-4000:]}"
    return done.stdout


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class Stack:
    """docker-compose on one project, and the host-side view of it (token, addresses)."""

    def __init__(self, home: Path, data: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "CATSDOGS_TAG": os.environ.get("CATSDOGS_TAG", "test"),
            "POSTGRES_PASSWORD": PASSWORD,
            "CATSDOGS_INFERENCE_PORT": INFERENCE_PORT,
            "CATSDOGS_DATA": str(data),
            "FIT_CONFIG": "demo.yaml",
            "DATA_SOURCE": "data/synthetic",
        }

    def command(self, *args: str) -> list[str]:
        """The docker-compose command line of this project (every profile) with `args`."""
        base = [compose_binary(), "-p", PROJECT, "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE)]
        return [*base, "--profile", "train", *args]

    def compose(self, *args: str, timeout: float = 600) -> str:
        return run_ok(self.command(*args), self.env, timeout)

    def container(self, service: str) -> str:
        return self.compose("ps", "--all", "--quiet", service).split()[0]

    def inspect(self, service: str, template: str) -> str:
        return run_ok(["docker", "inspect", "-f", template, self.container(service)], self.env)

    def train(self) -> str:
        """The trainer as users run it: fit demo.yaml through MLflow, deploy the new version."""
        return self.compose("run", "--rm", "trainer", timeout=1200)

    def deploy(self, *args: str) -> str:
        cmd = ["python", "-m", "catsdogs_pl.serving.deploy", *args]
        return self.compose("run", "--rm", "--no-deps", "trainer", *cmd)

    def wait_healthy(self, *services: str, timeout: float = 300) -> None:
        """Up, then polled until each health check passes. Not `up --wait`: it gives up at once
        on a container that is `unhealthy` now, and TorchServe is unhealthy until its first
        deployment whenever the training outlasts the 120 s start period (a loaded machine),
        although its next check after the deployment passes."""
        self.compose("up", "-d", "--no-build", *services)
        deadline = time.monotonic() + timeout
        for service in services:
            while (
                health := self.inspect(service, "{{.State.Health.Status}}").strip()
            ) != "healthy":
                assert time.monotonic() < deadline, f"{service} still {health} after {timeout} s"
                time.sleep(2)
        self.copy_key()

    def copy_key(self) -> None:
        """The host's client reads TorchServe's token from the state volume, as users do."""
        self.compose("cp", f"torchserve:{STATE}/{ts.KEY_FILE}", str(self.home))

    def versions(self) -> tuple[list[str], str | None]:
        """(registered versions, default) as TorchServe's management API says."""
        return sorted(e["modelVersion"] for e in ts.describe("all")), ts.default_version()


def bring_up(tmp_path_factory: pytest.TempPathFactory, report) -> Iterator[Stack]:
    """The body of the `stack` fixture, its caller holding LOCK: images built, the stack up with
    the host's client pointed at it (torchserve started, not awaited: it is healthy only once a
    version is deployed); at the end the logs saved, containers, volumes and dangling images gone."""
    busy = [p for p in PORTS if _answers(p)]
    assert not busy, f"ports {busy} are in use here: the stack's services bind them (host network)"
    home, data = tmp_path_factory.mktemp("stack-home"), tmp_path_factory.mktemp("stack-data")
    stack = Stack(home, data)
    started = time.monotonic()
    run_ok(["make", "images", f"CATSDOGS_TAG={stack.env['CATSDOGS_TAG']}"], stack.env, 3600)
    sizes = {}
    for target in ("serve", "train", "mlflow"):
        image = f"catsdogs-{target}:{stack.env['CATSDOGS_TAG']}"
        size = run_ok(["docker", "image", "inspect", "-f", "{{.Size}}", image], stack.env)
        sizes[image] = f"{int(size) / 1e9:.2f} GB"
    report("stack: make images", {"seconds": round(time.monotonic() - started), **sizes})
    patch = pytest.MonkeyPatch()  # the host's client: the published ports, the copied token
    patch.setenv("CATSDOGS_HOME", str(home))
    patch.setenv("TS_INFERENCE_ADDRESS", f"http://127.0.0.1:{INFERENCE_PORT}")
    patch.setenv("TS_MANAGEMENT_ADDRESS", "http://127.0.0.1:8081")
    patch.setenv("TS_METRICS_ADDRESS", "http://127.0.0.1:8082")
    stack.compose("down", "--volumes", "--remove-orphans")  # what an aborted run left
    try:
        waited = [s for s in SERVICES if s != "torchserve"]
        stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", *waited)
        stack.compose("up", "-d", "--no-build", "torchserve")
        yield stack
    finally:
        patch.undo()
        log = tmp_path_factory.getbasetemp() / "stack.log"  # what each service printed last
        log.write_text(stack.compose("logs", "--no-color", "--tail", "60"))
        report("stack: service logs", str(log))
        stack.compose("down", "--volumes", "--remove-orphans")
        run_ok(["docker", "image", "prune", "--force"], stack.env)  # the CUDA layers are GBs
