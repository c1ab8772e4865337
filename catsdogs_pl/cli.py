"""`catsdogs STAGE [ARGS]`: one command for every stage, as `mlflow models serve` or `dvc repro`.

Each stage is the module a `python -m` user already knows (`catsdogs fit` is `python -m
catsdogs_pl.fit`, `catsdogs deploy list` is `python -m catsdogs_pl.serving.deploy list`): the
arguments pass to it unchanged, so its flags, its `--help` and its exit codes are the same under
both names.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from catsdogs_pl.errors import exit_code


@dataclass(frozen=True)
class Command:
    module: str  # what `python -m` runs
    help: str


COMMANDS: dict[str, Command] = {  # in the order of the pipeline
    "data": Command("catsdogs_pl.data", "prepare|download|feedback-export|synthetic: the photos"),
    "fit": Command("catsdogs_pl.fit", "train, test, publish to MLflow and register a version"),
    "robustness": Command("catsdogs_pl.training.robustness", "a version's accuracy under shifts"),
    "package": Command("catsdogs_pl.serving.package", "a registered version as a .mar"),
    "sign": Command("catsdogs_pl.serving.sign", "sign a version registered before signing"),
    "serve": Command("catsdogs_pl.serving.serve", "start|stop|run|key|ready: TorchServe"),
    "deploy": Command(
        "catsdogs_pl.serving.deploy", "put a version on TorchServe; list|rollback|scale"
    ),
    "predict": Command("catsdogs_pl.serving.predict", "ask TorchServe about image files"),
    "oip": Command("catsdogs_pl.serving.oip", "a version on the Open Inference Protocol (KServe)"),
    "monitor": Command("catsdogs_pl.monitor", "served traffic against the training reference"),
    "feedback": Command("catsdogs_pl.feedback", "add|labeller|prune: users' labels"),
    "demo": Command("catsdogs_pl.demo", "the whole pipeline on drawn pictures (--loop: feedback)"),
    "ui": Command("mlflow", "the MLflow UI on the project's tracking store"),
}
LOOP = "catsdogs_pl.demo_loop"  # `catsdogs demo --loop`


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    return (
        "usage: catsdogs STAGE [ARGS]\n\nstages (each is its `python -m` module, with the same "
        "flags: catsdogs STAGE --help):\n" + "\n".join(lines)
    )


def ui(argv: list[str]) -> int:
    """`mlflow ui` on the store fit writes to ($MLFLOW_TRACKING_URI, else the state folder's)."""
    from catsdogs_pl import registry

    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    uri = registry.resolve_tracking_uri()
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, *argv])
    return 0  # not reached: the UI replaces this process


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"catsdogs: no stage {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name == "ui":
        return ui(rest)
    module = COMMANDS[name].module
    if name == "demo" and "--loop" in rest:
        module, rest = LOOP, [a for a in rest if a != "--loop"]
    sys.argv = [f"catsdogs {name}", *rest]  # what LightningCLI and argparse name in --help
    target = importlib.import_module(module)
    if not hasattr(target, "main"):  # a package: its __main__ is what `python -m` runs
        target = importlib.import_module(f"{module}.__main__")
    return exit_code(target.main, rest)


if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
