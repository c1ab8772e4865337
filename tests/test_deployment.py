"""The deployment files: what docker compose, Prometheus and Grafana are told is true."""

from __future__ import annotations

import json
import re

import yaml

from catsdogs_pl import serve, settings
from tests.deployment import compose_config

SERVICES = {"torchserve", "mlflow", "postgres", "prometheus", "grafana", "trainer"}
CONFIGS = settings.ROOT / "configs"


def test_six_services_with_healthchecks_and_ordered_start() -> None:
    services = compose_config()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["trainer"]["profiles"] == ["train"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
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
    assert published[("torchserve", 8081)] == "127.0.0.1"  # management
    assert all(ip == "127.0.0.1" for ip in published.values()), published
    inference = next(p for p in services["torchserve"]["ports"] if p["target"] == 8080)
    assert inference["published"] == "9001"  # configurable, 8001 by default


def test_no_secret_in_the_images_and_a_non_root_user() -> None:
    dockerfile = (settings.ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    final = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0]}
    for target in ("serve", "train", "mlflow"):
        users = re.findall(r"^USER (\S+)", final[target], flags=re.M)
        assert users and users[-1] == "10001:10001", f"{target} runs as {users}"
    assert not re.search(r"(PASSWORD|TOKEN|SECRET)\s*=", dockerfile, flags=re.I)
    ignored = (settings.ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!catsdogs_pl/" in ignored  # nothing else enters the context


def _declared_metrics() -> set[str]:
    """Metric names Prometheus can see: metrics.yaml (histograms as _bucket) and serve's own."""
    spec = yaml.safe_load((CONFIGS / "torchserve" / "metrics.yaml").read_text())
    names = set()
    for group in ("ts_metrics", "model_metrics"):
        for kind, metrics in spec[group].items():
            suffix = "_bucket" if kind == "histogram" else ""
            names |= {m["name"] + suffix for m in metrics}
    names |= set(re.findall(r"^# TYPE (\w+)", serve.worker_metrics(), flags=re.M))
    return names | {"up"}


def _used_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left without labels, ranges, numbers."""
    expr = re.sub(r"\{[^}]*\}|\[[^]]*\]|by \([^)]*\)", "", expr)
    expr = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "", expr)
    functions = {"sum", "rate", "clamp_min", "histogram_quantile", "absent", "or"}
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)) - functions


def test_alerts_and_dashboard_use_metrics_that_exist() -> None:
    declared = _declared_metrics()
    rules = yaml.safe_load((CONFIGS / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "CatsDogsHighErrorRate",
        "CatsDogsHighLatencyP95",
        "CatsDogsNoReadyWorker",
    }
    dashboard = json.loads((CONFIGS / "grafana" / "dashboards" / "catsdogs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in [*alerts.values(), *exprs]:
        assert _used_metrics(expr) <= declared, f"{expr}: {_used_metrics(expr) - declared}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("requests", "latency", "5xx", "label", "reason", "workers"):
        assert topic in titles


def test_prometheus_scrapes_both_metrics_ports() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    ports = {settings.address(k).rsplit(":", 1)[1] for k in ("metrics", "worker_metrics")}
    assert {f"torchserve:{p}" for p in ports} <= targets
