"""A real TorchServe for the reliability suite, and a report of what it measured.

The server runs with the shared config and two archived versions of a small network (v1 the
default); every figure a test records is printed at the end of the run (`make test` shows it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from catsdogs_pl import package, serve, settings
from tests.serving import make_export, state_folder

REPORT: dict[str, object] = {}


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory):
    """TorchServe in a fresh state folder serving v1; v2 is archived, not registered."""
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    home = tmp_path_factory.mktemp("reliability")
    with state_folder(home):
        for version in ("1", "2"):
            package.package(
                version, export_dir=make_export(home / f"export{version}", int(version))
            )
        try:
            serve.start(settings.model_store() / settings.mar_name("1"))
            yield home
        finally:
            serve.stop()


@pytest.fixture
def report():
    """Record a figure under a name: report("load", {...})."""
    return REPORT.__setitem__


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("reliability figures")
        for name, figures in REPORT.items():
            terminalreporter.write_line(f"{name}: {json.dumps(figures)}")


def mar_path(version: str) -> Path:
    return settings.model_store() / settings.mar_name(version)
