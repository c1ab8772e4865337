"""The stack under its own faults (issue 21): SIGKILL to one service at a time while steady clients
send photos to the published inference port, on the stack of tests/stack (after the stack tests,
as conftest.py orders them; alone, a first training deploys a version).

The signal hits the container's main process from outside Docker, as a crash or the OOM killer
would; `docker kill` would not do: Docker takes it for a deliberate stop and restarts nothing. For
each kill: the container comes back through its restart policy alone (its restart count goes up,
its health check passes again); the seconds until a prediction answered 200 again and the client
requests that failed meanwhile; and nothing lost: MLflow's registry versions, runs and artifact
files, the entries of deployments.json and the archives of the model store, listed before and
after. Last, postgres is killed while a trainer trains: the trainer registers its version or exits
non-zero saying what failed (never hangs), and a second run registers and deploys a new version.
One line of figures per kill in the session's figures ("chaos: ...").

The clients stand for users outside the state volume: TorchServe issues new keys at each start,
so after its restart they read the new key file (copied from the volume as soon as it is there,
as the stack test's copy_key does); requests refused meanwhile count as failed.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from catsdogs_pl.serving import deploy
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.load import Load, photos, run_load
from tests.helpers.stack import MLFLOW, PROJECT, SERVICES, STATE, Stack, run_ok

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CLIENTS = 3
INTERVAL = 0.2  # s between one client's requests: 15 req/s at most, steady on 2 cores
LOAD_LIMIT = 1200  # s: the clients stop by themselves then, whatever happens here
BACK_WITHIN = 240  # s for a killed container to be healthy and a prediction to answer 200
TRAIN_WITHIN = 900  # s for the interrupted trainer to finish: longer is a hang
KILLED = ("postgres", "mlflow", "torchserve", "monitor")
INFERENCE = {"torchserve"}  # the only service on the inference path: the others fail no request
REGISTERED = re.compile(r"catsdogs v(\d+): registered and default now")


def _inventory(stack: Stack) -> dict[str, set[str]]:
    """What a kill must not lose: registry versions, runs and artifact files (MLflow), entries of
    deployments.json and archives of the model store (torchserve's state volume)."""
    client = MlflowClient(MLFLOW)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000)
    history = stack.compose("exec", "-T", "torchserve", "cat", f"{STATE}/deployments.json")
    return {
        "registry versions": {f"{v.name} v{v.version}" for v in client.search_model_versions()},
        "runs": {r.info.run_id for r in runs},
        "artifact files": _files(stack, "mlflow", "/mlartifacts"),
        "deployments.json entries": {f"{i}: {e}" for i, e in enumerate(json.loads(history))},
        "model-store files": _files(stack, "torchserve", f"{STATE}/model-store"),
    }


def _files(stack: Stack, service: str, folder: str) -> set[str]:
    """Path and size of each file under `folder` in the service's container."""
    found = stack.compose(
        "exec", "-T", service, "find", folder, "-type", "f", "-printf", "%P %s\\n"
    )
    return set(found.splitlines())


