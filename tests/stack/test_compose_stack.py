"""The compose stack as users run it, on a real Docker engine.

`make images`, then docker-compose with docker-compose.yml and compose.host.yml (host networking:
the engines here have no bridge network), the service images chosen by CATSDOGS_POSTGRES_IMAGE /
CATSDOGS_PROMETHEUS_IMAGE (upstream tags by default). postgres -> mlflow on PostgreSQL ->
torchserve; the `train` profile's trainer trains demo.yaml through the MLflow server and deploys;
the smoke test runs from the host against the published inference port. Then: health and users,
Prometheus targets and rules, restart and rollback, `down`/`up` keeps everything, SIGTERM exits 0.
The tests run in file order on one stack. Skipped when no Docker engine answers, unless
CATSDOGS_STACK_REQUIRED=1 (CI) makes that a failure. Grafana starts only with
CATSDOGS_STACK_GRAFANA=1 (it has no image on machines without a registry; the workflow sets it).
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
from mlflow import MlflowClient

from catsdogs_pl import settings
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.deployment import COMPOSE_FILE, compose_binary, run_smoke

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PROJECT = "catsdogs-stacktest"  # never the user's own `catsdogs` project and volumes
OVERRIDE = Path(__file__).with_name("compose.host.yml")
PASSWORD = "p@ss/w%rd:1"  # each of @ / % : breaks a URI that pastes it unencoded
INFERENCE_PORT = "8001"
MLFLOW = "http://127.0.0.1:5000"
PROMETHEUS = "http://127.0.0.1:9090"
SERVICES = ["postgres", "mlflow", "prometheus", "torchserve", "monitor"]
if os.environ.get("CATSDOGS_STACK_GRAFANA") == "1":
    SERVICES.append("grafana")
PORTS = (5000, 5432, 8001, 8081, 8082, 8083, 8084, 9090)
# The stack binds fixed host ports (host networking) and uses one compose project and one image
# tag: two runs at once on one machine (two clones, two `make test`) would take each other's
# ports, containers and volumes. Free ports would mean a compose file of their own for the test,
# so instead the whole stack fixture holds this machine-wide lock: concurrent runs take turns.
LOCK = Path(tempfile.gettempdir()) / "catsdogs-stack-test.lock"


def _engine_problem() -> str | None:
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker: {exc}"
    return None if info.returncode == 0 else info.stderr.strip()[-300:]


@contextlib.contextmanager
def _one_stack_at_a_time() -> Iterator[None]:
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


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> str:
    """Run a command; its standard output, or a failure that shows all it printed."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{output[-4000:]}"
    return done.stdout


def _get_json(url: str) -> Any:
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

    def compose(self, *args: str, timeout: float = 600) -> str:
        base = [compose_binary(), "-p", PROJECT, "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE)]
        return _run([*base, "--profile", "train", *args], self.env, timeout)

    def container(self, service: str) -> str:
        return self.compose("ps", "--all", "--quiet", service).split()[0]

    def inspect(self, service: str, template: str) -> str:
        return _run(["docker", "inspect", "-f", template, self.container(service)], self.env)

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
        self.compose("cp", "torchserve:/srv/catsdogs/key_file.json", str(self.home))

    def versions(self) -> tuple[list[str], str | None]:
        """(registered versions, default) as TorchServe's management API says."""
        return sorted(e["modelVersion"] for e in ts.describe("all")), ts.default_version()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, report) -> Iterator[Stack]:
    problem = _engine_problem()
    if problem and os.environ.get("CATSDOGS_STACK_REQUIRED") == "1":
        pytest.fail(f"CATSDOGS_STACK_REQUIRED=1 but no Docker engine answers: {problem}")
    if problem:
        pytest.skip(
            f"no Docker engine answers ({problem}); where no registry is reachable, "
            'eval "$(../shared/tools/docker-here.sh --standins)" starts one'
        )
    with _one_stack_at_a_time():
        yield from _stack(tmp_path_factory, report)


def _stack(tmp_path_factory: pytest.TempPathFactory, report) -> Iterator[Stack]:
    busy = [p for p in PORTS if _answers(p)]
    assert not busy, f"ports {busy} are in use here: the stack's services bind them (host network)"
    home, data = tmp_path_factory.mktemp("stack-home"), tmp_path_factory.mktemp("stack-data")
    stack = Stack(home, data)
    started = time.monotonic()
    _run(["make", "images", f"CATSDOGS_TAG={stack.env['CATSDOGS_TAG']}"], stack.env, 3600)
    sizes = {}
    for target in ("serve", "train", "mlflow"):
        image = f"catsdogs-{target}:{stack.env['CATSDOGS_TAG']}"
        size = _run(["docker", "image", "inspect", "-f", "{{.Size}}", image], stack.env)
        sizes[image] = f"{int(size) / 1e9:.2f} GB"
    report("stack: make images", {"seconds": round(time.monotonic() - started), **sizes})
    patch = pytest.MonkeyPatch()  # the host's client: the published ports, the copied token
    patch.setenv("CATSDOGS_HOME", str(home))
    patch.setenv("TS_INFERENCE_ADDRESS", f"http://127.0.0.1:{INFERENCE_PORT}")
    patch.setenv("TS_MANAGEMENT_ADDRESS", "http://127.0.0.1:8081")
    patch.setenv("TS_METRICS_ADDRESS", "http://127.0.0.1:8082")
    stack.compose("down", "--volumes", "--remove-orphans")  # what an aborted run left
    try:
        # torchserve is healthy only once the trainer deployed a version: started, not awaited
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
        _run(["docker", "image", "prune", "--force"], stack.env)  # the CUDA layers are GBs


