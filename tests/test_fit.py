"""The real entry point (`catsdogs_pl.fit.main`) on the demo config, shrunk, with MLflow in tmp_path."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard
from lightning.pytorch import Callback
from mlflow import MlflowClient

from catsdogs_pl import errors, places, registry, servable, signing
from catsdogs_pl.contracts import Calibration, Reference, Summary
from catsdogs_pl.errors import ConfigError, MissingError
from catsdogs_pl.fit import main
from catsdogs_pl.models.classifier import TEST_ACC, TEST_ECE, VAL_ACC, class_accuracy
from catsdogs_pl.monitoring import reference
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.serving import deploy, package
from catsdogs_pl.training.fit import RUN_CONFIG, find_last_checkpoint
from catsdogs_pl.training.publish import TEMPERATURE, TEST_ECE_SERVED, VAL_ECE
from tests.helpers.serving import environment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.fixture
def fit_args(tmp_path: Path, synthetic: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return [
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        f"--data.source={synthetic}",
        "--data.synthetic_per_class=40",
        f"--data.data_dir={tmp_path / 'prepared'}",
        "--data.settings.image_size=32",
        "--data.batch_size=16",
        "--model.net.init_args.width=8",
        "--model.net.init_args.depth=2",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        f"--checkpoint_dir={tmp_path / 'checkpoints'}",
        f"--mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow  # trains
def test_demo_fit_logs_registers_and_exports(fit_args: list[str], tmp_path: Path) -> None:
    summary = main(fit_args)
    client = MlflowClient(summary.tracking_uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["net/width"] == "8" and run.data.params["settings/image_size"] == "32"
    assert len(run.data.params["data/dataset_version"]) == 16
    assert {VAL_ACC, TEST_ACC, "train/loss_epoch", "val/acc_best"} <= set(run.data.metrics)
    # per class and calibration on the test split: the accuracy is the two recalls' mean, weighted
    cat, dog = (run.data.metrics[class_accuracy(c)] for c in ("cat", "dog"))
    assert min(cat, dog) <= run.data.metrics[TEST_ACC] <= max(cat, dog)
    assert 0 <= run.data.metrics[TEST_ECE] <= 1
    assert run.data.tags["torch"] == torch.__version__ and "git_commit" in run.data.tags
    assert len(client.get_metric_history(run.info.run_id, VAL_ACC)) == 2  # one per epoch
    found = artifacts(client, run.info.run_id)
    expected = {"config.yaml", "data/summary.json"} | {f"servable/{f}" for f in servable.FILES}
    expected |= {f"plots/{p}.png" for p in ("learning_curves", "confusion_matrix", "roc_curve")}
    expected |= {"plots/confident_mistakes.png", f"servable/{servable.CARD}"}
    assert expected <= found
    assert any(f.startswith("checkpoints/best-epoch") for f in found)

    version = client.get_model_version("catsdogs", summary.version)
    assert version.run_id == run.info.run_id
    assert version.tags["dataset_version"] == run.data.params["data/dataset_version"]
    assert float(version.tags[TEST_ACC]) == pytest.approx(run.data.metrics[TEST_ACC], abs=1e-5)
    assert client.get_model_version_by_alias("catsdogs", "champion").version == version.version
    assert summary.champion_moved is True

    local = Path(client.download_artifacts(run.info.run_id, "servable", str(tmp_path / "dl")))
    net, pre = servable.load(local)
    assert pre.classes == ("cat", "dog") and pre.image_size == 32
    signing.verify(local, signing.public_key(places.home()))  # signed as registered, every file
    # the model card, signed with the rest: huggingface_hub reads the run's own figures back
    scores = {
        r.metric_name: r.metric_value
        for r in ModelCard((local / servable.CARD).read_text()).data.eval_results
    }
    assert scores[TEST_ACC] == pytest.approx(run.data.metrics[TEST_ACC], rel=1e-9)
    assert scores[VAL_ACC] == pytest.approx(run.data.metrics["val/acc_best"], rel=1e-6)
    cost = re.search(r"Cost: ([\d.]+) images/s", (local / servable.CARD).read_text())
    assert cost and float(cost.group(1)) > 0  # timed at publish, not typed
    assert scores[TEST_ECE_SERVED] == pytest.approx(run.data.metrics[TEST_ECE_SERVED], rel=1e-9)
    assert net(torch.zeros(3, 3, 32, 32)).shape == (3, 2)

    # the monitoring reference: the validation split, in the run and in the archive alike
    logged = Reference.read(local)
    prepared = Summary.read(tmp_path / "prepared")
    assert logged.images == prepared.splits["val"]["total"] > 0
    assert 0 <= logged.ece <= 1 and 0 <= logged.accuracy <= 1
    # the temperature fitted on the same split, logged with the served probabilities' ECE
    fitted = Calibration.read(local)
    assert fitted.split == "val" and fitted.images == logged.images and fitted.temperature > 0
    assert run.data.metrics[TEMPERATURE] == pytest.approx(fitted.temperature)
    assert run.data.metrics[VAL_ECE] == pytest.approx(fitted.ece_after)
    assert 0 <= run.data.metrics[TEST_ECE_SERVED] <= 1
    assert TEST_ECE_SERVED in summary.test_metrics
    with environment({"CATSDOGS_HOME": str(tmp_path / "home")}):
        uri = MlflowSettings(tracking_uri=summary.tracking_uri)
        _, mar = package.package_version(summary.version, mlflow=uri)
        printed = deploy.card(summary.version, uri)  # `deploy list --card N`: from the archive
    assert reference.from_mar(mar) == logged
    with zipfile.ZipFile(mar) as archive:
        assert {Calibration.FILE, servable.CARD} <= set(archive.namelist())
    assert printed == (local / servable.CARD).read_text()


@pytest.mark.slow  # trains demo.yaml unshrunk: about a minute
def test_the_demo_config_as_shipped_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo`'s training: with 300 pictures per class some seeds learned nothing (0.48)."""
    monkeypatch.chdir(tmp_path)
    summary = main(
        [
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--seed_everything=7",
            "--trainer.enable_progress_bar=false",
            f"--checkpoint_dir={tmp_path / 'checkpoints'}",
            f"--mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    tested = json.loads((tmp_path / "data" / "prepared-demo" / "summary.json").read_text())
    assert tested["splits"]["test"]["total"] >= 200
    assert summary.test_metrics["test/acc"] >= 0.95


@pytest.mark.slow  # trains
def test_same_seed_same_metrics(fit_args: list[str], tmp_path: Path) -> None:
    first = main([*fit_args, "--trainer.max_epochs=1"])
    second = main([*fit_args, "--trainer.max_epochs=1", f"--checkpoint_dir={tmp_path / 'ckpt2'}"])
    assert first.run_id != second.run_id
    assert first.test_metrics == second.test_metrics
    assert second.version == str(int(first.version) + 1)


class CrashAfterFirstEpoch(Callback):
    """Stands for a killed job: dies as epoch 1 starts, after epoch 0 was checkpointed."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.slow  # trains
def test_resume_continues_the_same_run(fit_args: list[str], tmp_path: Path) -> None:
    crash = f"--trainer.callbacks+={__name__}.CrashAfterFirstEpoch"
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*fit_args, crash])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (crashed,) = client.search_runs([client.get_experiment_by_name("catsdogs-demo").experiment_id])
    assert crashed.info.status == "FAILED"
    resumed = main([*fit_args, "--ckpt_path=last"])
    assert resumed.run_id == crashed.info.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    epochs = {m.value for m in client.get_metric_history(resumed.run_id, "epoch")}
    assert {0, 1} <= epochs  # epoch 0 before the crash, epoch 1 after the resume
    assert len(client.get_metric_history(resumed.run_id, VAL_ACC)) == 2


def test_resume_without_checkpoint_says_what_to_do(fit_args: list[str]) -> None:
    with pytest.raises(FileNotFoundError, match="train once without --ckpt_path"):
        main([*fit_args, "--ckpt_path=last"])


@pytest.mark.slow  # trains
def test_resume_with_more_epochs_and_a_larger_batch(fit_args: list[str], tmp_path: Path) -> None:
    """The restored schedule was made for the first run's steps: the resumed one has more."""
    crash = f"--trainer.callbacks+={__name__}.CrashAfterFirstEpoch"
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*fit_args, crash])
    resumed = main(
        [*fit_args, "--ckpt_path=last", "--trainer.max_epochs=3", "--data.batch_size=32"]
    )
    client = MlflowClient(resumed.tracking_uri)
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
    assert len(client.get_metric_history(resumed.run_id, VAL_ACC)) == 3
    # MLflow params cannot change: the first value stays, the resumed one is a tag
    assert run.data.params["batch_size"] == "16" and run.data.tags["resumed/batch_size"] == "32"