def _lost(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    return {
        kind: sorted(before[kind] - after[kind]) for kind in before if before[kind] - after[kind]
    }


def _counts(inventory: dict[str, set[str]]) -> dict[str, int]:
    return {kind: len(items) for kind, items in inventory.items()}


def _container(cid: str) -> tuple[int, str, str, str]:
    """(restart count, start time, status, health) of a container."""
    template = "{{.RestartCount}} {{.State.StartedAt}} {{.State.Status}} {{.State.Health.Status}}"
    done = subprocess.run(
        ["docker", "inspect", "-f", template, cid], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    restarts, started, status, health = done.stdout.split()
    return int(restarts), started, status, health


def _follow_key(stack: Stack, cid: str) -> None:
    """The host's copy of key_file.json made the server's (atomically: clients read it while it
    changes); nothing while the server has none or it cannot be read."""
    done = subprocess.run(
        ["docker", "exec", cid, "cat", f"{STATE}/{ts.KEY_FILE}"], capture_output=True, timeout=30
    )
    try:
        json.loads(done.stdout)
    except ValueError:
        return
    host = stack.home / ts.KEY_FILE
    if not host.exists() or host.read_bytes() != done.stdout:
        partial = host.with_name(f".{ts.KEY_FILE}.partial")
        partial.write_bytes(done.stdout)
        os.replace(partial, host)


@dataclass
class Clients:
    """The steady clients, and the outages (kill, end) that account for their failures."""

    load: Load
    outages: list[tuple[float, float]] = field(default_factory=list)

    def window(self, killed: float, end: float) -> list[tuple[float, float, int, str]]:
        """The answers to requests that were under way at some time from `killed` to `end`."""
        return [a for a in list(self.load.answers) if a[0] <= end and a[0] + a[1] >= killed]

    def unaccounted(self) -> list[tuple[float, float, int, str]]:
        """Failed requests outside every outage."""
        return [
            a
            for a in self.load.failed()
            if not any(a[0] <= end and a[0] + a[1] >= killed for killed, end in self.outages)
        ]


@dataclass
class Outage:
    """One kill as the container and the clients saw it (seconds from the kill: once the signal
    was sent)."""

    service: str
    restarts: int  # the container's restart count once it came back
    healthy_after: float
    answered_after: float  # the first 200 on a prediction sent after the kill
    requests: int  # sent between the kill and the end of the outage
    failed: dict[str, int]  # of those, the failed ones by what the client saw

    def row(self, lost: dict[str, list[str]]) -> dict[str, object]:
        return {
            "came back": f"restart #{self.restarts}, healthy after {self.healthy_after:.1f} s",
            "inference answered after s": round(self.answered_after, 1),
            "failed requests": sum(self.failed.values()),
            "of requests": self.requests,
            "failures": self.failed,
            "rows/files lost": sum(len(items) for items in lost.values()),
        }


def _failure(status: int, detail: str) -> str:
    if "key" in detail.lower():  # refused, or not renewed with the old API key
        return "key refused"
    return f"HTTP {status}" if status else "no connection"


def _crash(stack: Stack, cid: str) -> None:
    """SIGKILL to the container's main process from outside Docker, as the kernel's OOM killer or
    any crash ends it. Not `docker kill`: Docker takes that for a deliberate stop and restarts the
    container under no policy (`always` included). The signal comes from a throwaway container of
    the same image in the host's PID namespace (root there), so the host user needs no rights on
    the container's processes."""
    pid, image = run_ok(
        ["docker", "inspect", "-f", "{{.State.Pid}} {{.Config.Image}}", cid], stack.env
    ).split()
    helper = ["docker", "run", "--rm", "--network", "none", "--pid", "host", "--user", "0"]
    run_ok([*helper, "--entrypoint", "sh", image, "-c", f"kill -KILL {pid}"], stack.env)


def _kill(stack: Stack, service: str, clients: Clients) -> Outage:
    """SIGKILL the service's main process, then only watch: its restart policy brings it back."""
    load = clients.load
    assert not load.stop.is_set() and load.answers, "the clients must be running"
    cid = stack.container(service)
    restarts, started, status, health = _container(cid)
    assert (status, health) == ("running", "healthy"), (service, status, health)
    sent = time.monotonic()  # the signal leaves within the helper's start (about a second)
    _crash(stack, cid)
    killed = time.monotonic()  # the helper has returned: the process is gone
    healthy_at = answered_at = None
    while healthy_at is None or answered_at is None:
        now = time.monotonic()
        assert now - killed < BACK_WITHIN, (
            f"{service} killed {now - killed:.0f} s ago: container (restarts, started, status, "
            f"health) {_container(cid)}, healthy after {healthy_at}, a prediction answered after "
            f"{answered_at}; the clients' last answers {load.answers[-3:]}"
        )
        state = _container(cid)
        came_back = state[0] > restarts or state[1] != started
        if healthy_at is None and came_back and state[2:] == ("running", "healthy"):
            healthy_at = now
        if service == "torchserve" and came_back:
            _follow_key(stack, cid)  # each start issues new keys
        if answered_at is None:
            answered = [a[0] + a[1] for a in list(load.answers) if a[2] == 200 and a[0] > killed]
            answered_at = min(answered) if answered else None
        time.sleep(0.5)
    end = max(healthy_at, answered_at)
    window = clients.window(sent, end)  # with the requests cut off by the kill itself
    failed: dict[str, int] = {}
    for _, _, code, detail in window:
        if code != 200:
            failed[_failure(code, detail)] = failed.get(_failure(code, detail), 0) + 1
    clients.outages.append((sent, end))
    restarts = _container(cid)[0]
    return Outage(service, restarts, healthy_at - killed, answered_at - killed, len(window), failed)


@pytest.fixture(scope="module")
def deployed(stack: Stack) -> Stack:
    """Every service up and healthy with a deployed version (TorchServe again after the stack
    tests' `docker stop`; a first training when this module runs alone)."""
    stack.compose("up", "-d", "--no-build", *SERVICES)
    history = stack.compose(
        "exec", "-T", "torchserve", "sh", "-c", f"cat {STATE}/deployments.json || echo []"
    )
    if not json.loads(history):
        out = stack.train()
        assert REGISTERED.search(out), out[-3000:]
    stack.wait_healthy(*SERVICES)
    return stack


@pytest.fixture(scope="module")
def clients(deployed: Stack, report) -> Iterator[Clients]:
    """CLIENTS clients on 127.0.0.1 for the whole module (LOAD_LIMIT at most)."""
    images, kind = photos(24)
    started = time.monotonic()
    load, threads = run_load(CLIENTS, LOAD_LIMIT, images, INTERVAL)
    time.sleep(3)
    try:
        yield Clients(load)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=90)
        figures = load.figures(time.monotonic() - started)
        report("chaos: client load", {"clients": CLIENTS, "images": kind, **figures})


@pytest.fixture
def calm(clients: Clients) -> Iterator[Clients]:
    """The clients, every request answered 200 outside the outages before and after the test."""
    assert not clients.unaccounted(), clients.unaccounted()[:5]
    yield clients
    time.sleep(2)
    late = clients.unaccounted()
    clients.outages.append((-math.inf, time.monotonic()))  # said here, not again by each test
    assert not late, ("predictions failed outside the outage", len(late), late[:5])


@pytest.mark.parametrize("service", KILLED)
def test_killed_service_comes_back_and_nothing_is_lost(
    deployed: Stack, calm: Clients, service: str, report
) -> None:
    before, default = _inventory(deployed), ts.default_version()
    outage = _kill(deployed, service, calm)
    after = _inventory(deployed)
    lost = _lost(before, after)
    report(f"chaos: kill {service}", outage.row(lost))
    assert outage.restarts >= 1
    assert not lost, lost
    assert ts.default_version() == default  # the same version serves after the restart
    if service not in INFERENCE:
        assert not outage.failed, f"killing {service} failed predictions: {outage.failed}"


def test_postgres_killed_while_a_trainer_trains(
    deployed: Stack, calm: Clients, tmp_path: Path, report
) -> None:
    client = MlflowClient(MLFLOW)
    before = _inventory(deployed)
    log = tmp_path / "trainer.log"
    with log.open("w") as out:
        trainer = subprocess.Popen(
            deployed.command("run", "--rm", "trainer"),
            env=deployed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        run = _training_run(client, before["runs"], trainer, log)
        outage = _kill(deployed, "postgres", calm)
        try:
            code = trainer.wait(timeout=TRAIN_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the trainer hangs {TRAIN_WITHIN} s after the kill: {_tail(log)}")
    finally:
        if trainer.poll() is None:  # the command line, then its container
            trainer.kill()
            oneoff = ["docker", "ps", "--quiet", "--filter", "label=com.docker.compose.oneoff=True"]
            for cid in run_ok(
                [*oneoff, "--filter", f"label=com.docker.compose.project={PROJECT}"], deployed.env
            ).split():
                subprocess.run(["docker", "kill", cid], capture_output=True)
    output = log.read_text(errors="replace")
    if code == 0:
        found = REGISTERED.search(output)
        assert found, _tail(log)
        outcome = f"registered v{found[1]}"
    else:  # a failure says what failed in its last lines
        last = _what_failed(output)
        assert re.search(r"error|fail", last, re.IGNORECASE), f"exit {code}, silently: {last}"
        outcome = f"exit {code}: {last}"
    lost = _lost(before, _inventory(deployed))
    report(
        "chaos: kill postgres while training",
        {
            **outage.row(lost),
            "killed run": f"{run} ({client.get_run(run).info.status})",
            "trainer": outcome,
        },
    )
    assert outage.restarts >= 1
    assert not lost, lost
    assert not outage.failed, f"killing postgres failed predictions: {outage.failed}"


def test_the_next_trainer_run_registers_and_deploys(deployed: Stack, calm: Clients, report) -> None:
    """After the kill above: a training as users start it finishes the job."""
    before = _inventory(deployed)
    done = subprocess.run(
        deployed.command("run", "--rm", "trainer"),
        env=deployed.env,
        capture_output=True,
        text=True,
        timeout=TRAIN_WITHIN,
    )
    found = REGISTERED.search(done.stdout)
    deployed.wait_healthy("torchserve")
    served = ts.default_version()
    registered = sorted(int(e["modelVersion"]) for e in ts.describe("all"))
    after = _inventory(deployed)
    lost = _lost(before, after)
    last = _what_failed(done.stdout + done.stderr)
    counts = zip(_counts(before).items(), _counts(after).values(), strict=True)
    report(
        "chaos: trainer re-run",
        {
            "exit": done.returncode,
            "registered": f"v{found[1]}" if found else None,
            "serving": f"v{served}",
            "registered on TorchServe": registered,
            "last line": last[:300],
            "rows/files lost": sum(len(items) for items in lost.values()),
            "before/after": {kind: f"{n}/{m}" for (kind, n), m in counts},
        },
    )
    server = deployed.compose("logs", "--no-color", "--since", "15m", "torchserve").splitlines()
    warnings = [line for line in server if "[WARN" in line or "[ERROR" in line][-8:]
    assert done.returncode == 0 and found, (
        f"the trainer exited {done.returncode}: {last}; torchserve warned: {warnings}"
    )
    assert served == found[1]
    assert f"catsdogs v{found[1]}" in after["registry versions"] - before["registry versions"]
    assert not lost, lost
    # the bounded lifecycle in the container too: older versions unregistered (needs `kill`)
    assert "stays registered" not in done.stdout + done.stderr, last
    assert len(registered) <= deploy.KEEP + 1, registered


def _training_run(
    client: MlflowClient, known: set[str], trainer: subprocess.Popen, log: Path
) -> str:
    """The trainer's MLflow run, once it has logged a training metric: the kill then lands in
    the training, with registration still to come."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert trainer.poll() is None, f"the trainer ended before training: {_tail(log)}"
        experiments = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(experiments, "attributes.status = 'RUNNING'"):
            if run.info.run_id not in known and run.data.metrics:
                return run.info.run_id
        time.sleep(1)
    pytest.fail(f"no training run logged a metric in 600 s: {_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def _what_failed(output: str) -> str:
    """A command's last words: from its last `error: ...` line on (our commands' one line, which
    may quote a server's answer over several), else its last five lines; on one line."""
    lines = output.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    return " ".join(x.strip() for x in lines[errors[-1] if errors else -5 :])[:400]
