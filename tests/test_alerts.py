"""The Prometheus alerts, evaluated: `promtool test rules` on configs/prometheus/alerts.test.yml.

A PromQL expression that parses and names real metrics can still never fire (TorchServe exports a
counter only after its first increment, and `a + <empty>` is empty), so each alert is run against
series over time, and every alert must have a case where it fires and one where it stays quiet.
The drift alerts must also say what catsdogs_pl/monitoring says: its thresholds, its image statistics;
the error alerts page only for requests that reached inference (issue 21).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from catsdogs_pl import places
from catsdogs_pl.monitoring import drift, stats
from tests.helpers.deployment import tool

PROMETHEUS = places.ROOT / "configs" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in _load(ALERTS)["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_rule_tests_pass() -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: Debian's prometheus package ships it (see .ci/run)")
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)],
        cwd=places.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    spec = _load(ALERT_TESTS)
    assert [(PROMETHEUS / f).resolve() for f in spec["rule_files"]] == [ALERTS.resolve()]
    alerts = set(_rules())
    monitoring = {"CatsDogsInputDrift", "CatsDogsConfidenceDrop", "CatsDogsMonitorDown"}
    assert monitoring <= alerts, f"monitoring alerts missing from alerts.yml: {monitoring - alerts}"
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), f"alerts with no case where they fire: {alerts - firing}"
    assert alerts - quiet == set(), f"alerts with no case where they stay quiet: {alerts - quiet}"
    assert (firing | quiet) <= alerts, f"tests of unknown alerts: {(firing | quiet) - alerts}"


def test_drift_alerts_follow_the_monitor() -> None:
    """Input drift: the image statistics only (confidence and margin move with the model, not with
    the inputs), above drift.PSI_DRIFT. Confidence drop: over drift.ACCURACY_DROP under the reference."""
    rules = _rules()
    expr = rules["CatsDogsInputDrift"]["expr"]
    matched = re.findall(r'statistic=~"([^"]*)"', expr)
    assert len(matched) == 1 and sorted(matched[0].split("|")) == sorted(stats.IMAGE), expr
    assert re.search(rf"\)\s*>\s*{re.escape(str(drift.PSI_DRIFT))}\s*$", expr), expr
    expr = rules["CatsDogsConfidenceDrop"]["expr"]
    assert re.search(r"catsdogs_reference_accuracy.*-.*catsdogs_estimated_accuracy", expr, re.S)
    assert re.search(rf"\)\s*>\s*{re.escape(str(drift.ACCURACY_DROP))}\s*$", expr), expr
    for name in ("CatsDogsInputDrift", "CatsDogsConfidenceDrop"):
        assert "model_version" in rules[name]["annotations"]["summary"], name


def test_errors_page_only_for_requests_that_reached_inference() -> None:
    """Issue 21: a form-encoded body (a bare `curl --data-binary`) that fails to URL-decode is a 500
    of TorchServe's frontend before inference, the client's doing. The page counts only requests
    that reached inference (ts_inference_requests_total) and got neither a prediction nor a 400, the
    handler's counters; the share of every 5xx only warns, and says the likely cause."""
    rules = _rules()
    page, warn = rules["CatsDogsHighErrorRate"], rules["CatsDogsFrontendErrors"]
    assert (page["labels"]["severity"], warn["labels"]["severity"]) == ("page", "warn")

    def rated(expr: str) -> set[str]:
        return set(re.findall(r"rate\((\w+)\[", expr))

    handled = {"CatsDogsPredictions", "CatsDogsRejectedInputs"}
    assert rated(page["expr"]) == {"ts_inference_requests_total", *handled}, page["expr"]
    assert rated(warn["expr"]) == {"Requests2XX", "Requests4XX", "Requests5XX"}, warn["expr"]
    handler = (places.ROOT / "handlers" / "catsdogs_handler.py").read_text()
    # what the page subtracts is what the handler counts, one per image: rejections one at a
    # time, predictions as the number of images of each label in a batch
    assert 'add_counter("CatsDogsRejectedInputs", 1' in handler
    assert re.search(r'add_counter\(\s*"CatsDogsPredictions", n,', handler)
    assert "if n := labels.count(name)" in handler
    for rule in (page, warn):
        # every counter summed over its label sets, and 0 until TorchServe exports it
        rates = re.findall(r"rate\(\w+\[5m\]\)", rule["expr"])
        summed = re.findall(r"sum\((rate\(\w+\[5m\]\))\) or vector\(0\)", rule["expr"])
        assert rates and summed == rates, rule["expr"]
    cause = warn["annotations"]["description"]
    for hint in ("x-www-form-urlencoded", "application/octet-stream", "-T", "-F"):
        assert hint in cause, hint
