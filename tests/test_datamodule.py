"""CatsDogsDataModule: batches, normalisation after transfer, worker-safe datasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from catsdogs_pl import preprocessing
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings


@pytest.fixture
def dm(tmp_path: Path) -> CatsDogsDataModule:
    module = CatsDogsDataModule(
        source=str(tmp_path / "synthetic"),
        data_dir=str(tmp_path / "prepared"),
        settings=Settings(image_size=32),
        batch_size=8,
        num_workers=0,
        synthetic_per_class=30,
    )
    module.prepare_data()
    module.setup("fit")
    return module


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
    assert dm.preprocessing["image_size"] == 32
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        images, _ = next(iter(loader))
        assert images.shape[1:] == (3, 32, 32)


def test_eval_images_are_not_augmented(dm: CatsDogsDataModule) -> None:
    a, _ = dm.datasets["val"][0]
    b, _ = dm.datasets["val"][0]
    assert torch.equal(a, b)
    assert dm.datasets["train"].transform is not None and dm.datasets["val"].transform is None


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
