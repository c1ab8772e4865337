"""Training's worst moments: the process killed mid-epoch (OOM killer, preempted node), and a cache
file damaged before the next run. The resumed fit continues the same MLflow run, on rebuilt data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import places
from catsdogs_pl.data import cache

pytestmark = pytest.mark.slow

EPOCHS = 8


def _fit(tmp_path: Path, *extra: str) -> subprocess.Popen:
    args = [
        "--config",
        str(places.ROOT / "configs" / "demo.yaml"),
        f"--data.source={tmp_path / 'synthetic'}",
        "--data.synthetic_per_class=150",
        f"--data.data_dir={tmp_path / 'prepared'}",
        "--data.settings.image_size=48",
        "--model.net.init_args.width=8",
        "--model.net.init_args.depth=2",
        f"--trainer.max_epochs={EPOCHS}",
        "--early_stopping_patience=100",
        "--trainer.enable_progress_bar=false",
        f"--checkpoint_dir={tmp_path / 'checkpoints'}",
        f"--mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["CATSDOGS_HOME"] = str(tmp_path / "home")
    cmd = [sys.executable, "-m", "catsdogs_pl.fit", *args]
    log = (tmp_path / f"fit{len(list(tmp_path.glob('fit*.log')))}.log").open("w")
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _checkpoint_times(tmp_path: Path, process: subprocess.Popen, count: int) -> list[float]:
    """Wait for `count` saves of last.ckpt (one per epoch); their times."""
    seen: list[float] = []
    deadline = time.monotonic() + 300
    while len(seen) < count:
        assert process.poll() is None, "fit ended before it could be killed"
        assert time.monotonic() < deadline, "no epoch finished in 300 s"
        found = list((tmp_path / "checkpoints").glob("*/last.ckpt"))
        if found and (not seen or found[0].stat().st_mtime > seen[-1]):
            seen.append(found[0].stat().st_mtime)
        time.sleep(0.05)
    return seen


def test_fit_killed_mid_epoch_resumes_the_same_run_on_a_rebuilt_cache(
    tmp_path: Path, report
) -> None:
    first = _fit(tmp_path)
    saves = _checkpoint_times(tmp_path, first, 2)
    time.sleep((saves[1] - saves[0]) / 2)  # half an epoch after the second save
    assert first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (killed,) = client.search_runs([client.get_experiment_by_name("catsdogs-demo").experiment_id])
    assert killed.info.status == "RUNNING"  # nobody was left to mark it: resume must finish it
    done_before = {int(m.value) for m in client.get_metric_history(killed.info.run_id, "epoch")}

    # damage one cached training image: same size, header intact, a checksum is all that sees it
    images, _ = cache.split_files(tmp_path / "prepared", 48, "train")
    data = bytearray(images.read_bytes())
    data[-100] ^= 0xFF
    images.write_bytes(bytes(data))

    resumed = _fit(tmp_path, "--ckpt_path=last")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "fit1.log").read_text()[-3000:]
    log = (tmp_path / "fit1.log").read_text()
    assert "does not match the checksum" in log and "rebuilding the cache" in log
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    epochs = {int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")}
    assert set(range(EPOCHS)) <= epochs and len(client.search_runs([run.info.experiment_id])) == 1
    assert client.get_model_version("catsdogs", "1").run_id == run.info.run_id
    report(
        "fit killed mid-epoch, resumed",
        {"epochs_logged_before_kill": sorted(done_before), "resumed_run_status": run.info.status},
    )
