"""The servable contract: the JSON files as data classes, one way to build and load a network, and
limits that reach serving from the data they were cleaned by."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from catsdogs_pl import preprocessing, servable
from catsdogs_pl.contracts import (
    Architecture,
    Contract,
    ContractError,
    Preprocessing,
    Reference,
    Summary,
)
from catsdogs_pl.data import synthetic
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.serving import package, sign
from tests.helpers.serving import ARCH, FakeContext, load_handler

# Written by the code of 3854a71, before the files had a format (tests/data/format1/README.md)
FORMAT1 = Path(__file__).parent / "data" / "format1"
CONTRACTS: list[type[Contract]] = [Preprocessing, Architecture, Summary, Reference]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.FILE)
def test_files_of_todays_format_load_and_round_trip(contract: type[Contract]) -> None:
    found = contract.read(FORMAT1)
    again = contract.from_json(found.to_json())
    assert again == found and '"format": 1' in found.to_json()


def test_the_old_files_say_what_they_said() -> None:
    pre = Preprocessing.read(FORMAT1)
    assert (pre.image_size, pre.classes, pre.limits) == (
        32,
        ("cat", "dog"),
        {"min_side": 32, "max_pixels": 50_000_000},
    )
    assert Architecture.read(FORMAT1) == Architecture(
        "BaselineCNN", {**ARCH, "flip_tta": True, "stem_stride": 2}
    )
    summary = Summary.read(FORMAT1)
    assert summary.kept == 20 and summary.image_size == 32 and summary.reused["cache"] is False
    assert Reference.read(FORMAT1).images == 20  # its format was called "schema" then
    assert Architecture.from_json('{"width": 4}') == Architecture("BaselineCNN", {"width": 4})


def test_an_export_of_todays_format_is_served(tmp_path: Path) -> None:
    """An export folder (and so a .mar) written before this change: servable.load and the handler
    of this change read it."""
    export = tmp_path / "export"
    shutil.copytree(FORMAT1, export)
    (export / Summary.FILE).unlink()
    net = servable.build(Architecture.read(export))
    torch.save(net.state_dict(), export / servable.WEIGHTS)
    loaded, pre = servable.load(export)
    assert type(loaded) is BaselineCNN and pre.image_size == 32
    sign.sign_export(export)  # what `python -m catsdogs_pl.serving.sign` does to such a version
    staged = package.stage(export, tmp_path / "model")
    handler = load_handler(staged, FakeContext(staged))
    assert (
        handler.predictor.classes == ["cat", "dog"]
        and handler.predictor.pre.to_json() == pre.to_json()
    )
    assert (
        type(handler.predictor.pre).__module__ == "catsdogs_contracts"
    )  # the .mar's copy, not ours


def test_a_newer_format_or_a_missing_key_is_refused_naming_the_file() -> None:
    with pytest.raises(ContractError, match="preprocessing.json has format 2; .* reads up to 1"):
        Preprocessing.from_json('{"format": 2, "image_size": 32}')
    with pytest.raises(ContractError, match="summary.json lacks .*dataset_version"):
        Summary.from_json('{"kept": 3}')
    with pytest.raises(ContractError, match="reference.json is not JSON"):
        Reference.from_json("{half")


def test_contracts_are_frozen() -> None:
    pre = preprocessing.spec(32, ["cat", "dog"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.image_size = 64  # type: ignore[misc]


@pytest.mark.parametrize("network", servable.NETWORKS)
def test_every_network_exports_each_constructor_argument(network: str) -> None:
    net = servable.network_class(network)()
    arch = servable.architecture(net)
    assert type(servable.build(arch)) is type(net)


def test_a_forgotten_constructor_argument_is_refused() -> None:
    class Wider(BaselineCNN):
        def __init__(self, extra: int = 3, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="Wider.init_args lacks extra"):
        servable.architecture(Wider())


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(buf, "PNG")
    return buf.getvalue()


def test_the_served_limit_is_the_prepared_one(tmp_path: Path) -> None:
    """Prepare with min_side 48 (not the default 32), export and stage as package does: the
    handler refuses a 40 px upload as cleaning refused it, and takes a 48 px one."""
    dm = CatsDogsDataModule(
        source=str(synthetic.generate(tmp_path / "src", per_class=10, size=64)),
        data_dir=str(tmp_path / "prepared"),
        settings=Settings(image_size=32, min_side=48),
        batch_size=8,
        num_workers=0,
    )
    dm.prepare_data()
    assert dm.preprocessing.min_side == 48
    export = servable.export(BaselineCNN(**ARCH), dm.preprocessing, tmp_path / "export")
    sign.sign_export(export)
    staged = package.stage(export, tmp_path / "model")
    context = FakeContext(staged)
    handler = load_handler(staged, context)
    answers = handler.handle([{"body": _png(40)}, {"body": _png(48)}], context)
    assert answers[0]["error"] == "too_small" and "under 48 px" in answers[0]["message"]
    assert answers[1]["label"] in ("cat", "dog")
