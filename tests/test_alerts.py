"""The Prometheus alerts, evaluated: `promtool test rules` on configs/prometheus/alerts.test.yml.

A PromQL expression that parses and names real metrics can still never fire (TorchServe exports a
counter only after its first increment, and `a + <empty>` is empty), so each alert is run against
series over time, and every alert must have a case where it fires and one where it stays quiet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from catsdogs_pl import settings
from tests.helpers.deployment import tool

PROMETHEUS = settings.ROOT / "configs" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_promtool_rule_tests_pass() -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: Debian's prometheus package ships it (see .ci/run)")
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)],
        cwd=settings.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    spec = _load(ALERT_TESTS)
    assert [(PROMETHEUS / f).resolve() for f in spec["rule_files"]] == [ALERTS.resolve()]
    alerts = {r["alert"] for g in _load(ALERTS)["groups"] for r in g["rules"] if "alert" in r}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), f"alerts with no case where they fire: {alerts - firing}"
    assert alerts - quiet == set(), f"alerts with no case where they stay quiet: {alerts - quiet}"
    assert (firing | quiet) <= alerts, f"tests of unknown alerts: {(firing | quiet) - alerts}"
