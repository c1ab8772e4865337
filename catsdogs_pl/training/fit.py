"""`python -m catsdogs_pl.fit --config configs/fit.yaml`: train, test, export, register.

One MLflow run per fit (MLFlowLogger), resumable with `--ckpt_path last`. After training it tests the
best checkpoint, logs plots, the best checkpoint and a servable export, registers a new version of
the registered model and moves the `champion` alias only when the new version is at least as good.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient

from catsdogs_pl import preprocessing
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.models.classifier import (
    MONITOR,
    TEST_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_LOSS,
    CatsDogsClassifier,
)
from catsdogs_pl.training import export, plots, tracking


def find_last_checkpoint(checkpoint_dir: Path) -> Path:
    """The newest `<checkpoint_dir>/<run_id>/last.ckpt`: its folder names the run to continue."""
    found = sorted(checkpoint_dir.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path last: no {checkpoint_dir}/<run_id>/last.ckpt to resume; "
            "train once without --ckpt_path first"
        )
    return found[-1]


class FitCLI(LightningCLI):
    """LightningCLI with MLflow, checkpointing and resume wired in."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_class_arguments(tracking.MlflowSettings, "mlflow")
        parser.add_argument("--checkpoint_dir", type=str, default="checkpoints")
        parser.add_argument("--early_stopping_patience", type=int, default=5)
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="'last' or a .ckpt path to resume"
        )

    def before_instantiate_classes(self) -> None:
        """Fail before any training when the data or the tracking server is missing."""
        data = self.config.data
        if data.synthetic_per_class == 0 and not Path(data.source).exists():
            raise FileNotFoundError(
                f"data.source={data.source} does not exist: set data.source in the config (or "
                "--data.source) to an archive or class folders, e.g. after "
                "`python -m catsdogs_pl.data download --dest data`"
            )
        self.tracking_uri = tracking.resolve_tracking_uri(self.config.mlflow.tracking_uri)
        tracking.check_reachable(self.tracking_uri)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self.config_init
        settings: tracking.MlflowSettings = cfg.mlflow
        checkpoint_dir = Path(cfg.checkpoint_dir)
        run_id = None
        self.resume_path = cfg.ckpt_path
        if cfg.ckpt_path == "last":
            self.resume_path = str(find_last_checkpoint(checkpoint_dir))
        if self.resume_path:
            run_id = Path(self.resume_path).parent.name  # the same MLflow run goes on
        logger = MLFlowLogger(
            experiment_name=settings.experiment,
            tracking_uri=self.tracking_uri,
            run_id=run_id,
            log_model=False,
            artifact_location=tracking.artifact_location(self.tracking_uri),
        )
        callbacks = [
            ModelCheckpoint(
                dirpath=checkpoint_dir / str(logger.run_id),
                filename="best-epoch{epoch:02d}",
                auto_insert_metric_name=False,
                monitor=MONITOR,
                mode="max",
                save_last=True,
            ),
            EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.early_stopping_patience),
            LearningRateMonitor(logging_interval="epoch"),
        ]
        configured = (cfg.get("trainer") or {}).get("callbacks") or []
        return super().instantiate_trainer(
            logger=logger, callbacks=[*configured, *callbacks], **kwargs
        )


def _evaluate(net: torch.nn.Module, dm: CatsDogsDataModule) -> tuple[np.ndarray, ...]:
    """Test images, targets and class probabilities, in dataset order, for the plots."""
    test = dm.datasets["test"]
    images = np.load(test.images_path, mmap_mode="r")
    probs = []
    net = net.eval().cpu()
    with torch.inference_mode():
        for start in range(0, len(test), 256):
            batch = torch.from_numpy(np.array(images[start : start + 256])).permute(0, 3, 1, 2)
            probs.append(net(preprocessing.normalize(batch)).softmax(-1).numpy())
    return images, test.labels, np.concatenate(probs)


