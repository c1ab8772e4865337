"""A small TorchServe REST client that reads its own token: used by serve, deploy, predict, tests.

TorchServe writes `key_file.json` into its working directory, which `serve` sets to the state folder;
every call here reads the key from there, so users never copy tokens by hand.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs_pl import settings
from catsdogs_pl.errors import CatsDogsError

KEY_FILE = "key_file.json"


class TorchServeError(CatsDogsError, RuntimeError):
    """A TorchServe call failed; the message has the status and TorchServe's own words."""


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_key(kind: str, home: Path | None = None) -> str | None:
    """The 'management' or 'inference' key, or None when token auth is off or not started."""
    path = (home or settings.home()) / KEY_FILE
    try:
        return json.loads(path.read_text())[kind]["key"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # absent, or being written
        return None


def call(
    kind: str,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
    token: bool = True,
    base: str | None = None,
) -> Response:
    """One request to the 'inference', 'management' or 'metrics' API (at `base` if given, else
    where config.properties says); never raises on HTTP codes."""
    headers = dict(headers or {})
    key = read_key("inference" if kind == "inference" else "management") if token else None
    if key and kind != "metrics":
        headers["Authorization"] = f"Bearer {key}"
    url = (base or settings.address(kind)) + path
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())
    except (urllib.error.URLError, OSError) as exc:
        raise TorchServeError(f"TorchServe is not answering at {url} ({exc})") from exc


def check(response: Response, what: str) -> Response:
    if response.status >= 300:
        raise TorchServeError(f"{what}: HTTP {response.status} {response.body.decode()[:500]}")
    return response


def describe(version: str = "all") -> list[dict[str, Any]]:
    """TorchServe's description of catsdogs: 'all' versions, one version, or "" for the default
    ([] when nothing is registered)."""
    path = f"/models/{settings.MODEL_NAME}" + (f"/{version}" if version else "")
    response = call("management", "GET", path)
    if response.status == 404:
        return []
    return check(response, f"describe {path}").json()


def default_version() -> str | None:
    found = describe("")
    return found[0]["modelVersion"] if found else None


def ready_workers(entry: dict[str, Any]) -> int:
    return sum(w.get("status") == "READY" for w in entry.get("workers", []))


def wait_ready(version: str | None = None, timeout: float = 120) -> dict[str, Any]:
    """Poll until `version` (or the default version) has READY workers: /ping says healthy
    while models are still loading, so it is no readiness check."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            for entry in describe(version or ""):
                if ready_workers(entry) > 0:
                    return entry
                last = entry
        except TorchServeError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TorchServeError(
        f"no READY worker for version {version or 'default'} after {timeout}s: {last}"
    )
