"""The deployment files: what docker compose, Prometheus and Grafana are told is true."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from catsdogs_pl import config as fit_config
from catsdogs_pl import mlflow_server, places
from catsdogs_pl.serving import serve
from tests.helpers.deployment import ALERTS, COMPOSE_FILE, compose_binary, compose_config

SERVICES = {
    "torchserve",
    "monitor",
    "mlflow",
    "postgres",
    "prometheus",
    "grafana",
    "trainer",
    "kserve",
}
CONFIGS = places.ROOT / "configs"
HOST_OVERRIDE = places.ROOT / "tests" / "stack" / "compose.host.yml"


def test_eight_services_with_healthchecks_and_ordered_start() -> None:
    services = compose_config()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["trainer"]["profiles"] == ["train"]
    assert services["kserve"]["profiles"] == ["kserve"]  # the second door, on demand
    assert services["kserve"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "/v2/health/ready" in services["kserve"]["healthcheck"]["test"][-1]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["monitor"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["trainer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # readiness, not /ping: the same check as the image's HEALTHCHECK
    assert services["torchserve"]["healthcheck"]["test"][-1] == "ready"


def test_only_the_inference_port_leaves_the_host() -> None:
    services = compose_config(CATSDOGS_INFERENCE_PORT="9001")["services"]
    published = {
        (name, p["target"]): p.get("host_ip")
        for name, service in services.items()
        for p in service.get("ports", [])
    }
    assert published.pop(("torchserve", 8080)) is None  # the inference API, on every interface
    assert published.pop(("kserve", 8085)) is None  # and the second door's, the same way
    assert published[("torchserve", 8081)] == "127.0.0.1"  # management
    assert all(ip == "127.0.0.1" for ip in published.values()), published
    inference = next(p for p in services["torchserve"]["ports"] if p["target"] == 8080)
    assert inference["published"] == "9001"  # configurable, 8001 by default


def test_no_secret_in_the_images_and_a_non_root_user() -> None:
    dockerfile = (places.ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    final = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0]}
    for target in ("serve", "train", "mlflow"):
        users = re.findall(r"^USER (\S+)", final[target], flags=re.M)
        assert users and users[-1] == "10001:10001", f"{target} runs as {users}"
    assert not re.search(r"(PASSWORD|TOKEN|SECRET)\s*=", dockerfile, flags=re.I)
    ignored = (places.ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!catsdogs_pl/" in ignored  # nothing else enters the context


def _declared_metrics() -> set[str]:
    """Metric names Prometheus can see: metrics.yaml (histograms as _bucket), serve's own and the
    drift monitor's gauges."""
    from catsdogs_pl.monitoring.drift import GAUGES
    from catsdogs_pl.monitoring.feedback import LABELLED, STORE

    spec = yaml.safe_load((CONFIGS / "torchserve" / "metrics.yaml").read_text())
    names = set()
    for group in ("ts_metrics", "model_metrics"):
        for kind, metrics in spec[group].items():
            suffix = "_bucket" if kind == "histogram" else ""
            names |= {m["name"] + suffix for m in metrics}
    names |= set(re.findall(r"^# TYPE (\w+)", serve.worker_metrics(), flags=re.M))
    names |= set(GAUGES) | set(LABELLED) | set(STORE)
    return names | {"up"}


