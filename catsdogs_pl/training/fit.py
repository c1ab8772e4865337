"""The fit command (`python -m catsdogs_pl.fit`): LightningCLI with MLflow, checkpoints, resume.

One MLflow run per fit (MLFlowLogger), resumable with `--ckpt_path last` (the newest run of the same
config, for more epochs or with another batch size if asked). After training it tests the best
checkpoint, logs plots, the best checkpoint and a servable export, registers a new version of the
registered model and moves the `champion` alias only when the new version is at least as good.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from catsdogs_pl import config, registry
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.errors import ConfigError, MissingError
from catsdogs_pl.models.classifier import MONITOR, CatsDogsClassifier
from catsdogs_pl.training.publish import FitSummary, publish

RUN_CONFIG = "catsdogs_run_config"  # the checkpoint's record of what its run was trained with


def net_params(net: nn.Module) -> dict[str, Any]:
    """The network's class and arguments: they live with the network, not in the module's hparams."""
    return {"class": type(net).__name__, **getattr(net, "init_args", {})}


def _differences(checkpoint: Path, wanted: dict[str, Any]) -> list[str]:
    """The settings of `wanted` that the run of `checkpoint` was trained without."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    saved = saved.get(RUN_CONFIG, {})
    return [
        f"{key}={saved.get(key, '(not recorded)')} there, {value} here"
        for key, value in wanted.items()
        if saved.get(key) != value
    ]


def find_last_checkpoint(checkpoint_dir: Path, wanted: dict[str, Any], config: str) -> Path:
    """The newest `<checkpoint_dir>/<run_id>/last.ckpt` of a run trained with `wanted` (see
    `FitCLI.run_config`; `config` names it for the user): its folder names the run to continue.
    Another config's run (the demo's, say) would go on in the wrong experiment, or not load."""
    found = sorted(checkpoint_dir.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)[::-1]
    if not found:
        raise MissingError(
            f"--ckpt_path last: no {checkpoint_dir}/<run_id>/last.ckpt to resume; "
            "train once without --ckpt_path first"
        )
    for checkpoint in found:
        if not _differences(checkpoint, wanted):
            return checkpoint
    raise MissingError(
        f"--ckpt_path last: none of the {len(found)} checkpoints in {checkpoint_dir} was trained "
        f"with this config ({config}); the newest, {found[0]}, has "
        f"{'; '.join(_differences(found[0], wanted))}. Train once without --ckpt_path, or resume "
        "that run with the config it was trained with"
    )


