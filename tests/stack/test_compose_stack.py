"""The compose stack as users run it, on a real Docker engine.

`make images`, then docker-compose with docker-compose.yml and compose.host.yml (host networking:
the engines here have no bridge network), the service images chosen by CATSDOGS_POSTGRES_IMAGE /
CATSDOGS_PROMETHEUS_IMAGE (upstream tags by default). postgres -> mlflow on PostgreSQL ->
torchserve; the `train` profile's trainer trains demo.yaml through the MLflow server and deploys;
the smoke test runs from the host against the published inference port. Then: health and users,
Prometheus targets and rules, restart and rollback, `down`/`up` keeps everything, SIGTERM exits 0.
The tests run in file order on one stack (conftest.py's, which test_chaos.py uses after them).
Skipped when no Docker engine answers, unless CATSDOGS_STACK_REQUIRED=1 (CI) makes that a failure.
Grafana starts only with CATSDOGS_STACK_GRAFANA=1 (it has no image on machines without a registry;
the workflow sets it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import places
from tests.helpers.deployment import ALERTS, run_smoke
from tests.helpers.stack import MLFLOW, PROMETHEUS, SERVICES, Stack, get_json, run_ok

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_trainer_trains_through_mlflow_and_deploys(stack: Stack, report) -> None:
    started = time.monotonic()
    out = stack.train()
    assert "catsdogs v1: registered and default now (was none)" in out, out[-3000:]
    stack.wait_healthy("torchserve")
    assert stack.versions() == (["1"], "1")
    report("stack: trainer (demo.yaml) + deploy", {"seconds": round(time.monotonic() - started)})


def test_only_the_trainer_holds_the_signing_key(stack: Stack, report) -> None:
    """v1 verified with the public key alone: no serving container can read the private one."""
    keys = "find /srv /home -name '*.pem' 2>/dev/null | sort"
    said = {
        service: stack.compose("exec", "-T", service, "sh", "-c", keys)
        for service in ("torchserve", "monitor")
    }
    said["trainer"] = stack.compose("run", "--rm", "--no-deps", "trainer", "sh", "-c", keys)
    found = {s: [w for w in out.split() if w.endswith(".pem")] for s, out in said.items()}
    report("stack: key files per service", found)
    assert found == {
        "torchserve": ["/srv/verify-key/public.pem"],
        "monitor": [],
        "trainer": ["/srv/signing-key/private.pem", "/srv/verify-key/public.pem"],
    }


def test_train_image_holds_the_imagenet_weights(stack: Stack, report) -> None:
    """finetune.yaml (the trainer's default config) trains offline: its weights are in the image."""
    code = (
        "from catsdogs_pl.models.efficientnet_lite import EfficientNetLite, imagenet_weights; "
        "EfficientNetLite(weights='imagenet', variant='lite2'); print('loaded', imagenet_weights('lite2'))"
    )
    out = stack.compose("run", "--rm", "--no-deps", "trainer", "python", "-c", code)
    report("stack: ImageNet weights in the train image", out.strip().splitlines()[-1])
    assert "loaded /" in out and out.strip().endswith("efficientnet-lite2-9656183e.pth"), out


def test_services_healthy_and_unprivileged(stack: Stack, report) -> None:
    health = {s: stack.inspect(s, "{{.State.Health.Status}}").strip() for s in SERVICES}
    report("stack: docker inspect health", health)
    assert set(health.values()) == {"healthy"}, health
    users = {}
    for service in SERVICES:
        top = run_ok(["docker", "top", stack.container(service), "-eo", "pid,uid"], stack.env)
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
    version = MlflowClient(MLFLOW).get_model_version(places.MODEL_NAME, "1")
    run = MlflowClient(MLFLOW).get_run(version.run_id)
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    versions = {}
    for target in ("train", "mlflow"):
        image = f"catsdogs-{target}:{stack.env['CATSDOGS_TAG']}"
        code = "import mlflow; print(mlflow.__version__)"
        run = ["docker", "run", "--rm", image, "python", "-c", code]
        versions[target] = run_ok(run, stack.env).strip()
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
        targets = get_json(f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        ready = {
            r["metric"]["model_version"]: float(r["value"][1])
            for r in get_json(query)["data"]["result"]
        }
        if all(health.get(job) == "up" for job in jobs) and ready.get("1", 0) > 0:
            break
        assert time.monotonic() < deadline, (targets, ready)
        time.sleep(3)
    groups = get_json(f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    report("stack: prometheus", {"targets": health, "ready workers": ready, "rules": rules})
    assert set(rules) == ALERTS
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
        client.get_model_version(places.MODEL_NAME, "2").run_id,
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
    run_ok(["docker", "stop", "--time", "60", stack.container("torchserve")], stack.env)
    code = stack.inspect("torchserve", "{{.State.ExitCode}}").strip()
    report(
        "stack: docker stop torchserve",
        {"exit": code, "seconds": round(time.monotonic() - started, 1)},
    )
    assert code == "0"
