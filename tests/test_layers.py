"""Imports point down: no module of catsdogs_pl imports from a layer above its own, and on the
floor of training, serving and monitoring none of the three imports another (what both sides
need lives below them)."""

from __future__ import annotations

import ast
from pathlib import Path

from catsdogs_pl import servable

PACKAGE = Path(__file__).resolve().parents[1] / "catsdogs_pl"
LAYERS = [  # lowest first; a module is in the first layer one of whose prefixes it matches
    (
        "foundation: errors, state folder and ports, config, the contract files, the capture "
        "store, preprocessing, statistics, metrics over HTTP",
        [
            "errors",
            "capture",
            "places",
            "config",
            "contracts",
            "preprocessing",
            "prometheus",
            "monitoring.stats",
        ],
    ),
    ("networks", ["models.cnn", "models.backbone", "models.efficientnet_lite"]),
    (
        "what training and serving share: the servable format and its signatures, the registry, "
        "the data, the LightningModule, the monitoring reference and drift, the TorchServe client",
        [
            "servable",
            "predictor",
            "signing",
            "registry",
            "data.augment",
            "data.cache",
            "data.cleaning",
            "data.datamodule",
            "data.download",
            "data.feedback",
            "data.prepare",
            "data.sources",
            "data.split",
            "data.synthetic",
            "models.classifier",
            "monitoring.reference",
            "monitoring.drift",
            "serving.torchserve",
        ],
    ),
    (
        "training, serving, monitoring",
        [
            "training",
            "serving",
            "monitoring.monitor",
            "monitoring.feedback",
            "monitoring.labellers",
        ],
    ),
    (
        "commands",
        [
            "fit",
            "monitor",
            "feedback",
            "demo",
            "demo_loop",
            "mlflow_server",
            "data.__main__",
            "cli",
        ],
    ),
]
SIDES = ("training", "serving", "monitoring")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if not name.endswith("__init__"):
            found[name] = path
    return found


def layer(module: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(f"{m}.") for m in members):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The catsdogs_pl modules `module` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("catsdogs_pl"):
                base = node.module.removeprefix("catsdogs_pl").lstrip(".")
                names = [f"{base}.{a.name}".lstrip(".") for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("catsdogs_pl.") for a in node.names]
        found |= {n for n in names if n in known}
    if module == "servable":  # it imports the networks by name (servable.NETWORKS)
        found |= {f"models.{m}" for m in servable.NETWORKS.values()}
    return found


def test_imports_point_down(report) -> None:
    every = modules()
    upward = []
    for module, path in every.items():
        for target in imports(module, path, set(every)):
            mine, theirs = layer(module), layer(target)
            side, other = module.split(".")[0], target.split(".")[0]
            if theirs > mine or (
                theirs == mine == 3 and side in SIDES and other in SIDES and side != other
            ):
                upward.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not upward, "\n".join(upward)
    per_layer = {
        f"{i} {title}": sorted(m for m in every if layer(m) == i)
        for i, (title, _) in enumerate(LAYERS)
    }
    report("layers (lowest first)", per_layer)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    path = tmp_path / "prepare.py"
    path.write_text("def f():\n    from catsdogs_pl.serving import package\n")
    found = imports("data.prepare", path, set(modules()))
    assert found == {"serving.package"} and layer("serving.package") > layer("data.prepare")
