"""`python -m catsdogs_pl.training.robustness`: a registered version scored on the prepared test
split under every shift, logged to its run; refused on another dataset_version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from catsdogs_pl import preprocessing, registry, servable
from catsdogs_pl.data.prepare import Settings, prepare, read_manifest
from catsdogs_pl.errors import ConfigError, MissingError, exit_code
from catsdogs_pl.training import robustness
from tests.helpers.images import image_bytes, make_class_folders
from tests.helpers.serving import make_export


def _registered(tmp_path: Path, dataset_version: str) -> tuple[MlflowClient, str, Path]:
    """A sqlite store with version 1 of `catsdogs` (a small random export), its run carrying
    `dataset_version`; returns the client, the run id and a fit config naming the store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.log_param(run_id, robustness.PARAM, dataset_version)
    client.log_artifacts(run_id, str(make_export(tmp_path / "export")), "servable")
    registry.register(client, "catsdogs", "servable", run_id, {}, "robustness test")
    config = tmp_path / "fit.yaml"
    config.write_text(f"mlflow:\n  registered_model: catsdogs\n  tracking_uri: {uri}\n")
    return client, run_id, config


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, dict]:
    source = make_class_folders(tmp_path / "src", per_class=24)
    out = tmp_path / "prepared"
    summary = prepare(source, out, Settings(image_size=32, test_fraction=0.5), progress=False)
    return out, summary


def _direct_accuracy(data_dir: Path, export_dir: Path) -> float:
    """The served path written out: original bytes, load_rgb, normalize, the export's net."""
    net, pre = servable.load(export_dir)
    rows = [
        r
        for r in read_manifest(data_dir / "manifest.csv")
        if r.split == "test" and r.status == "kept"
    ]
    root = data_dir.parent / "src"
    images = [preprocessing.load_rgb((root / r.relpath).read_bytes(), 32) for r in rows]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        found = net(preprocessing.normalize(x, tuple(pre.mean), tuple(pre.std))).argmax(-1)
    labels = torch.tensor([pre.classes.index(r.label) for r in rows])
    return float((found == labels).float().mean())


def test_scores_every_shift_and_logs_to_the_run(
    tmp_path: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, summary = prepared
    client, run_id, config = _registered(tmp_path, summary.dataset_version)

    argv = ["--model-version", "1", "--config", str(config), "--data-dir", str(data_dir)]
    assert robustness.main(argv) == 0

    printed = capsys.readouterr().out
    print(printed)  # the table, for -s runs and the report
    result = json.loads(printed[printed.index("\n{") :])
    assert result["photos"] == summary.splits["test"]["total"] > 0
    table = result["shifts"]
    assert list(table) == list(robustness.SHIFTS)
    for name, row in table.items():
        assert 0 <= row["accuracy"] <= 1, name
        assert row["failed"] == 0, name
        assert f"\n{name} " in printed  # one line of the readable table
    assert table["none"]["accuracy"] == pytest.approx(
        _direct_accuracy(data_dir, tmp_path / "export")
    )
    assert table["none"]["delta"] == 0

    finished = client.get_run(run_id).data.metrics
    for name, row in table.items():
        assert finished[f"robustness/{name}"] == pytest.approx(row["accuracy"])
    logged = client.download_artifacts(run_id, robustness.ARTIFACT, str(tmp_path / "dl"))
    assert json.loads(Path(logged).read_text())["shifts"] == table


def _look(
    tmp_path: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[MlflowClient, str, dict]:
    """Run the command with `extra` flags; the client, the run id and the printed result."""
    data_dir, summary = prepared
    client, run_id, config = _registered(tmp_path, summary.dataset_version)
    argv = ["--model-version", "1", "--config", str(config), "--data-dir", str(data_dir)]
    assert robustness.main([*argv, *extra]) == 0
    printed = capsys.readouterr().out
    return client, run_id, json.loads(printed[printed.index("\n{") :])


def test_limit_takes_the_first_photos_of_each_class(
    tmp_path: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    client, run_id, result = _look(tmp_path, prepared, capsys, "--limit", "4")
    assert result["photos_per_class"] == {"cat": 2, "dog": 2}
    assert not client.get_run(run_id).data.metrics  # a quick look is not the version's figure


def test_without_flip_tta_scores_the_single_pass_and_logs_nothing(
    tmp_path: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    client, run_id, result = _look(tmp_path, prepared, capsys, "--no-flip-tta")
    assert result["flip_tta"] is False and result["photos"] > 0
    assert not client.get_run(run_id).data.metrics  # not the version as it is served


def test_greyscale_shift_gives_grey_pixels() -> None:
    img = preprocessing.open_image(image_bytes(1, (80, 60)))
    shifted = robustness.SHIFTS["greyscale"](img, 32)
    pixels = np.asarray(shifted)
    assert pixels.shape == (60, 80, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert not (pixels[..., 0] == 0).all()
    decoded = preprocessing.decode(shifted, 32)
    assert (decoded[..., 0] == decoded[..., 2]).all()


def test_every_shift_changes_the_decoded_image_but_none() -> None:
    data = image_bytes(2, (80, 60))
    served = preprocessing.load_rgb(data, 32)
    for name, shift in robustness.SHIFTS.items():
        decoded = preprocessing.decode(shift(preprocessing.open_image(data), 32), 32)
        assert decoded.shape == (32, 32, 3), name
        assert np.array_equal(decoded, served) == (name == "none"), name


def test_another_dataset_version_is_refused_naming_both(
    tmp_path: Path, prepared: tuple[Path, dict]
) -> None:
    data_dir, summary = prepared
    client, run_id, config = _registered(tmp_path, "0123456789abcdef")
    argv = ["--model-version", "1", "--config", str(config), "--data-dir", str(data_dir)]
    with pytest.raises(ConfigError) as err:
        robustness.main(argv)
    assert "0123456789abcdef" in str(err.value)
    assert summary.dataset_version in str(err.value)
    assert "robustness/none" not in client.get_run(run_id).data.metrics


def test_missing_prepared_data_names_the_prepare_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, config = _registered(tmp_path, "d")
    argv = ["--model-version", "1", "--config", str(config), "--data-dir", str(tmp_path / "no")]
    with pytest.raises(MissingError, match="python -m catsdogs_pl.data prepare"):
        robustness.main(argv)
    assert exit_code(robustness.main, argv) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: ")
