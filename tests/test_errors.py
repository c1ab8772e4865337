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


def test_run_maps_project_errors_to_2_and_keeps_bugs(capsys: pytest.CaptureFixture) -> None:
    def fails(argv: list[str] | None) -> int:
        raise errors.MissingError("data/x.zip is missing: download it")

    assert errors.run(fails) == 2
    assert capsys.readouterr().err == "error: data/x.zip is missing: download it\n"
    assert errors.run(lambda argv: 3) == 3 and errors.run(lambda argv: None) == 0

    def bug(argv: list[str] | None) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        errors.run(bug)


def test_every_command_runs_its_main_through_errors_run() -> None:
    """Each `if __name__ == "__main__":` block calls run(main, ...): one mapping for all."""
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
            ("sys.exit(run(main", "sys.exit(errors.run(main")
        ), path


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
        assert errors.run(main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err, (argv, err)


def test_mlflow_server_without_password_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for key in ("MLFLOW_BACKEND_STORE_URI", "POSTGRES_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    assert errors.run(mlflow_server.main, []) == 2
    assert "POSTGRES_PASSWORD is not set" in capsys.readouterr().err