def _build_network(class_type: type[nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """The networks ship in the .mar without this package, so they refuse bad arguments with a
    plain ValueError: this names the config key for the user."""
    try:
        return class_type(*args, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"model.net.init_args of {class_type.__name__}: {exc}") from exc


class RecordRunConfig(Callback):
    """Writes into every checkpoint what its run was trained with, for `find_last_checkpoint`."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        self.run_config = run_config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_CONFIG] = self.run_config


class QuietSanityCheck(Callback):
    """The sanity check scores two validation batches only to prove that the loop runs. The
    validation split is cached in class order, so both batches hold cats alone and torchmetrics'
    AUROC warns "No negative samples in targets" (or "positive"): about those two batches, never
    about the run. Silenced for the sanity check alone: a real validation epoch still warns."""

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings(
            "ignore", r"No (negative|positive) samples in targets", UserWarning, r"torchmetrics\."
        )

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._quiet.__exit__(None, None, None)


class _NoAdvertisement(logging.Filter):
    """Lightning logs "💡 Tip: ... try installing litlogger" (and litmodels) at every Trainer that
    has no LitLogger, with no setting to turn it off: an advertisement, not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_ADVERTISEMENT = _NoAdvertisement()


def quiet_lightning() -> None:
    """Silence, narrowly, what Lightning prints at every fit that is not about the user's run."""
    # rank_zero_info logs through this logger (lightning.pytorch.utilities.rank_zero sets it as
    # lightning_utilities' rank-zero logger; once MLflow's pytorch flavour has imported the
    # `pytorch_lightning` alias, a second fit in the process logs through that one); its other
    # messages ("Seed set to", "GPU available") stay. addFilter adds the one instance once.
    for package in ("lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(f"{package}.utilities.rank_zero").addFilter(_NO_ADVERTISEMENT)
    # Lightning's own pytree helper builds the LeafSpec that this torch deprecates: Lightning's to
    # update, nothing the user can change
    warnings.filterwarnings(
        "ignore",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    )


class ResumableMLFlowLogger(MLFlowLogger):
    """MLflow refuses to change a logged param, so a run resumed with another value of one (a
    larger batch size, say) keeps the first value as the param and the new one as a tag
    `resumed/<key>`. Flattened as MLFlowLogger does, so the keys are the params' own."""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        logged = self.experiment.get_run(self.run_id).data.params
        flat = {key: str(value) for key, value in _flatten_dict(_convert_params(params)).items()}
        changed = {key: value for key, value in flat.items() if logged.get(key, value) != value}
        for key, value in changed.items():
            self.experiment.set_tag(self.run_id, f"resumed/{key}", value)
        super().log_hyperparams({k: v for k, v in flat.items() if k not in changed})


class FitCLI(LightningCLI):
    """LightningCLI with MLflow, checkpointing and resume wired in."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_class_arguments(registry.MlflowSettings, "mlflow")
        # required: their values (and seed_everything's) live in configs/base.yaml, the default
        # config file, so that the commands after fit read the same ones (catsdogs_pl.config)
        parser.add_argument("--checkpoint_dir", type=str, required=True)
        parser.add_argument("--early_stopping_patience", type=int, required=True)
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="'last' or a .ckpt path to resume"
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        with warnings.catch_warnings():
            if args is not None:
                # main(args) from Python (the demo, the tests): sys.argv is then the caller's own
                # command line (the demo's `--seed 3`, pytest's), which LightningCLI ignores, so
                # its warning about args given beside command-line arguments is a false alarm
                warnings.filterwarnings("ignore", r"LightningCLI's args parameter", UserWarning)
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """Fail before any training when the data or the tracking server is missing."""
        data = self.config.data
        if data.synthetic_per_class == 0 and not Path(data.source).exists():
            raise MissingError(
                f"data.source={data.source} does not exist: set data.source in the config (or "
                "--data.source) to an archive or class folders, e.g. after "
                "`python -m catsdogs_pl.data download --dest data`"
            )
        self.tracking_uri = registry.resolve_tracking_uri(self.config.mlflow.tracking_uri)
        registry.check_reachable(self.tracking_uri)
        # after LightningCLI's own instantiators, so the module and DataModule keep theirs
        self.parser.add_instantiator(_build_network, nn.Module)

    def run_config(self) -> dict[str, Any]:
        """What a checkpoint's run must have been trained with to be resumed here: the same MLflow
        experiment and registered model, network and prepared dataset (epochs, batch size and
        the rest may change)."""
        store: registry.MlflowSettings = self.config_init.mlflow
        return {
            "mlflow.experiment": store.experiment,
            "mlflow.registered_model": store.registered_model,
            "model.net": net_params(self.model.net),
            "data.settings": dataclasses.asdict(self.datamodule.settings),
        }

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self.config_init
        store: registry.MlflowSettings = cfg.mlflow
        checkpoint_dir = Path(cfg.checkpoint_dir)
        run_id = None
        run_config = self.run_config()
        self.resume_path = cfg.ckpt_path
        if cfg.ckpt_path == "last":
            config = " ".join(map(str, self.config.get("config") or [])) or "no --config"
            self.resume_path = str(find_last_checkpoint(checkpoint_dir, run_config, config))
        if self.resume_path:
            run_id = Path(self.resume_path).parent.name  # the same MLflow run goes on
        logger = ResumableMLFlowLogger(
            experiment_name=store.experiment,
            tracking_uri=self.tracking_uri,
            run_id=run_id,
            log_model=False,
            artifact_location=registry.artifact_location(self.tracking_uri),
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
            RecordRunConfig(run_config),
            QuietSanityCheck(),
        ]
        configured = (cfg.get("trainer") or {}).get("callbacks") or []
        return super().instantiate_trainer(
            logger=logger, callbacks=[*configured, *callbacks], **kwargs
        )


# configs/base.yaml underneath every --config (the seed, checkpoint_dir and early stopping's
# patience live there alone); the one merged view that catsdogs_pl.config.load also reads
CLI_KWARGS: dict[str, Any] = {
    "parser_kwargs": {"default_config_files": [str(config.BASE)]},
    "save_config_callback": None,
    "auto_configure_optimizers": False,
}


def main(args: list[str] | None = None) -> FitSummary | None:
    """Run the whole fit; returns its summary (None on non-zero DDP ranks). `args` None: the
    command line's (`python -m catsdogs_pl.fit`); a list: from Python (the demo, the tests)."""
    quiet_lightning()
    cli = FitCLI(CatsDogsClassifier, CatsDogsDataModule, run=False, args=args, **CLI_KWARGS)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    try:
        if trainer.is_global_zero:
            run_id = trainer.logger.run_id
            client = trainer.logger.experiment
            client.log_text(run_id, cli.parser.dump(cli.config, skip_none=False), "config.yaml")
            for key, value in registry.environment_tags().items():
                client.set_tag(run_id, key, value)
        trainer.logger.log_hyperparams({"net": net_params(model.net)})
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
