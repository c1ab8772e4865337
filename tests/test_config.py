"""One merged view of a fit config: what `fit` (LightningCLI, base.yaml as its default config file)
resolves is what `catsdogs_pl.config.load` and its readers (package/deploy's mlflow section,
robustness's data_dir, the demo) return; each default lives in one place; and the noise that is
not about the user's run stays out of a fit's output."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from catsdogs_pl import config, places
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.errors import ConfigError, MissingError
from catsdogs_pl.models.classifier import CatsDogsClassifier
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.training import fit
from catsdogs_pl.training.robustness import data_dir_of

SHIPPED = ("fit.yaml", "demo.yaml", "finetune.yaml")


class _Parsed(Exception):
    pass


class _ParseOnly(fit.FitCLI):
    """FitCLI up to its parsed config: no data, no MLflow, no training."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.parser.dump(self.config, skip_none=False))


def resolved(*args: str) -> dict[str, Any]:
    """The settings `python -m catsdogs_pl.fit ARGS` trains with, as LightningCLI resolves them."""
    with pytest.raises(_Parsed) as parsed:
        _ParseOnly(
            CatsDogsClassifier, CatsDogsDataModule, run=False, args=list(args), **fit.CLI_KWARGS
        )
    return yaml.safe_load(parsed.value.args[0])


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data.settings.image_size": 64, ...}: every value of a nested mapping by its dotted key."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            found |= leaves(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value
    return found


@pytest.mark.parametrize("name", SHIPPED)
def test_the_readers_see_what_fit_resolves(name: str) -> None:
    path = config.CONFIGS / name
    cli = leaves(resolved("--config", str(path)))
    merged = leaves(config.load(path))
    # every setting of the merged files is the one fit trains with, base.yaml's included
    assert {key: cli.get(key, "(not resolved)") for key in merged} == merged
    for key in ("seed_everything", "checkpoint_dir", "early_stopping_patience", "data.data_dir"):
        assert key in merged, key  # base.yaml holds them: no reader needs a default of its own
    mlflow = MlflowSettings.from_config(path)
    assert {f"mlflow.{k}": v for k, v in vars(mlflow).items()} == {
        k: v for k, v in cli.items() if k.startswith("mlflow.")
    }
    assert data_dir_of(path) == Path(cli["data.data_dir"])
    assert config.load(path)["data"]["source"] == cli["data.source"]  # the demo's pictures


# What each shipped config trained with before base.yaml took the shared settings (#23): the values
# that moved out of the three files, and those that stayed to differ.
BEFORE = {
    "fit.yaml": {
        "mlflow.experiment": "catsdogs",
        "early_stopping_patience": 5,
        "trainer.max_epochs": 21,
        "trainer.log_every_n_steps": 50,
        "data.data_dir": "data/prepared",
        "data.num_workers": 1,
    },
    "demo.yaml": {
        "mlflow.experiment": "catsdogs-demo",
        "early_stopping_patience": 3,
        "trainer.max_epochs": 15,
        "trainer.log_every_n_steps": 5,
        "data.data_dir": "data/prepared-demo",
        "data.num_workers": 0,
    },
    "finetune.yaml": {
        "mlflow.experiment": "catsdogs",
        "early_stopping_patience": 3,
        "trainer.max_epochs": 2,
        "trainer.log_every_n_steps": 50,
        "data.data_dir": "data/prepared-176",
        "data.num_workers": 2,
    },
}
SHARED = {
    "seed_everything": 42,
    "checkpoint_dir": "checkpoints",
    "mlflow.tracking_uri": None,
    "mlflow.registered_model": "catsdogs",
    "trainer.accelerator": "auto",
    "trainer.devices": 1,
    "trainer.precision": "32-true",
    "trainer.deterministic": False,
    "data.batch_size": 32,
    "data.settings.val_fraction": 0.1,
    "data.settings.test_fraction": 0.1,
    "data.settings.split_seed": 0,
}


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_config_trains_as_before(name: str) -> None:
    cli = leaves(resolved("--config", str(config.CONFIGS / name)))
    wanted = SHARED | BEFORE[name]
    assert {key: cli[key] for key in wanted} == wanted


@pytest.mark.parametrize("name", SHIPPED)
def test_a_config_holds_only_what_differs_from_base(name: str) -> None:
    base = leaves(config.load())
    own = leaves(yaml.safe_load((config.CONFIGS / name).read_text()))
    copied = {key for key, value in own.items() if key in base and base[key] == value}
    assert not copied, f"{name} repeats configs/base.yaml: {sorted(copied)}"


def test_several_configs_and_command_line_merge_as_fit_merges_them(tmp_path: Path) -> None:
    """A user's overrides on top of a shipped config: mappings merge key by key, lists and
    values are replaced, later files win, and base.yaml still lies underneath."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "early_stopping_patience: 7\n"
        "trainer: {max_epochs: 4}\n"
        "data: {train_sizes: [32, 48], settings: {image_size: 96}}\n"
        "mlflow: {experiment: mine}\n"
    )
    more = tmp_path / "more.yaml"
    more.write_text("trainer: {max_epochs: 5}\ndata: {data_dir: elsewhere}\n")
    fit_yaml = config.CONFIGS / "fit.yaml"
    cli = leaves(resolved("--config", str(fit_yaml), "--config", str(mine), "--config", str(more)))
    merged = leaves(config.load(fit_yaml, mine, more))
    assert {key: cli.get(key, "(not resolved)") for key in merged} == merged
    assert merged["trainer.max_epochs"] == 5 and merged["data.train_sizes"] == [32, 48]
    assert merged["data.settings.val_fraction"] == 0.1  # fit.yaml's, beside mine's image_size
    assert merged["data.batch_size"] == 32 and merged["seed_everything"] == 42  # base.yaml's
    assert MlflowSettings.from_config(mine).experiment == "mine"
    assert data_dir_of(more) == Path("elsewhere")
    assert data_dir_of(mine) == Path("data/prepared")  # base.yaml's default


def test_errors_name_the_file_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for read in (config.load, MlflowSettings.from_config, data_dir_of):
        with pytest.raises(MissingError, match=rf"--config {missing}: no such fit config"):
            read(missing)
    listed = tmp_path / "list.yaml"
    listed.write_text("- mlflow\n")
    with pytest.raises(ConfigError, match=rf"--config {listed}: a fit config is a mapping"):
        config.load(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("mlflow: [\n")
    with pytest.raises(ConfigError, match=rf"--config {broken}: not valid YAML"):
        MlflowSettings.from_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.touch()
    assert config.load(empty) == config.load()  # base.yaml alone


def test_fit_arguments_have_no_default_but_base_yaml(capsys: pytest.CaptureFixture) -> None:
    """checkpoint_dir and early stopping's patience come from base.yaml alone: without it fit
    refuses to start rather than fall back to a second copy in the code."""
    kwargs = {**fit.CLI_KWARGS, "parser_kwargs": {}}
    args = ["--config", str(config.CONFIGS / "demo.yaml")]
    with pytest.raises(SystemExit):
        _ParseOnly(CatsDogsClassifier, CatsDogsDataModule, run=False, args=args, **kwargs)
    assert "required: checkpoint_dir" in capsys.readouterr().err


def test_the_config_module_is_the_ground_floor() -> None:
    """The commands after fit read configs without importing torch, lightning or the layers."""
    code = (
        "import sys, catsdogs_pl.config\n"
        "heavy = {'torch', 'lightning', 'mlflow'}\n"
        "layers = ('catsdogs_pl.training', 'catsdogs_pl.serving', 'catsdogs_pl.monitoring', "
        "'catsdogs_pl.data')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(layers)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_litlogger_advertisement_but_lightnings_other_info() -> None:
    fit.quiet_lightning()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    finally:
        logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert not [m for m in messages if "litlogger" in m or "Tip:" in m]
    assert any(m.startswith("GPU available") for m in messages), messages


def test_no_pytree_deprecation_from_lightning() -> None:
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.quiet_lightning()
        _tree_flatten({"a": 1})
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


def test_one_class_warnings_are_silenced_in_the_sanity_check_alone() -> None:
    from torchmetrics.utilities.prints import rank_zero_warn

    def one_class() -> None:
        rank_zero_warn("No negative samples in targets, false positive value ...", UserWarning)
        rank_zero_warn("No positive samples in targets, true positive value ...", UserWarning)

    quiet = fit.QuietSanityCheck()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.on_sanity_check_start(None, None)  # type: ignore[arg-type]
        one_class()
        quiet.on_sanity_check_end(None, None)  # type: ignore[arg-type]
        assert caught == []
        one_class()  # a real validation epoch of one class: the user should know
    assert len(caught) == 2


def test_no_args_warning_from_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """main(args) from the demo (`demo --seed 3`) or pytest: sys.argv is theirs, not fit's."""
    monkeypatch.setattr(sys, "argv", ["demo", "--seed", "3"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved("--config", str(config.CONFIGS / "demo.yaml"))
    assert not [w for w in caught if "args parameter" in str(w.message)]


@pytest.mark.slow  # a subprocess that imports lightning and mlflow: about 8 s
def test_the_fit_command_reads_its_own_command_line() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "catsdogs_pl.fit",
            "--config",
            "configs/demo.yaml",
            "--print_config",
        ],
        cwd=places.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "args parameter" not in out.stderr, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["checkpoint_dir"] == "checkpoints" and printed["seed_everything"] == 42
