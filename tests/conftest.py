"""Fixtures for every test: a session kept away from the user's state and servers, generated class
folders, figures to report, and the session's one TorchServe in the states tests ask for.

Helpers (plain functions and tables) are in tests/helpers/, never imported from a test module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs_pl import signing
from tests.helpers.images import make_class_folders
from tests.helpers.serving import (
    SessionTorchServe,
    environment,
    scratch_folder,
    state_env,
)


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads or writes ~/.catsdogs, the user's MLFLOW_TRACKING_URI, or talks to a server
    on the default ports: the session has a state folder of its own and TS_* addresses on ports
    nothing listens on (a test that starts a server gives it a state folder and ports of its own).
    One signing key pair for the session, so that an export signed in one state folder verifies
    in another (tests of the pair made on first use unset it)."""
    scratch = scratch_folder()
    keys = signing.environment(tmp_path_factory.mktemp("keys"))
    try:
        with environment({**state_env(tmp_path_factory.mktemp("catsdogs-home"), scratch), **keys}):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "src")


FIGURES: dict[str, object] = {}


@pytest.fixture(scope="session")
def report():
    """Record a figure under a name, printed at the end of the run: report("load", {...})."""
    return FIGURES.__setitem__


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for name, figures in FIGURES.items():
            terminalreporter.write_line(f"{name}: {json.dumps(figures)}")


SERVER_FIXTURES = {"torchserve", "served", "blank_torchserve"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's TorchServe is an integration test, marked or not: the unit
    tier (`make test-fast`) never starts a server."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionTorchServe]:
    """The one TorchServe of the session for the serving and reliability tests (a real one, Java
    17): a registry with versions 1 and 2 and the shared config, on free ports. Tests take it
    through `served` or `blank_torchserve`, which set the state they need and the environment in
    which the clients reach it."""
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    server = SessionTorchServe(tmp_path_factory.mktemp("torchserve"))
    try:
        with server.environment():
            server.start()
        yield server
    finally:
        with server.environment():
            server.stop()


@pytest.fixture
def served(torchserve: SessionTorchServe) -> Iterator[Path]:
    """The session's TorchServe serving v1 only (v1 the default), the archives of v1 and v2 in
    its model store; yields its state folder."""
    with torchserve.environment():
        torchserve.serving_only("1")
        yield torchserve.home


@pytest.fixture
def blank_torchserve(torchserve: SessionTorchServe) -> Iterator[Path]:
    """The session's TorchServe with nothing registered, no deployment history and an empty model
    store, its registry still holding versions 1 and 2; yields its state folder."""
    with torchserve.environment():
        torchserve.blank()
        yield torchserve.home
