"""CatsDogsDataModule: batches, normalisation after transfer, worker-safe datasets."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from catsdogs_pl import preprocessing
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings
from catsdogs_pl.errors import ConfigError


def prepared(tmp_path: Path, image_size: int = 32, **kwargs: Any) -> CatsDogsDataModule:
    module = CatsDogsDataModule(
        source=str(tmp_path / "synthetic"),
        data_dir=str(tmp_path / "prepared"),
        settings=Settings(image_size=image_size),
        batch_size=8,
        num_workers=0,
        synthetic_per_class=30,
        **kwargs,
    )
    module.prepare_data()
    module.setup("fit")
    return module


@pytest.fixture
def dm(tmp_path: Path) -> CatsDogsDataModule:
    return prepared(tmp_path)


def test_batches_are_uint8_then_normalised(dm: CatsDogsDataModule) -> None:
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(y, labels)
    assert torch.allclose(x, preprocessing.normalize(images))


def test_every_split_and_class_order(dm: CatsDogsDataModule) -> None:
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sum(sizes.values()) == 60 and sizes["train"] > sizes["val"]
    assert dm.classes == ["cat", "dog"]
    assert dm.preprocessing.image_size == 32
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        images, _ = next(iter(loader))
        assert images.shape[1:] == (3, 32, 32)


def test_only_training_batches_are_augmented(dm: CatsDogsDataModule) -> None:
    images, labels = next(iter(dm.val_dataloader()))
    dm.trainer = SimpleNamespace(training=False)
    assert torch.equal(
        dm.on_after_batch_transfer((images, labels), 0)[0], preprocessing.normalize(images)
    )
    dm.trainer = SimpleNamespace(training=True, current_epoch=0, max_epochs=1)
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == images.shape and torch.equal(y, labels)
    assert not torch.equal(x, preprocessing.normalize(images))


def test_dataset_pickles_without_the_array(dm: CatsDogsDataModule) -> None:
    train = dm.datasets["train"]
    train[0]  # maps the file in this process
    assert len(pickle.dumps(train)) < 10_000  # workers map the file themselves
    clone = pickle.loads(pickle.dumps(train))
    assert clone[0][0].shape == (3, 32, 32)


def test_setup_before_prepare_says_what_to_do(tmp_path: Path) -> None:
    module = CatsDogsDataModule(source=str(tmp_path / "x"), data_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        module.setup("fit")


def test_progressive_resizing_grows_training_batches_only(tmp_path: Path) -> None:
    module = prepared(tmp_path, image_size=48, train_sizes=(16, 48))
    assert [module.train_size(e, 5) for e in range(5)] == [16, 32, 32, 48, 48]
    batch = next(iter(module.train_dataloader()))
    module.trainer = SimpleNamespace(training=True, current_epoch=0, max_epochs=5)
    assert module.on_after_batch_transfer(batch, 0)[0].shape[-2:] == (16, 16)
    module.trainer = SimpleNamespace(training=True, current_epoch=4, max_epochs=5)
    assert module.on_after_batch_transfer(batch, 0)[0].shape[-2:] == (48, 48)
    module.trainer = SimpleNamespace(training=False, current_epoch=0, max_epochs=5)
    images, _ = next(iter(module.val_dataloader()))
    assert module.on_after_batch_transfer((images, batch[1]), 0)[0].shape[-2:] == (48, 48)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"crop_scale": 0.0}, "data.crop_scale"),
        ({"random_erasing": 1.5}, "data.random_erasing"),
        ({"train_sizes": (16, 64)}, "data.train_sizes"),
        ({"train_sizes": (8, 32)}, "data.train_sizes"),
    ],
)
def test_bad_augmentation_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        CatsDogsDataModule("src", "prepared", settings=Settings(image_size=32), **kwargs)


@pytest.mark.parametrize("key", ["val_fraction", "test_fraction"])
def test_an_empty_val_or_test_split_is_refused(key: str) -> None:
    """Validation picks the checkpoint and the test split the champion: neither can be empty."""
    with pytest.raises(ConfigError, match=rf"data\.settings\.{key}=0"):
        CatsDogsDataModule("src", "prepared", settings=Settings(image_size=32, **{key: 0.0}))
