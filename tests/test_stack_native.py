"""The compose stack without Docker: MLflow server, TorchServe and the trainer run natively with
the command lines and environments of docker-compose.yml (SQLite in place of PostgreSQL), the demo
model is trained through the MLflow server and deployed, and the smoke test passes against it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import places
from catsdogs_pl.serving import serve
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.deployment import compose_config, native, run_smoke
from tests.helpers.ports import free_ports
from tests.helpers.serving import state_folder

# where each TorchServe address listens inside the torchserve container (config.properties)
CONTAINER_PORTS = {
    kind: places.ts_properties()[f"{kind}_address"].rsplit(":", 1)[1]
    for kind in places.ADDRESS_KINDS
}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
]


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: the server exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout}s: {log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)  # what `docker compose down` sends
    try:
        return process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        return -9


@pytest.fixture
def state(tmp_path: Path):
    """The TorchServe state folder, and its environment: TS_* addresses on free ports."""
    with state_folder(tmp_path / "state") as env:
        yield tmp_path / "state", env


def test_compose_services_natively(tmp_path: Path, state: tuple[Path, dict]) -> None:
    home, state_env = state
    # exactly what CI gives the trainer: the demo config and its synthetic pictures
    services = compose_config(FIT_CONFIG="demo.yaml", DATA_SOURCE="data/synthetic")["services"]
    work = tmp_path / "trainer"
    work.mkdir()
    (port,) = free_ports(1)
    # container paths, service names and container ports -> this machine, as a port mapping
    # would publish them: each container port on a free port here; nothing else changes
    mapping = {
        "0.0.0.0": "127.0.0.1",
        "/mlartifacts": str(tmp_path / "mlartifacts"),
        "/app/": f"{places.ROOT}/",
        "mlflow:5000": f"127.0.0.1:{port}",
        "--port=5000": f"--port={port}",
        **{
            f"torchserve:{container_port}": places.address(kind).removeprefix("http://")
            for kind, container_port in CONTAINER_PORTS.items()
        },
    }
    # the torchserve container listens on config.properties' ports inside its own network; here
    # the same command line is told the free ones through the variables it reads (TS_*)
    published = {k: v for k, v in state_env.items() if k.startswith("TS_") and v is not None}
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    cmd, env = native(services["mlflow"], mapping, MLFLOW_BACKEND_STORE_URI=tracking_uri)
    assert cmd[:3] == ["python", "-m", "catsdogs_pl.mlflow_server"] and f"--port={port}" in cmd
    mlflow_log = tmp_path / "mlflow.log"
    mlflow = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=mlflow_log.open("w"), stderr=subprocess.STDOUT
    )  # in a folder of its own, as in its container: never the checkout
    ts_cmd, ts_env = native(services["torchserve"], mapping, CATSDOGS_HOME=str(home), **published)
    assert ts_cmd == ["python", "-m", "catsdogs_pl.serving.serve", "run"]
    home.mkdir()
    ts_log = tmp_path / "torchserve.log"

    def start_torchserve() -> subprocess.Popen:
        out = ts_log.open("a")
        return subprocess.Popen(ts_cmd, cwd=home, env=ts_env, stdout=out, stderr=subprocess.STDOUT)

    torchserve = start_torchserve()
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", mlflow, mlflow_log)
        _wait_http(places.address("worker_metrics") + "/metrics", torchserve, ts_log)
        assert not serve.ready()[0]  # up, but nothing deployed: the health check says unhealthy

        cmd, env = native(services["trainer"], mapping, CATSDOGS_HOME=str(home))
        assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{port}"
        assert env["TS_MANAGEMENT_ADDRESS"] == places.address("management")
        trainer = subprocess.run(
            cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert trainer.returncode == 0, trainer.stdout[-3000:] + trainer.stderr[-3000:]
        assert "catsdogs v1: registered and default now (was none)" in trainer.stdout

        ok, message = serve.ready()
        assert ok, message
        run_smoke("1")

        # the registry and the artifacts live behind the MLflow server, not in the trainer
        client = MlflowClient(f"http://127.0.0.1:{port}")
        version = client.get_model_version(places.MODEL_NAME, "1")
        assert client.get_run(version.run_id).info.status == "FINISHED"
        assert any((tmp_path / "mlartifacts").rglob("weights.pt"))
        assert not (work / "mlruns").exists() and not (home / "mlflow.db").exists()
        # Prometheus' second target: READY workers per version, and the latency histogram
        workers = urllib.request.urlopen(places.address("worker_metrics") + "/metrics").read()
        assert b'catsdogs_ready_workers{model_version="1",default="true"} 2' in workers
        deadline = time.monotonic() + 30  # the frontend reads handler metrics from worker logs
        while (
            "CatsDogsHandlerSeconds_count{"
            not in ts.call("metrics", "GET", "/metrics").body.decode()
        ):
            assert time.monotonic() < deadline, "no latency histogram on the metrics port"
            time.sleep(1)

        # a restarted container serves the last deployed version again, with no trainer
        assert _stop(torchserve) == 0
        assert not serve.is_up()
        torchserve = start_torchserve()
        assert ts.wait_ready(timeout=180)["modelVersion"] == "1"  # v1 is the default again
        assert [e["modelVersion"] for e in ts.describe("all")] == ["1"]
    finally:
        _stop(torchserve)
        _stop(mlflow)
    assert not serve.is_up()
