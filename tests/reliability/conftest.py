"""A real TorchServe for the reliability suite, and a report of what it measured.

The server runs with the shared config and two archived versions of a small network (v1 the
default); every figure a test records with `report` is printed at the end of the run
(tests/conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catsdogs_pl import settings
from catsdogs_pl.serving import package, serve
from tests.serving import make_export, state_folder


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


def mar_path(version: str) -> Path:
    return settings.model_store() / settings.mar_name(version)
