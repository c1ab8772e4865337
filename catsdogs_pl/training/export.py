"""The servable export: everything TorchServe needs, nothing it must unpickle.

`weights.pt` is a plain state_dict (loadable with `weights_only=True`), `architecture.json` names
the network (`network`: BaselineCNN, TorchvisionNet or EfficientNetLite0; exports made before it
existed are BaselineCNN) with its own constructor arguments (`init_args`), and `preprocessing.json` /
`index_to_name.json` come from the DataModule, so serving cannot drift from training.
`reference.json` (the validation statistics the monitor compares served traffic with) is written by
fit; exports made before it existed have none, and serve without monitoring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catsdogs_pl.errors import MissingError
from catsdogs_pl.models.backbone import TorchvisionNet
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.models.efficientnet_lite import EfficientNetLite0

WEIGHTS = "weights.pt"
ARCHITECTURE = "architecture.json"
PREPROCESSING = "preprocessing.json"
INDEX_TO_NAME = "index_to_name.json"
REFERENCE = "reference.json"
FILES = (WEIGHTS, ARCHITECTURE, PREPROCESSING, INDEX_TO_NAME)
NETWORKS = {  # the handler's too
    "BaselineCNN": BaselineCNN,
    "TorchvisionNet": TorchvisionNet,
    "EfficientNetLite0": EfficientNetLite0,
}


def export(
    net: nn.Module,
    preprocessing: dict[str, Any],
    out: Path,
    reference: dict[str, Any] | None = None,
) -> Path:
    """Write the four servable files (and the monitoring reference, when given) into `out` and
    return it."""
    out.mkdir(parents=True, exist_ok=True)
    if reference is not None:
        (out / REFERENCE).write_text(json.dumps(reference, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, out / WEIGHTS)
    architecture = {"network": type(net).__name__, **net.init_args}
    (out / ARCHITECTURE).write_text(json.dumps(architecture, indent=2))
    (out / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
    names = {str(i): name for i, name in enumerate(preprocessing["classes"])}
    (out / INDEX_TO_NAME).write_text(json.dumps(names, indent=2))
    return out


def present(folder: Path) -> list[str]:
    """The servable files of `folder`: the four, and the reference when it has one."""
    return [*FILES, *([REFERENCE] if (folder / REFERENCE).exists() else [])]


def build(architecture: dict[str, Any]) -> nn.Module:
    """The network `architecture.json` describes, with fresh weights."""
    args = dict(architecture)
    return NETWORKS[args.pop("network", "BaselineCNN")](**args)


def load(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network in eval mode from an export folder; no pickled code is executed."""
    missing = [name for name in FILES if not (folder / name).exists()]
    if missing:
        raise MissingError(f"{folder} is not a servable export: missing {', '.join(missing)}")
    net = build(json.loads((folder / ARCHITECTURE).read_text()))
    net.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval(), json.loads((folder / PREPROCESSING).read_text())