def _used_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left without label matchers, ranges, grouping
    label lists, numbers, functions and keywords."""
    expr = re.sub(r"\{[^}]*\}|\[[^]]*\]", "", expr)
    expr = re.sub(r"\boffset\s+\d+[smhdwy]\b", "", expr)  # a modifier, not a metric
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "", expr)
    functions = {
        *("sum", "max", "min", "avg", "count", "rate", "increase", "clamp_min", "time"),
        *("histogram_quantile", "absent", "vector"),
        *("or", "and", "unless", "bool"),
    }
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)) - functions


def test_alerts_and_dashboard_use_metrics_that_exist() -> None:
    declared = _declared_metrics()
    rules = yaml.safe_load((CONFIGS / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == ALERTS
    dashboard = json.loads((CONFIGS / "grafana" / "dashboards" / "catsdogs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in [*alerts.values(), *exprs]:
        assert _used_metrics(expr) <= declared, f"{expr}: {_used_metrics(expr) - declared}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    topics = ("requests", "latency", "5xx", "label", "reason", "workers")
    topics += ("drift", "accuracy", "share", "input statistics", "confidence", "monitor")
    topics += ("users' labels", "labelled answers")
    for topic in topics:
        assert topic in titles, topic


def test_prometheus_scrapes_every_metrics_port() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    # the container's ports: config.properties' (the session's TS_* variables are this machine's)
    props = places.ts_properties()
    kinds = ("metrics", "worker_metrics", "monitor")
    port = {k: props[f"{k}_address"].rsplit(":", 1)[1] for k in kinds}
    expected = {f"torchserve:{port[k]}" for k in ("metrics", "worker_metrics")}
    expected.add(f"monitor:{port['monitor']}")  # the drift monitor, its own compose service
    assert expected <= targets, expected - targets


def _stage(name: str) -> str:
    """One stage of the Dockerfile, from its FROM line to the next."""
    dockerfile = (places.ROOT / "Dockerfile").read_text()
    return re.search(rf"^FROM \S+ AS {name}\n.*?(?=^FROM |\Z)", dockerfile, re.M | re.S).group(0)


def test_mlflow_backend_uri_keeps_any_password() -> None:
    from sqlalchemy.engine import make_url

    env = {"POSTGRES_PASSWORD": "p@ss/w%rd:1", "POSTGRES_HOST": "postgres"}
    url = make_url(mlflow_server.backend_store_uri(env))
    assert (url.drivername, url.username, url.password) == (
        "postgresql+psycopg",
        "mlflow",
        "p@ss/w%rd:1",
    )
    assert (url.host, url.port, url.database) == ("postgres", 5432, "mlflow")
    assert (
        mlflow_server.backend_store_uri({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"})
        == "sqlite:///x.db"
    )
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD is not set"):
        mlflow_server.backend_store_uri({})
    mlflow = compose_config(POSTGRES_PASSWORD="p@ss")["services"]["mlflow"]
    assert mlflow["command"][:3] == ["python", "-m", "catsdogs_pl.mlflow_server"]
    assert "p@ss" not in json.dumps(mlflow["command"])  # only in POSTGRES_PASSWORD
    assert "psycopg[binary]" in _stage("mlflow")  # the driver the URI names


def test_serve_image_binds_every_interface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "CATSDOGS_BIND_HOST=0.0.0.0" in _stage("runtime")
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path))
    monkeypatch.setenv("CATSDOGS_BIND_HOST", "0.0.0.0")
    for kind in places.ADDRESS_KINDS:
        monkeypatch.delenv(f"TS_{kind.upper()}_ADDRESS", raising=False)
    env = serve._prepare(None)[1]  # what TorchServe is started with
    for kind in places.ADDRESS_KINDS:
        port = places.ts_properties()[f"{kind}_address"].rsplit(":", 1)[1]
        assert places.address(kind, bind=True) == f"http://0.0.0.0:{port}"
        assert places.address(kind) == f"http://127.0.0.1:{port}"  # where clients go
        assert env[f"TS_{kind.upper()}_ADDRESS"] == f"http://0.0.0.0:{port}"
    monkeypatch.setenv("TS_MANAGEMENT_ADDRESS", "http://127.0.0.1:9081")  # explicit wins
    assert places.address("management", bind=True) == "http://127.0.0.1:9081"
    assert "TS_INFERENCE_ADDRESS" not in compose_config()["services"]["torchserve"].get(
        "environment", {}
    )


def test_images_install_what_they_run_with() -> None:
    runtime = _stage("runtime")
    # TorchServe's worker imports yaml; the torchserve wheel does not declare it
    assert re.search(r'"pyyaml==[\d.]+"', runtime)
    # the JRE's postinst links a man page into a folder slim images delete
    assert runtime.index("mkdir -p /usr/share/man/man1") < runtime.index("openjdk-17-jre-headless")
    # TorchServe stops a worker with `kill -9` (procps): without it no version can be unregistered
    assert re.search(r"apt-get install[^\n]* procps", runtime)
    # one MLflow version, declared once, for the server and the trainer's client
    dockerfile = (places.ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^ARG MLFLOW_VERSION=", dockerfile, re.M)) == 1
    for stage in ("mlflow", "train"):
        assert '"mlflow==${MLFLOW_VERSION}"' in _stage(stage), stage


def test_workflow_pushes_the_images_its_stack_test_passed() -> None:
    workflow = yaml.safe_load((places.ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "stack"}  # no job that rebuilds images to publish them
    steps = [step.get("run", "") for step in jobs["stack"]["steps"]]
    build = next(i for i, run in enumerate(steps) if run == "make images")
    test = next(i for i, run in enumerate(steps) if "pytest -m stack" in run)
    push = next(i for i, run in enumerate(steps) if "docker push" in run)
    assert build < test < push and "docker build" not in steps[push]
    assert jobs["stack"]["env"]["CATSDOGS_STACK_REQUIRED"] == "1"  # a skip would be a failure


def _host_config(**env: str) -> dict:
    """compose_config() with tests/stack/compose.host.yml on top (host networking)."""
    cmd = [compose_binary(), "-f", str(COMPOSE_FILE), "-f", str(HOST_OVERRIDE)]
    cmd += ["--profile", "train", "--profile", "kserve", "config", "--format", "json"]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_trainer_reaches_both_torchserve_apis() -> None:
    """deploy asks the management API and `deploy --gate` the inference API: each where torchserve
    binds it, on compose's network and on the host's (where only the port tells them apart)."""
    props = places.ts_properties()
    host = _host_config(CATSDOGS_INFERENCE_PORT="9001")
    assert "torchserve=127.0.0.1" in host["services"]["trainer"]["extra_hosts"]
    for config in (compose_config(), host):
        services = config["services"]
        trainer = services["trainer"]["environment"]
        bound = services["torchserve"].get("environment") or {}  # none: config.properties
        for kind in ("inference", "management"):
            key = f"TS_{kind.upper()}_ADDRESS"
            url = urlsplit(trainer[key])
            assert url.hostname == "torchserve", trainer[key]
            assert url.port == urlsplit(bound.get(key, props[f"{kind}_address"])).port, kind
    assert urlsplit(host["services"]["trainer"]["environment"]["TS_INFERENCE_ADDRESS"]).port == 9001


def test_the_trainers_work_folder_outlives_its_container() -> None:
    """checkpoints/ and data/ (fit.yaml's relative paths) in a named volume that user 10001 can
    write: a new volume takes the owner of the image's folder, root unless the image made it."""
    compose = compose_config()
    trainer = compose["services"]["trainer"]
    work = trainer["working_dir"]
    mount = next(v for v in trainer["volumes"] if v["target"] == work)
    assert mount["type"] == "volume" and mount["source"] in compose["volumes"]
    for name in ("fit.yaml", "finetune.yaml", "demo.yaml"):  # the trainer's FIT_CONFIG choices
        fit = fit_config.load(CONFIGS / name)
        for path in (fit["checkpoint_dir"], fit["data"]["data_dir"]):
            assert not Path(path).is_absolute(), (name, path)
    train = _stage("train")
    made = train.index(f"RUN install -d -o catsdogs -g catsdogs {work}\n")
    assert made < train.index("USER 10001:10001") and f"WORKDIR {work}\n" in train


def test_changed_passwords_apply_at_the_next_start() -> None:
    """postgres and grafana start through a script of configs/ that sets the password from the
    environment, then runs the image's own entrypoint."""
    services = compose_config()["services"]
    for name, image_entrypoint in (("postgres", "docker-entrypoint.sh"), ("grafana", "/run.sh")):
        script = CONFIGS / name / "entrypoint.sh"
        mount = next(v for v in services[name]["volumes"] if v["source"] == str(script))
        assert mount["read_only"] and services[name]["entrypoint"] == ["sh", mount["target"]]
        assert script.read_text().rstrip().endswith(f'exec {image_entrypoint} "$@"')
    assert services["postgres"]["command"] == ["postgres"]  # an entrypoint drops the image's CMD
    grafana = (CONFIGS / "grafana" / "entrypoint.sh").read_text()
    assert "reset-admin-password --password-from-stdin" in grafana  # not on a command line


def test_the_postgres_entrypoint_sets_the_password_once_the_database_exists(
    tmp_path: Path,
) -> None:
    """configs/postgres/entrypoint.sh with the image's commands as stubs that log their arguments
    and input: the first start is the image's alone; later ones set the password through a
    private server first, the password never on a command line. (Tried on the stand-in image
    for real: a changed password applies, also after `docker kill`.)"""
    stubs, data, log = tmp_path / "bin", tmp_path / "data", tmp_path / "log"
    stubs.mkdir()
    data.mkdir()
    for name in ("pg_ctl", "psql", "docker-entrypoint.sh"):
        stdin = "cat" if name == "psql" else ":"
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\n{stdin} >>{log}\n')
    (stubs / "setpriv").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # as root: to postgres
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "PGDATA": str(data), "POSTGRES_USER": "mlflow"}
    env["POSTGRES_PASSWORD"] = "s3cret 'pw"
    start = ["sh", str(CONFIGS / "postgres" / "entrypoint.sh"), "-c", "work_mem=64MB"]
    subprocess.run(start, env=env, check=True)
    assert log.read_text() == "docker-entrypoint.sh postgres -c work_mem=64MB\n"
    (data / "PG_VERSION").write_text("16\n")
    log.unlink()
    subprocess.run(start, env=env, check=True)
    lines = log.read_text().splitlines()
    order = ["pg_ctl", "psql", "\\getenv", "ALTER", "pg_ctl", "docker-entrypoint.sh"]
    assert [line.split()[0] for line in lines] == order
    assert "listen_addresses='' -c unix_socket_directories=" in lines[0] and "start" in lines[0]
    assert lines[2:4] == [
        "\\getenv password POSTGRES_PASSWORD",
        "ALTER ROLE :\"user\" PASSWORD :'password';",
    ]
    assert lines[-1] == "docker-entrypoint.sh postgres -c work_mem=64MB"
    assert "s3cret" not in log.read_text()
