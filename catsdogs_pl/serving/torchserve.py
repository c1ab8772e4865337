"""A small TorchServe REST client that reads its own token: used by serve, deploy, predict, tests.

TorchServe writes `key_file.json` into its working directory, which `serve` sets to the state folder;
every call here reads the key from there, so users never copy tokens by hand.

Keys expire (`token_expiration_min`). The client renews them: a call refused for its key asks
TorchServe's token API for a new one with the API key (which never expires), under a lock of the
state folder, so clients refused at the same moment renew once and take the key it wrote. Renewal
replaces the key at once, so a long-running client re-reads the file on every call (as `call`
does) or asks again on a refusal; `serve key` prints the current inference key for clients that
do not share the state folder.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsdogs_pl import places
from catsdogs_pl.errors import CatsDogsError

KEY_FILE = "key_file.json"


class TorchServeError(CatsDogsError, RuntimeError):
    """A TorchServe call failed; the message has the status and TorchServe's own words."""


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def json(self) -> Any:
        return json.loads(self.body)


def token_auth() -> bool:
    """Whether TorchServe checks keys: TS_DISABLE_TOKEN_AUTHORIZATION (enable_envvars_config), else
    config.properties."""
    disabled = os.environ.get("TS_DISABLE_TOKEN_AUTHORIZATION") or places.ts_properties().get(
        "disable_token_authorization", "false"
    )
    return disabled.strip().lower() != "true"


def read_key(kind: str, home: Path | None = None) -> str | None:
    """The 'management', 'inference' or 'API' key, or None when token auth is off or not started."""
    path = (home or places.home()) / KEY_FILE
    try:
        return json.loads(path.read_text())[kind]["key"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # absent, or being written
        return None


def renew_key(kind: str, refused: str | None, timeout: float = 10) -> str:
    """A valid 'management' or 'inference' key in place of `refused` (expired, or read while
    TorchServe rewrote the file): the one another client renewed meanwhile, else a new one from
    the token API."""
    home = places.home()
    with places.locked("key_file"):
        current = read_key(kind)
        if current and current != refused:
            return current
        api = read_key("API")
        if api is None:
            raise TorchServeError(
                f"TorchServe refused the {kind} key and {home / KEY_FILE} has no API key to renew "
                "it: run this command where the server keeps its key file (its state folder)"
            )
        url = f"{places.address('management')}/token?type={kind}"
        check(_send("GET", url, None, {"Authorization": f"Bearer {api}"}), f"renew the {kind} key")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            key = read_key(kind)
            if key and key != refused:
                return key
            time.sleep(0.05)
    raise TorchServeError(
        f"TorchServe renewed the {kind} key but {home / KEY_FILE} did not change: the server "
        "writes the new key into its own working folder; run this command there"
    )


def _send(
    method: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float = 60
) -> Response:
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, response.read(), _lower(response.headers))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), _lower(exc.headers))
    except (urllib.error.URLError, OSError) as exc:
        raise TorchServeError(f"TorchServe is not answering at {url} ({exc})") from exc


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in (headers or {}).items()}


def refused_key(response: Response) -> bool:
    """TorchServe's answer to a missing, wrong or expired key (400, not 401)."""
    return response.status == 400 and b"InvalidKeyException" in response.body


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
    """One request to the 'inference', 'management' or 'metrics' API, or the 'monitor' (no key
    of ours: its /feedback takes a labeller's), at `base` if given, else where config.properties says;
    never raises on HTTP codes. The key of the state folder goes only to the server of this state
    folder, and a refused one is renewed and the call sent once more."""
    own = places.address(kind)
    token = token and kind not in ("metrics", "monitor") and base in (None, own)
    key_kind = "inference" if kind == "inference" else "management"

    def send(key: str | None) -> Response:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return _send(method, (base or own) + path, data, {**(headers or {}), **auth}, timeout)

    key = read_key(key_kind) if token else None
    response = send(key)
    if token and refused_key(response) and token_auth():
        response = send(renew_key(key_kind, key))
    return response


def check(response: Response, what: str) -> Response:
    if response.status >= 300:
        raise TorchServeError(f"{what}: HTTP {response.status} {response.body.decode()[:500]}")
    return response


def describe(version: str = "all") -> list[dict[str, Any]]:
    """TorchServe's description of catsdogs: 'all' versions, one version, or "" for the default
    ([] when nothing is registered)."""
    path = f"/models/{places.MODEL_NAME}" + (f"/{version}" if version else "")
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
