"""`CatsDogsDataModule`: prepared, cached cat/dog images as Lightning dataloaders.

`prepare_data` does the slow, idempotent disk work once (extract, clean, split, cache) and sets no
state; `setup` only maps the cached arrays. Batches travel as uint8 (4x less to copy to a GPU);
after the transfer, training batches are augmented whole (`augment_batch`) and every batch is
normalised with the same constants serving uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from catsdogs_pl import preprocessing
from catsdogs_pl.contracts import Contract, Preprocessing, Summary
from catsdogs_pl.data import cache, synthetic
from catsdogs_pl.data.augment import augment_batch
from catsdogs_pl.data.prepare import Settings, prepare, read_manifest
from catsdogs_pl.data.split import SPLITS
from catsdogs_pl.errors import ConfigError, MissingError

C = TypeVar("C", bound=Contract)


class CachedImages(Dataset):
    """One split of the cache: (uint8 CHW tensor, class index) pairs read from a memory map."""

    def __init__(self, images: Path, labels: Path) -> None:
        self.images_path = images
        self.labels = np.load(labels)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        # each worker maps the file itself: pickling a memmap would copy the whole array
        return {**self.__dict__, "_images": None}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        image = torch.from_numpy(np.array(self._images[index])).permute(2, 0, 1)
        return image, int(self.labels[index])


class CatsDogsDataModule(L.LightningDataModule):
    """Cat/dog images from an archive or class folders, cleaned, split and cached once."""

    def __init__(
        self,
        source: str,
        data_dir: str,  # configs/base.yaml names the default for every fit config
        settings: Settings = Settings(),
        batch_size: int = 64,
        num_workers: int = 2,
        synthetic_per_class: int = 0,
        augment: bool = True,
        crop_scale: float = 0.7,
        random_erasing: float = 0.0,
        train_sizes: tuple[int, int] | None = None,
        added: list[str] | None = None,
    ) -> None:
        """`settings` decide the prepared dataset (size, split), exactly as `python -m
        catsdogs_pl.data prepare` takes them; `synthetic_per_class` > 0 draws that many pictures
        per class into `source` first; `added` folders of class sub-folders join the source
        (users' labels: `python -m catsdogs_pl.data feedback-export`, as `prepare --add`). Training crops keep at least `crop_scale` of the image
        and erase a patch with probability `random_erasing`. `train_sizes` (start, end) is
        progressive resizing: training batches grow linearly from `start` to `end` px over the
        epochs (small, cheap images early), while evaluation and serving stay at
        `settings.image_size`."""
        super().__init__()
        if not 0 < crop_scale <= 1 or not 0 <= random_erasing <= 1:
            raise ConfigError(
                f"data.crop_scale={crop_scale}, data.random_erasing={random_erasing}: "
                "need 0 < crop_scale <= 1 and 0 <= random_erasing <= 1"
            )
        for key in ("val_fraction", "test_fraction"):
            if (fraction := getattr(settings, key)) <= 0:
                raise ConfigError(
                    f"data.settings.{key}={fraction}: training needs it > 0 (the "
                    "validation split picks the best checkpoint, the test split the champion)"
                )
        if train_sizes is not None and not all(
            16 <= size <= settings.image_size for size in train_sizes
        ):
            raise ConfigError(
                f"data.train_sizes={list(train_sizes)}: each size must be between 16 and "
                f"data.settings.image_size={settings.image_size} (the cached size)"
            )
        self.save_hyperparameters()
        self.settings = settings
        self.datasets: dict[str, CachedImages] = {}

    @property
    def out(self) -> Path:
        return Path(self.hparams.data_dir)

    def prepare_data(self) -> None:
        if self.hparams.synthetic_per_class > 0:
            synthetic.generate(
                Path(self.hparams.source), per_class=self.hparams.synthetic_per_class
            )
        added = [Path(folder) for folder in self.hparams.added or []]
        prepare(self.hparams.source, self.out, self.settings, progress=False, added=added)

    def _read(self, contract: type[C]) -> C:
        path = self.out / contract.FILE
        if not path.exists():
            raise MissingError(
                f"{path} is missing: call prepare_data() first (or `python -m catsdogs_pl.data "
                f"prepare --source {self.hparams.source} --out {self.out}`)"
            )
        return contract.read(self.out)

    @property
    def summary(self) -> Summary:
        """summary.json of the prepared data: counts, settings and `dataset_version`."""
        return self._read(Summary)

    @property
    def preprocessing(self) -> Preprocessing:
        """The evaluation preprocessing (size, mean, std, class order) that serving must apply."""
        return self._read(Preprocessing)

    @property
    def classes(self) -> list[str]:
        return list(self.preprocessing.classes)

    def original_sizes(self, split: str) -> np.ndarray:
        """(width, height) of each image of `split` as uploaded, in the cache's order (the
        manifest's): what the resized cache no longer shows."""
        rows = [r for r in read_manifest(self.out / "manifest.csv") if r.split == split]
        return np.array([(r.width, r.height) for r in rows], dtype=np.int64).reshape(-1, 2)

    def train_size(self, epoch: int, max_epochs: int) -> int:
        """The training image size of `epoch` (0-based): `train_sizes` interpolated linearly,
        rounded to the nearest multiple of 16 px (the cached size when there is no schedule)."""
        if self.hparams.train_sizes is None:
            return self.settings.image_size
        start, end = self.hparams.train_sizes
        size = start + (end - start) * epoch / max(1, max_epochs - 1)
        return min(end, max(start, int(size / 16 + 0.5) * 16))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        summary = self.summary
        # prepare_data() verified the checksums just now; here the key is enough
        size = self.settings.image_size
        if problem := cache.check(self.out, summary.dataset_version, size, verify=False):
            raise RuntimeError(f"{problem} (image_size={size}): call prepare_data() first")
        for split in SPLITS:
            self.datasets[split] = CachedImages(*cache.split_files(self.out, size, split))

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=train,
            drop_last=train and len(self.datasets[split]) > self.hparams.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        trainer = self.trainer
        if trainer is not None and trainer.training:
            size = self.train_size(trainer.current_epoch, trainer.max_epochs)
            if self.hparams.augment:
                images = augment_batch(
                    images, size, self.hparams.crop_scale, self.hparams.random_erasing
                )
            elif size != images.shape[-1]:
                images = F.interpolate(images.float(), size, mode="bilinear", antialias=True)
        return preprocessing.normalize(images), labels
