"""The loop from users' labels back to a deployed version, on a real TorchServe: predict with
capture on, feedback through the monitor's port, the labelled-accuracy gauges, export, prepare with
the labels added, fit, gate (`make demo-loop`, smaller)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from catsdogs_pl import demo_loop, places
from tests.helpers.serving import state_folder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
]


def test_users_labels_reach_the_next_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], report: Any
) -> None:
    monkeypatch.chdir(places.ROOT)  # the loop moves to its state folder: undone after
    monkeypatch.setenv("TS_CAPTURE_FRACTION", "0")  # the loop turns capture on: undone after
    with state_folder(tmp_path / "home"):
        code = demo_loop.main(["--per-class", "40", "--epochs", "3"])
        out = capsys.readouterr().out
    assert "80 answered" in out and "80 captured" in out
    assert "answers of /feedback: {200: 80}" in out
    assert 'catsdogs_labelled_answers{model_version="1"} 80' in out
    accuracy = float(re.search(r'catsdogs_labelled_accuracy\{model_version="1"\} ([\d.]+)', out)[1])
    exported = re.search(r"exported: cat=(\d+), dog=(\d+) \(demo-user: 80 of 80 exported\)", out)
    assert exported and int(exported[1]) + int(exported[2]) == 80
    decided = re.search(r"gate (passed|refused) v2: accuracy ([\d.]+) .* v1's ([\d.]+)", out)
    assert decided, out[-3000:]
    before = re.search(r"before: v1: (\d+)/80 right \(([\d.]+)\)", out)
    assert before and float(before[2]) == pytest.approx(accuracy, abs=1e-3)
    after = re.search(r"after:  v2: (\d+)/80 right \(([\d.]+)\)", out)
    assert (after is not None) == (decided[1] == "passed") == (code == 0)
    report(
        "demo-loop (40 night pictures per class, 3 epochs)",
        {
            "labelled accuracy v1": accuracy,
            "gate": f"{decided[1]}: v2 {decided[2]} against v1 {decided[3]}",
            "before": before[2],
            "after": after[2] if after else None,
        },
    )
