"""Training throughput: DataModule-fed steps against the compute limit, in the same run.

The compute limit is the same model trained on pre-made tensors of the same shape (no loading, no
augmentation). Both run through the same Lightning Trainer for the same number of steps; the first
steps are warm-up and not timed. Variants show what channels_last and DataLoader workers buy, at
each end of the progressive-resizing schedule (`data.train_sizes`: at the small size the batch
augmentation and reading the cache weigh most against a cheap step), what the batch augmentation
costs against a training step, and what torch.compile buys.

Usage: python bench/train_throughput.py [--source ../shared/data/petimages-180.zip]
       [--data-dir data/prepared] [--steps 120] [--config configs/fit.yaml]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import instantiate_class
from torch.utils.data import DataLoader, TensorDataset

from catsdogs_pl import config as fit_config
from catsdogs_pl.data.augment import augment_batch
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings
from catsdogs_pl.models.classifier import CatsDogsClassifier

WARMUP = 5


class StepTimer(L.Callback):
    """Wall time from the end of the warm-up steps to the last step."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = self.samples = 0

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        self.steps += 1
        if self.steps == WARMUP:
            self.start = time.perf_counter()
        elif self.steps > WARMUP:
            self.samples += len(batch[0])
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.samples / (self.end - self.start)


def classifier(model_args: dict[str, Any], **overrides: Any) -> CatsDogsClassifier:
    """The config's `model` section as LightningCLI builds it: the net from class_path/init_args."""
    args = {**model_args, **overrides}
    return CatsDogsClassifier(instantiate_class((), args.pop("net")), **args)


def made_batches(batch: int, size: int) -> DataLoader:
    """Pre-made tensors of the training shape: the compute limit, no loading or augmentation."""
    made = TensorDataset(torch.randn(batch * 8, 3, size, size), torch.randint(0, 2, (batch * 8,)))
    return DataLoader(made, batch_size=batch, shuffle=True, drop_last=True)


def train_rate(
    model_args: dict[str, Any], steps: int, precision: str, compile: bool = False, **fit_kwargs: Any
) -> float:
    """Samples/s after the warm-up steps (which include torch.compile's compilation)."""
    L.seed_everything(0, verbose=False)
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        accelerator="auto",
        devices=1,
        precision=precision,
    )
    module = classifier(model_args)
    trainer.fit(torch.compile(module) if compile else module, **fit_kwargs)
    return timer.rate


def augment_ms(dm: CatsDogsDataModule, size: int, repeats: int = 20) -> float:
    """Milliseconds that `augment_batch` takes for one training batch of the cache at `size`."""
    images, _ = next(iter(dm.train_dataloader()))
    augment_batch(images, size, dm.hparams.crop_scale)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        augment_batch(images, size, dm.hparams.crop_scale)
    return round(1000 * (time.perf_counter() - start) / repeats, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).parents[1]
    parser.add_argument("--config", type=Path, default=root / "configs" / "fit.yaml")
    parser.add_argument("--source", default=str(root.parent / "shared/data/petimages-180.zip"))
    parser.add_argument("--data-dir", help="default: the config's data.data_dir")
    parser.add_argument("--steps", type=int, default=120)  # 40 steps at 64 px: 2 s, too noisy
    args = parser.parse_args()
    config = fit_config.load(args.config)  # base.yaml underneath, as fit reads it
    model_args, data_args = config["model"], config["data"]
    data_args.update(
        source=args.source,
        data_dir=args.data_dir or data_args["data_dir"],
        settings=Settings(**data_args["settings"]),
    )
    batch, size = data_args["batch_size"], data_args["settings"].image_size
    precision = config["trainer"].get("precision", "32-true")
    # progressive resizing trains at every size in between; the ends bound the loader's share
    sizes = sorted(set(data_args.get("train_sizes") or [size]))
    result: dict[str, Any] = {
        "cached_size": size,
        "batch_size": batch,
        "precision": precision,
        "params_millions": round(
            sum(p.numel() for p in classifier(model_args).parameters()) / 1e6, 2
        ),
        "steps": args.steps,
    }
    for train_size in sizes:
        compute = made_batches(batch, train_size)
        for channels_last in (True, False):
            margs = {**model_args, "channels_last": channels_last}
            limit = train_rate(margs, args.steps, precision, train_dataloaders=compute)
            fed = {}
            for workers in sorted({0, 1, data_args["num_workers"]}):
                dm = CatsDogsDataModule(
                    **{**data_args, "num_workers": workers, "train_sizes": (train_size,) * 2}
                )
                rate = train_rate(margs, args.steps, precision, datamodule=dm)
                fed[f"workers={workers}"] = round(rate, 1)
            best = max(fed.values())
            result[f"train_size={train_size} channels_last={channels_last}"] = {
                "compute_limit_samples_per_s": round(limit, 1),
                "datamodule_samples_per_s": fed,
                "best_ratio_to_limit": round(best / limit, 3),
                "augment_ms_per_batch": augment_ms(dm, train_size),
                "step_ms_at_compute_limit": round(1000 * batch / limit, 1),
            }
    # what torch.compile buys on this machine: the compute limit at the final size, compiled
    eager = result[f"train_size={sizes[-1]} channels_last=True"]["compute_limit_samples_per_s"]
    start = time.perf_counter()
    compiled = train_rate(
        model_args,
        args.steps,
        precision,
        compile=True,
        train_dataloaders=made_batches(batch, sizes[-1]),
    )
    result["torch.compile"] = {
        "train_size": sizes[-1],
        "compute_limit_samples_per_s": round(compiled, 1),
        "ratio_to_eager": round(compiled / eager, 3),
        "seconds_including_compilation": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