def _checkpoint(path: Path, run_config: dict[str, Any], mtime: float) -> Path:
    path.parent.mkdir(parents=True)
    torch.save({RUN_CONFIG: run_config}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_resume_last_takes_the_newest_run_of_the_same_config(tmp_path: Path) -> None:
    demo = {"mlflow.experiment": "catsdogs-demo", "model.net": {"width": 8}}
    fit = {"mlflow.experiment": "catsdogs", "model.net": {"width": 32}}
    ours = _checkpoint(tmp_path / "a" / "last.ckpt", demo, 1000)
    _checkpoint(tmp_path / "b" / "last.ckpt", fit, 2000)
    assert find_last_checkpoint(tmp_path, demo, "demo.yaml") == ours


def test_resume_last_refuses_another_configs_run(fit_args: list[str], tmp_path: Path) -> None:
    other = {"mlflow.experiment": "catsdogs", "model.net": {"class": "BaselineCNN", "width": 32}}
    checkpoint = _checkpoint(tmp_path / "checkpoints" / "run1" / "last.ckpt", other, 1000)
    expected = rf"demo\.yaml.*{re.escape(str(checkpoint))}.*mlflow\.experiment=catsdogs there"
    with pytest.raises(MissingError, match=expected):
        main([*fit_args, "--ckpt_path=last"])
    assert not (tmp_path / "prepared").exists()


def test_empty_test_split_is_refused_before_training(fit_args: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.settings\.test_fraction=0"):
        main([*fit_args, "--data.settings.test_fraction=0"])
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "prepared").exists()


@pytest.mark.parametrize(
    ("config", "argument", "message"),
    [
        ("demo.yaml", "stem_stride=3", "BaselineCNN: stem_stride=3: use 2 or 4"),
        ("finetune.yaml", "weights=nope.pt", "EfficientNetLite: weights='nope.pt': no such file"),
        ("finetune.yaml", "frozen_blocks=22", "EfficientNetLite: num_classes=2, frozen_blocks=22"),
    ],
)
def test_bad_network_arguments_exit_2_with_the_key(
    fit_args: list[str], capsys: pytest.CaptureFixture, config: str, argument: str, message: str
) -> None:
    """As `python -m catsdogs_pl.fit` runs it: `error: ...` and exit 2, no traceback."""
    args = [a for a in fit_args if not a.startswith("--model.net.")]
    args[1] = str(ROOT / "configs" / config)
    assert errors.exit_code(main, [*args, f"--model.net.init_args.{argument}"]) == 2
    err = capsys.readouterr().err
    assert f"error: model.net.init_args of {message}" in err and "Traceback" not in err


def test_missing_data_names_the_key(fit_args: list[str], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.source=.*nope.*download"):
        main([*fit_args, f"--data.source={tmp_path / 'nope'}", "--data.synthetic_per_class=0"])


def test_unreachable_tracking_server_fails_before_training(
    fit_args: list[str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(ConnectionError, match=uri):
        main([*fit_args, f"--mlflow.tracking_uri={uri}"])
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "prepared").exists()


def test_exception_marks_the_run_failed(fit_args: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.net\.init_args\.num_classes=3"):
        main([*fit_args, "--model.net.init_args.num_classes=3"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("catsdogs-demo").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_champion_alias_rule(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'registry.db'}")

    def new_version(acc: float, data: str):
        tags = {TEST_ACC: str(acc), "dataset_version": data}
        return registry.register(client, "m", str(tmp_path), "", tags, "test")

    assert registry.update_champion(client, "m", new_version(0.90, "d1"), TEST_ACC)[0]
    assert not registry.update_champion(client, "m", new_version(0.80, "d1"), TEST_ACC)[0]
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert registry.update_champion(client, "m", new_version(0.90, "d1"), TEST_ACC)[0]  # a tie
    moved, reason = registry.update_champion(client, "m", new_version(0.99, "d2"), TEST_ACC)
    assert not moved and "not comparable" in reason
    assert str(client.get_model_version_by_alias("m", "champion").version) == "3"


@pytest.mark.slow
def test_ddp_two_cpu_processes(fit_args: list[str], tmp_path: Path) -> None:
    args = [*fit_args, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "catsdogs_pl.fit", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered: catsdogs version 1" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("catsdogs-demo").experiment_id])
    assert len(runs) == 1  # one run for both processes
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # two ranks really trained
    assert runs[0].info.status == "FINISHED" and TEST_ACC in runs[0].data.metrics
