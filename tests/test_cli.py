"""`catsdogs STAGE`: every stage reachable from one command, with the flags of its module."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib

from catsdogs_pl import cli, places, registry


def test_the_script_is_declared_and_lists_every_stage() -> None:
    scripts = tomllib.loads((places.ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"catsdogs": "catsdogs_pl.cli:main"}
    done = subprocess.run(
        [sys.executable, "-m", "catsdogs_pl.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(cli.COMMANDS)
    for stage in ("data", "fit", "package", "serve", "deploy", "predict", "monitor", "feedback"):
        assert stage in listed  # the stages of the pipeline, as the README names them


@pytest.mark.parametrize("stage", [s for s in cli.COMMANDS if s != "ui"])
def test_each_stage_answers_help_with_its_module_flags(
    stage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([stage, "--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_arguments_pass_to_the_module_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["deploy", "list", "--help"])  # a subcommand of the module, its own help
    assert "--card" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["demo", "--loop", "--help"])  # --loop: the feedback demo
    assert "catsdogs_pl.demo_loop" in capsys.readouterr().out


def test_an_unknown_stage_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian"]) == 2
    said = capsys.readouterr().err
    assert "no stage 'trian'" in said and "  fit " in said
    assert cli.main([]) == 2  # a bare `catsdogs` says how to use it


def test_ui_opens_the_projects_store(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = []
    monkeypatch.setattr(cli.os, "execv", lambda path, args: ran.append(args))
    cli.main(["ui", "--port", "5001"])
    assert ran[0][1:] == [
        "ui",
        "--backend-store-uri",
        registry.resolve_tracking_uri(),
        "--port",
        "5001",
    ]
