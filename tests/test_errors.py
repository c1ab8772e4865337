"""Every command maps the project's errors to exit 2 and one `error: ...` line; bugs keep their
traceback."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest

from catsdogs_pl import errors, fit, mlflow_server
from catsdogs_pl.data import __main__ as data_cli
from catsdogs_pl.serving import deploy, package, predict

ROOT = Path(__file__).resolve().parents[1]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    return f"http://127.0.0.1:{port}"


def test_exit_code_maps_project_errors_to_2_and_keeps_bugs(capsys: pytest.CaptureFixture) -> None:
    def fails(argv: list[str] | None) -> int:
        raise errors.MissingError("data/x.zip is missing: download it")

    assert errors.exit_code(fails) == 2
    assert capsys.readouterr().err == "error: data/x.zip is missing: download it\n"
    assert errors.exit_code(lambda argv: 3) == 3 and errors.exit_code(lambda argv: None) == 0

    def bug(argv: list[str] | None) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        errors.exit_code(bug)


def test_every_command_runs_its_main_through_exit_code() -> None:
    """Each `if __name__ == "__main__":` block calls exit_code(main, ...): one mapping for all."""
    commands = [
        p for p in (ROOT / "catsdogs_pl").rglob("*.py") if '__name__ == "__main__"' in p.read_text()
    ]
    assert len(commands) >= 8
    for path in commands:
        block = next(
            node
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        )
        assert ast.unparse(block.body[0]).startswith(
            ("sys.exit(exit_code(main", "sys.exit(errors.exit_code(main")
        ), path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --model-version --alias --run-id is required"),
        (["rollback", "--model-version", "3"], "unrecognized arguments: --model-version 3"),
        (["--alias", "champion", "list"], "list takes none of --alias"),
        (["--tolerance", "0.1", "scale", "--workers", "1"], "scale takes none of --gate"),
    ],
)
def test_deploy_reads_one_command_line_whatever_comes_first(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    """One parser: a subcommand or a version to deploy, never both (it used to pick its parser by
    whether the first argument started with '-')."""
    with pytest.raises(SystemExit) as stopped:
        deploy.main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_commands_exit_2_naming_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path / "home"))
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"not even a jpeg")
    down = closed_port_url()
    cases = [
        (data_cli.main, ["prepare", "--source", str(tmp_path / "nope")], "nope: no such file"),
        (
            data_cli.main,
            ["prepare", "--source", str(tmp_path), "--image-size", "4"],
            "image_size=4",
        ),
        (package.main, ["--model-version", "1", "--config", str(tmp_path / "x.yaml")], "x.yaml"),
        (deploy.main, ["--alias", "champion", "--config", str(tmp_path / "y.yaml")], "y.yaml"),
        (predict.main, [str(image), "--url", down], f"not answering at {down}"),
        (
            fit.main,
            ["--config", str(ROOT / "configs" / "demo.yaml"), f"--data.source={tmp_path / 'z'}"]
            + ["--data.synthetic_per_class=0"],
            "data.source=",
        ),
    ]
    for main, argv, named in cases:
        assert errors.exit_code(main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err, (argv, err)


def test_mlflow_server_without_password_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for key in ("MLFLOW_BACKEND_STORE_URI", "POSTGRES_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    assert errors.exit_code(mlflow_server.main, []) == 2
    assert "POSTGRES_PASSWORD is not set" in capsys.readouterr().err
