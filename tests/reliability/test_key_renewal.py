"""Keys that expire under steady use: a real TorchServe with `token_expiration_min=1` (a config of
the user's own, named by CATSDOGS_TS_CONFIG: TorchServe reads the expiry from no environment
variable), three minutes of steady clients and of our commands, every one of which must keep
working across the renewals."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs_pl import places
from catsdogs_pl.serving import package, serve
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.images import image_bytes
from tests.helpers.load import run_load
from tests.helpers.serving import environment, make_export, state_folder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
]

EXPIRY_MIN = 1
MINUTES = 3
CLIENTS = 2
COMMANDS = (  # what users, the compose health check and CI run against a server
    ("catsdogs_pl.serving.serve", "ready"),
    ("catsdogs_pl.serving.deploy", "list"),
    ("catsdogs_pl.serving.smoke",),
)


@pytest.fixture
def expiring_server(tmp_path: Path) -> Iterator[Path]:
    """A TorchServe of its own whose keys expire a minute after they are issued, serving one
    small version; yields its state folder."""
    shipped = places.TS_CONFIG.read_text()
    config = tmp_path / "config.properties"
    config.write_text(
        shipped.replace("token_expiration_min=1440", f"token_expiration_min={EXPIRY_MIN}")
    )
    assert f"token_expiration_min={EXPIRY_MIN}\n" in config.read_text()
    with state_folder(tmp_path / "home"), environment({"CATSDOGS_TS_CONFIG": str(config)}):
        _, mar = package.package_version(export_dir=make_export(tmp_path / "export"))
        serve.start(mar)
        try:
            yield tmp_path / "home"
        finally:
            serve.stop()


def test_keys_are_renewed_for_clients_and_commands(
    expiring_server: Path, tmp_path: Path, report
) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(image_bytes(3, (160, 120)))
    commands = [
        [sys.executable, "-m", *command]
        for command in (*COMMANDS, ("catsdogs_pl.serving.predict", str(image)))
    ]
    keys = {ts.read_key("inference")}
    seconds = MINUTES * 60
    load, threads = run_load(CLIENTS, seconds, [image_bytes(i, (160, 120)) for i in range(8)])
    deadline = time.monotonic() + seconds
    runs, failed = 0, []
    while time.monotonic() < deadline:
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            runs += 1
            if done.returncode != 0:
                failed.append((command[2:], (done.stdout + done.stderr)[-400:]))
        keys.add(ts.read_key("inference"))
    for thread in threads:
        thread.join()
    # the server still refuses an expired key: renewal, not a server that stopped checking
    stale = ts.call("inference", "GET", "/ping", token=False)
    figures = {
        "token_expiration_min": EXPIRY_MIN,
        "minutes": MINUTES,
        "client requests": len(load.answers),
        "client failures": len(load.failed()),
        "client renewals": load.renewals,
        "command runs": runs,
        "command failures": len(failed),
        "inference keys seen": len(keys),
    }
    report("key expiry", figures)
    assert ts.refused_key(stale)
    assert not load.failed(), load.failed()[:5]
    assert not failed, failed[:3]
    assert len(keys) >= MINUTES and load.renewals >= 1, figures  # about one key a minute
    # a server whose key was refused is still running: `serve start` keeps it and its key file
    assert serve.start() == "TorchServe is already running"
    assert (expiring_server / ts.KEY_FILE).exists()
