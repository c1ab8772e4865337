"""Who may label: a key per labeller, apart from the inference key, so a label names its giver.

Anyone who can predict could otherwise write training data, and where token authorization is off
(the Kubernetes overlays) anyone reaching the monitor could. `POST /feedback` takes only a labeller
key, with token authorization on or off; the giver's name goes with each label, bounds the
giver's rate, and caps the giver's share of an export. The state folder's `labellers.json` keeps
the keys' SHA-256 (never a key) against the names, readable by its owner only.

  python -m catsdogs_pl.feedback labeller add NAME      prints NAME's new key (replacing an old one)
  python -m catsdogs_pl.feedback labeller remove NAME
  python -m catsdogs_pl.feedback labeller list
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from catsdogs_pl import places
from catsdogs_pl.errors import ConfigError

FILE = "labellers.json"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")  # also what keeps a name safe in a CSV cell


def path() -> Path:
    return places.home() / FILE


def _read() -> dict[str, str]:
    """sha256 of a key -> its labeller's name."""
    try:
        found = json.loads(path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        message = f"{path()} is unreadable ({exc}): remove it and add the labellers again"
        raise ConfigError(message) from exc
    return {str(k): str(v) for k, v in found.items()}


def _write(keys: dict[str, str]) -> None:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{FILE}.{os.getpid()}.tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(keys, indent=1, sort_keys=True))
    os.replace(tmp, target)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add(name: str) -> str:
    """A new key for `name` (its old key, if any, stops working): shown once, stored hashed."""
    if not _NAME.match(name):
        raise ConfigError(f"labeller name {name[:80]!r}: use 1 to 64 of A-Z a-z 0-9 _ . @ -")
    key = secrets.token_urlsafe(32)
    keys = {k: v for k, v in _read().items() if v != name}
    _write(keys | {_digest(key): name})
    return key


def remove(name: str) -> bool:
    """Revoke `name`'s key; False when there was none."""
    keys = _read()
    kept = {k: v for k, v in keys.items() if v != name}
    _write(kept)
    return len(kept) < len(keys)


def names() -> list[str]:
    return sorted(set(_read().values()))


def giver(headers: Mapping[str, str]) -> str | None:
    """The labeller whose key the request carries (`Authorization: Bearer <key>`), or None."""
    sent = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
    if not sent:
        return None
    digest = _digest(sent)
    for known, name in _read().items():
        if hmac.compare_digest(known, digest):
            return name
    return None