def publish(
    trainer: Any, model: CatsDogsClassifier, dm: CatsDogsDataModule, cli: FitCLI
) -> dict[str, Any]:
    """Log data, plots, checkpoint and servable export; register; move the alias if earned."""
    settings: tracking.MlflowSettings = cli.config_init.mlflow
    run_id = trainer.logger.run_id
    client = MlflowClient(cli.tracking_uri)
    data_summary = dm.summary
    classes = data_summary["classes"]
    client.log_param(run_id, "data/dataset_version", data_summary["dataset_version"])
    client.log_dict(run_id, data_summary, "data/summary.json")
    client.log_artifact(run_id, trainer.checkpoint_callback.best_model_path, "checkpoints")

    history = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in (TRAIN_LOSS + "_epoch", VAL_LOSS, VAL_ACC)
    }
    images, targets, probs = _evaluate(model.net, dm)
    figures = {
        "learning_curves": plots.learning_curves(history),
        "confusion_matrix": plots.confusion_matrix(targets, probs.argmax(1), classes),
        "roc_curve": plots.roc_curve(targets, probs[:, 1], classes[1]),
        "confident_mistakes": plots.confident_mistakes(images, targets, probs, classes),
    }
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"plots/{name}.png")
        plots.plt.close(fig)

    with tempfile.TemporaryDirectory() as tmp:
        folder = export.export(model.net, model.architecture, dm.preprocessing, Path(tmp))
        client.log_artifacts(run_id, str(folder), "servable")

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    mlflow.set_tracking_uri(cli.tracking_uri)
    size = dm.hparams.image_size
    example = np.zeros((2, 3, size, size), dtype=np.float32)  # batch 1 would be specialised
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(model.net.cpu().eval(), name="model", input_example=example)
    tags = {
        "dataset_version": data_summary["dataset_version"],
        "git_commit": tracking.git_commit(),
        TEST_ACC: f"{metrics[TEST_ACC]:.6f}",
    }
    description = (
        f"BaselineCNN {model.architecture} at {size}px; {TEST_ACC}={metrics[TEST_ACC]:.4f} on "
        f"dataset {data_summary['dataset_version']} ({data_summary['splits']['test']['total']} "
        f"test images); servable export in runs:/{run_id}/servable"
    )
    version = tracking.register(
        client, settings.registered_model, info.model_uri, run_id, tags, description, info.model_id
    )
    moved, reason = tracking.update_champion(client, settings.registered_model, version, TEST_ACC)
    return {
        "run_id": run_id,
        "tracking_uri": cli.tracking_uri,
        "registered_model": settings.registered_model,
        "version": str(version.version),
        "champion_moved": moved,
        "champion_reason": reason,
        "test_metrics": metrics,
    }


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run the whole fit; returns the final summary (empty on non-zero DDP ranks)."""
    cli = FitCLI(
        CatsDogsClassifier,
        CatsDogsDataModule,
        run=False,
        args=args,
        save_config_callback=None,
        seed_everything_default=42,
        auto_configure_optimizers=False,
    )
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    try:
        if trainer.is_global_zero:
            run_id = trainer.logger.run_id
            client = trainer.logger.experiment
            client.log_text(run_id, cli.parser.dump(cli.config, skip_none=False), "config.yaml")
            for key, value in tracking.environment_tags().items():
                client.set_tag(run_id, key, value)
        trainer.fit(model, datamodule=dm, ckpt_path=cli.resume_path)
        trainer.test(model, datamodule=dm, ckpt_path="best")
        if not trainer.is_global_zero:
            return {}
        summary = publish(trainer, model, dm, cli)
    except BaseException:
        if trainer.is_global_zero:
            trainer.logger.finalize("failed")
        raise
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    lines = ["", "== catsdogs fit: done =="]
    lines += [f"{k}: {v:.4f}" for k, v in sorted(summary["test_metrics"].items())]
    lines += [
        f"MLflow run: {summary['run_id']}  ({summary['tracking_uri']})",
        f"registered: {summary['registered_model']} version {summary['version']}",
        f"champion alias moved: {'yes' if summary['champion_moved'] else 'no'} "
        f"({summary['champion_reason']})",
        f"UI: mlflow ui --backend-store-uri {summary['tracking_uri']}",
    ]
    print("\n".join(lines))
