"""`CatsDogsClassifier`: the LightningModule that owns loss, metrics and optimisation of a network.

Metric keys are defined here once; callbacks, the MLflow summary and the tests import them.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper
from torchvision.transforms import v2

from catsdogs_pl.errors import ConfigError

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_ACC_BEST = "val/acc_best"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_ECE = "test/ece"  # expected calibration error, 15 equal bins of the top-class probability
ECE_BINS = 15


def class_accuracy(name: str) -> str:
    """The metric key of the test accuracy on the photos of class `name` (its recall)."""
    return f"test/acc_{name}"


MONITOR = VAL_ACC  # what checkpointing, early stopping and the registry compare


def _run_steps(trainer: L.Trainer) -> int:
    """The optimizer steps of the whole run: those taken before a resume (perhaps at another batch
    size) and those the epochs left take now."""
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    total = trainer.global_step + per_epoch * (trainer.max_epochs - trainer.current_epoch)
    if trainer.max_epochs == -1 or 0 < trainer.max_steps < total:
        total = trainer.max_steps
    return max(1, total)


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes),
        },
        prefix=prefix,
    )


class CatsDogsClassifier(L.LightningModule):
    """Cross-entropy (optional label smoothing), AdamW with a one-cycle (warm-up + cosine) schedule."""

    def __init__(
        self,
        net: nn.Module,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.1,
        warmup_fraction: float = 0.15,
        channels_last: bool = True,
        mix_alpha: float = 0.0,
    ) -> None:
        """`net`: any classifier network with `num_classes` and `init_args` (BaselineCNN); the
        configs name it as `model.net` with `class_path`/`init_args`, and its arguments are saved
        with it (`init_args`), not here. `channels_last` speeds convolutions on CPUs and tensor
        cores (see bench/). `mix_alpha` > 0 trains each batch on MixUp or CutMix (chosen at
        random) with that Beta(alpha, alpha) mixing."""
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        num_classes = net.num_classes
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = _metrics(num_classes, "val/")
        self.test_metrics = _metrics(num_classes, "test/")
        self.val_acc_best = MaxMetric()
        self.mix = None
        if mix_alpha > 0:
            self.mix = v2.RandomChoice(
                [
                    v2.MixUp(alpha=mix_alpha, num_classes=num_classes),
                    v2.CutMix(alpha=mix_alpha, num_classes=num_classes),
                ]
            )

    def setup(self, stage: str) -> None:
        num_classes = self.net.num_classes
        classes = getattr(self.trainer.datamodule, "classes", None)
        if classes is not None and len(classes) != num_classes:
            raise ConfigError(
                f"model.net.init_args.num_classes={num_classes} but the data has "
                f"{len(classes)} classes {classes}: set "
                f"--model.net.init_args.num_classes={len(classes)}"
            )
        names = [str(c) for c in classes] if classes is not None else None
        # test only: per-class accuracy (is one class paying for the other) and calibration (the
        # monitor and the feedback rules read the served confidence)
        self.test_detail = MetricCollection(
            {
                "ece": MulticlassCalibrationError(num_classes, n_bins=ECE_BINS),
                "acc_": ClasswiseWrapper(
                    MulticlassRecall(num_classes, average=None), labels=names, prefix="acc_"
                ),
            },
            prefix="test/",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        target = y
        if self.mix is not None:
            x, target = self.mix(x, y)  # soft targets; accuracy still counts the major label
        logits = self(x)
        loss = self.loss(logits, target)
        self.train_acc(logits, y)
        self.log(TRAIN_LOSS, loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log(TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        probabilities = logits.softmax(-1)
        metrics.update(probabilities, y)
        if stage == "test":
            self.test_detail.update(probabilities, y)
        self.log(f"{stage}/loss", self.loss(logits, y), on_epoch=True, sync_dist=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.trainer.callback_metrics[VAL_ACC])
        self.log(VAL_ACC_BEST, self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_detail.compute(), sync_dist=True)
        self.test_detail.reset()

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self(batch[0]).softmax(-1)

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]  # norms and biases
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        scheduler = self._one_cycle(optimizer, max(1, self.trainer.estimated_stepping_batches))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _one_cycle(
        self, optimizer: torch.optim.Optimizer, total_steps: int, last_step: int = -1
    ) -> torch.optim.lr_scheduler.OneCycleLR:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.hparams.lr,
            total_steps=total_steps,
            pct_start=self.hparams.warmup_fraction,
            last_epoch=last_step,
        )

    def on_train_start(self) -> None:
        """A resumed run gets back the schedule it was saved with, whose length was that run's: with
        more epochs or another batch size OneCycleLR would raise past its last step. Stretch it
        over this run's steps, from the step where it stopped."""
        config = self.trainer.lr_scheduler_configs[0]
        total = _run_steps(self.trainer)
        if config.scheduler.total_steps != total:
            config.scheduler = self._one_cycle(
                config.scheduler.optimizer, total, config.scheduler.last_epoch - 1
            )
