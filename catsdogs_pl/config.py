"""The fit configs as `fit` reads them: `configs/base.yaml` underneath, the named config on top.

`python -m catsdogs_pl.fit --config X` (LightningCLI) applies base.yaml as its default config file
(`catsdogs_pl.training.fit`), so every fit config holds only what differs from it. The commands
that read a fit config without training (package, deploy, monitor, robustness, the demo) call
`load`, which merges the same files the same way: they see the values fit trained with.
tests/test_config.py checks, for every shipped config, that `load` agrees with LightningCLI.

YAML only (no torch, no lightning): the commands after fit import this cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from catsdogs_pl import places
from catsdogs_pl.errors import ConfigError, MissingError

CONFIGS = places.ROOT / "configs"
BASE = CONFIGS / "base.yaml"  # what every fit config shares, and the fit command's defaults
FIT = CONFIGS / "fit.yaml"  # the config the commands after fit read when given none


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        found = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise MissingError(f"{what} {path}: no such fit config") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})") from exc
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise ConfigError(
            f"{what} {path}: a fit config is a mapping of settings, not a list or text"
        )
    return found


def merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `under`, as jsonargparse merges config files: mappings key by key, any
    other value (a list, a number, null) replaced whole."""
    merged = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(*paths: Path | str) -> dict[str, Any]:
    """base.yaml with each of `paths` on top, in order, as `fit --config A --config B` merges
    them (command-line overrides such as `--data.source` are fit's alone)."""
    merged = _read(BASE, "the base config")
    for path in paths:
        merged = merge(merged, _read(Path(path), "--config"))
    return merged
