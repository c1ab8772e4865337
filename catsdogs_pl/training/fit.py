"""The fit command (`python -m catsdogs_pl.fit`): LightningCLI with MLflow, checkpoints, resume.

One MLflow run per fit (MLFlowLogger), resumable with `--ckpt_path last`. After training it tests the
best checkpoint, logs plots, the best checkpoint and a servable export, registers a new version of
the registered model and moves the `champion` alias only when the new version is at least as good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import MLFlowLogger

from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.errors import MissingError
from catsdogs_pl.models.classifier import MONITOR, CatsDogsClassifier
from catsdogs_pl.training import tracking
from catsdogs_pl.training.publish import FitSummary, publish


def find_last_checkpoint(checkpoint_dir: Path) -> Path:
    """The newest `<checkpoint_dir>/<run_id>/last.ckpt`: its folder names the run to continue."""
    found = sorted(checkpoint_dir.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise MissingError(
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
            raise MissingError(
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


def main(args: list[str] | None = None) -> FitSummary | None:
    """Run the whole fit; returns its summary (None on non-zero DDP ranks)."""
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
        # the network's arguments live with the network (not in the module's hparams)
        net = {"class": type(model.net).__name__, **getattr(model.net, "init_args", {})}
        trainer.logger.log_hyperparams({"net": net})
        trainer.fit(model, datamodule=dm, ckpt_path=cli.resume_path)
        trainer.test(model, datamodule=dm, ckpt_path="best")
        if not trainer.is_global_zero:
            return None
        summary = publish(trainer, model, dm, cli.config_init.mlflow, cli.tracking_uri)
    except BaseException:
        if trainer.is_global_zero:
            trainer.logger.finalize("failed")
        raise
    print(summary.report())
    return summary
