"""Signatures of servable exports: OpenSSF model-signing in its key mode, so that what serves is
what training wrote and the gate passed.

`sign` writes `model.sig` into an export folder: a Sigstore bundle whose DSSE envelope holds the
SHA-256 of every file of the folder, signed with an elliptic-curve private key. `verify` hashes
the folder again and checks the envelope against the public key: a changed, added or removed
file, or another key, is a `SignatureError` that names the file and what is wrong with it.
Whoever can write an artifact store, a volume or a model store can change the files, but cannot
sign them without the private key.

Keys: the private key is $CATSDOGS_SIGNING_KEY, else `signing/private.pem` in the state folder,
made on first use (P-256, 0600) with `signing/public.pem` beside it. Verifying needs only the
public key: $CATSDOGS_VERIFY_KEY, else that `public.pem`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from catsdogs_pl import places
from catsdogs_pl.errors import CatsDogsError, MissingError

SIGNATURE = "model.sig"
PRIVATE_ENV = "CATSDOGS_SIGNING_KEY"
PUBLIC_ENV = "CATSDOGS_VERIFY_KEY"
KEYS = "signing"  # the folder of the state folder that holds a key pair made on first use


class SignatureError(CatsDogsError, ValueError):
    """An export's files do not match its signature, or it has none."""


def private_key(home: Path) -> Path:
    """The signing key: $CATSDOGS_SIGNING_KEY's file, else the state folder's pair, made now if
    it has none."""
    if os.environ.get(PRIVATE_ENV):
        path = Path(os.environ[PRIVATE_ENV])
        if not path.is_file():
            raise MissingError(f"{PRIVATE_ENV}={path}: no such key file")
        return path
    path = home / KEYS / "private.pem"
    with places.locked("signing"):  # two first fits at once make one pair, not two halves
        if not path.exists():
            _make_pair(path)
    return path


def public_key(home: Path) -> Path:
    """The verifying key: $CATSDOGS_VERIFY_KEY's file, else the state folder's public.pem."""
    path = Path(os.environ.get(PUBLIC_ENV) or home / KEYS / "public.pem")
    if not path.is_file():
        raise MissingError(
            f"no public key at {path}: set {PUBLIC_ENV} to the public key of the one that signs "
            f"the versions (fit makes a pair in {home / KEYS} on first use)"
        )
    return path


def _make_pair(private: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = private.with_name(f".{private.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (private.parent / "public.pem").write_bytes(public)
    os.replace(tmp, private)  # last: a pair is whole once this exists


def _hashing(ignored: Iterable[str]):  # noqa: ANN202 (model_signing's Config)
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE, *ignored], ignore_git_paths=False)


def sign(folder: Path, key: Path) -> Path:
    """Sign every file of `folder` (its model.sig left out) into `folder/model.sig`."""
    from model_signing import signing

    signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(_hashing(())).sign(
        folder, folder / SIGNATURE
    )
    return folder / SIGNATURE


def verify(folder: Path, key: Path, ignored: Iterable[str] = ()) -> None:
    """Refuse `folder` unless its files (but `ignored`, the names of files that are not the
    export's, such as an archive's code) are exactly the ones its model.sig signed, with `key`."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    if not (folder / SIGNATURE).exists():
        raise SignatureError(
            f"{folder} has no {SIGNATURE}: it was not signed when it was registered (versions "
            "registered before catsdogs signed them have none)"
        )
    config = verifying.Config().use_elliptic_key_verifier(public_key=key)
    try:
        config.set_hashing_config(_hashing(ignored)).verify(folder, folder / SIGNATURE)
    except ValueError as exc:  # which files differ; their digests said in words
        found = re.sub(
            r": Expected 'Digest.*?', Actual 'Digest.*?'(?=\"|\])", " (changed)", str(exc)
        )
        raise SignatureError(f"{folder} does not verify with {key}: {found}") from exc
    except InvalidSignature as exc:  # carries no message
        raise SignatureError(f"{folder} does not verify with {key}: InvalidSignature") from exc