def test_trainer_trains_through_mlflow_and_deploys(stack: Stack, report) -> None:
    started = time.monotonic()
    out = stack.train()
    assert "catsdogs v1: registered and default now (was none)" in out, out[-3000:]
    stack.wait_healthy("torchserve")
    assert stack.versions() == (["1"], "1")
    report("stack: trainer (demo.yaml) + deploy", {"seconds": round(time.monotonic() - started)})


def test_services_healthy_and_unprivileged(stack: Stack, report) -> None:
    health = {s: stack.inspect(s, "{{.State.Health.Status}}").strip() for s in SERVICES}
    report("stack: docker inspect health", health)
    assert set(health.values()) == {"healthy"}, health
    users = {}
    for service in SERVICES:
        top = _run(["docker", "top", stack.container(service), "-eo", "pid,uid"], stack.env)
        users[service] = sorted({int(line.split()[1]) for line in top.splitlines()[1:]})
    report("stack: process uids", users)
    ours = {"torchserve", "mlflow", "monitor"}
    for service in ours:
        assert users[service] == [10001], (service, users[service])
    for service in set(SERVICES) - ours:  # their images' own users
        assert 0 not in users[service], (service, users[service])


def test_smoke_on_the_published_inference_port(stack: Stack, report) -> None:
    report("stack: smoke test", run_smoke("1"))


def test_registry_on_postgresql_and_one_mlflow_version(stack: Stack, report) -> None:
    query = "select name, version, status from model_versions order by version"
    rows = stack.compose(
        "exec", "-T", "postgres", "psql", "-U", "mlflow", "-d", "mlflow", "-At", "-c", query
    )
    assert rows.split() == ["catsdogs|1|READY"], rows
    version = MlflowClient(MLFLOW).get_model_version(settings.MODEL_NAME, "1")
    run = MlflowClient(MLFLOW).get_run(version.run_id)
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    versions = {}
    for target in ("train", "mlflow"):
        image = f"catsdogs-{target}:{stack.env['CATSDOGS_TAG']}"
        code = "import mlflow; print(mlflow.__version__)"
        run = ["docker", "run", "--rm", image, "python", "-c", code]
        versions[target] = _run(run, stack.env).strip()
    report("stack: registry rows in PostgreSQL", {"rows": rows.split(), "mlflow": versions})
    assert versions["train"] == versions["mlflow"]  # the client speaks the server's version


def test_prometheus_scrapes_both_targets_and_loads_the_rules(stack: Stack, report) -> None:
    # The targets are up from the start (serve's endpoint answers before any version exists),
    # so wait for the scrape that saw v1's READY workers too: one scrape interval (15 s) after
    # the deployment, which the tests before this one may not have outlasted.
    jobs = ("torchserve", "catsdogs-workers", "catsdogs-monitor")
    query = f"{PROMETHEUS}/api/v1/query?query=catsdogs_ready_workers"
    deadline = time.monotonic() + 90
    while True:
        targets = _get_json(f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        ready = {
            r["metric"]["model_version"]: float(r["value"][1])
            for r in _get_json(query)["data"]["result"]
        }
        if all(health.get(job) == "up" for job in jobs) and ready.get("1", 0) > 0:
            break
        assert time.monotonic() < deadline, (targets, ready)
        time.sleep(3)
    groups = _get_json(f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    report("stack: prometheus", {"targets": health, "ready workers": ready, "rules": rules})
    assert set(rules) == {
        "CatsDogsHighErrorRate",
        "CatsDogsHighLatencyP95",
        "CatsDogsNoReadyWorker",
        "CatsDogsInputDrift",
        "CatsDogsConfidenceDrop",
        "CatsDogsMonitorDown",
    }
    assert set(rules.values()) == {"ok"}, rules


def test_restart_serves_the_last_version_and_rollback_works(stack: Stack, report) -> None:
    out = stack.train()
    assert "catsdogs v2: registered and default now (was v1)" in out, out[-3000:]
    stack.compose("restart", "torchserve")
    stack.wait_healthy("torchserve")
    after_restart = stack.versions()
    assert after_restart == (["2"], "2")  # the last deployed version, and only it
    rollback = stack.deploy("rollback")
    assert "default rolled back from v2 to v1" in rollback, rollback
    assert stack.versions() == (["1", "2"], "1")
    report(
        "stack: restart and rollback",
        {"after restart": after_restart, "rollback": rollback.strip().splitlines()[-1]},
    )


def test_down_and_up_lose_nothing(stack: Stack, report) -> None:
    stack.compose("down")  # no --volumes: what users do to stop the stack
    stack.wait_healthy(*SERVICES)
    client = MlflowClient(MLFLOW)
    versions = sorted(v.version for v in client.search_model_versions("name='catsdogs'"))
    assert versions == ["1", "2"]
    weights = client.download_artifacts(
        client.get_model_version(settings.MODEL_NAME, "2").run_id,
        "servable/weights.pt",
        str(stack.home),
    )
    assert Path(weights).stat().st_size > 0
    served = stack.versions()
    assert served == (["1"], "1")  # the default after the rollback comes back by itself
    report(
        "stack: after down/up",
        {
            "registry versions": versions,
            "v2 weights bytes": Path(weights).stat().st_size,
            "served": served,
        },
    )


def test_sigterm_stops_torchserve_cleanly(stack: Stack, report) -> None:
    started = time.monotonic()
    _run(["docker", "stop", "--time", "60", stack.container("torchserve")], stack.env)
    code = stack.inspect("torchserve", "{{.State.ExitCode}}").strip()
    report(
        "stack: docker stop torchserve",
        {"exit": code, "seconds": round(time.monotonic() - started, 1)},
    )
    assert code == "0"
