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

Who checks: package before it archives (and deploy before it registers an archive), and the
handler before a worker loads anything (shipped in the .mar as catsdogs_signing.py). An unpacked
archive holds its own files beside the export's (the code, model-config.yaml, identity.json,
MAR-INF/, the __pycache__/ Python writes): `archive_files` names them, so that they are left out
and every other file must be the signed one. The archive's code is not the model's: it comes
from the catsdogs installed where the archive was built, and is trusted as that install is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

if __package__:  # catsdogs_pl.signing
    from catsdogs_pl.errors import CatsDogsError, MissingError
else:  # catsdogs_signing.py inside a .mar (serving/package.py ships it)
    from catsdogs_errors import CatsDogsError, MissingError

SIGNATURE = "model.sig"
PRIVATE_ENV = "CATSDOGS_SIGNING_KEY"
PUBLIC_ENV = "CATSDOGS_VERIFY_KEY"
KEYS = "signing"  # the folder of the state folder that holds a key pair made on first use
ARCHIVE_FILES = ("MAR-INF", "__pycache__", "model-config.yaml", "identity.json")  # and *.py


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
    from catsdogs_pl import places  # training's side only: the handler never signs

    path = home / KEYS / "private.pem"
    with places.locked("signing"):  # two first fits at once make one pair, not two halves
        if not path.exists():
            _make_pair(path)
    return path


def public_key(home: Path | None) -> Path:
    """The verifying key: $CATSDOGS_VERIFY_KEY's file, else the state folder's public.pem (a
    worker has no state folder: None)."""
    if not os.environ.get(PUBLIC_ENV) and home is None:
        raise MissingError(f"{PUBLIC_ENV} is not set: serve sets it to the key versions verify by")
    path = public_key_file(home)
    if not path.is_file():
        made = f" (fit makes a pair in {home / KEYS} on first use)" if home else ""
        raise MissingError(
            f"no public key at {path}: set {PUBLIC_ENV} to the public key of the one that signs "
            f"the versions{made}"
        )
    return path


def environment(home: Path) -> dict[str, str]:
    """`home`'s key pair as the environment names one: what a process sets before it makes state
    folders of its own (benchmarks, tests), so that they all sign and verify alike."""
    return {PRIVATE_ENV: str(private_key(home)), PUBLIC_ENV: str(public_key(home))}


def public_key_file(home: Path | None) -> Path:
    """Where the verifying key is or will be: a server started before the first fit made a pair
    finds it there when a worker loads."""
    return Path(os.environ.get(PUBLIC_ENV) or home / KEYS / "public.pem")


def archive_files(folder: Path) -> list[str]:
    """The names in an unpacked archive `folder` that are the archive's own, not the export's."""
    return [p.name for p in folder.iterdir() if p.suffix == ".py" or p.name in ARCHIVE_FILES]


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
            "registered before catsdogs signed them have none: `python -m "
            "catsdogs_pl.serving.sign --model-version N` signs one, once)"
        )
    config = verifying.Config().use_elliptic_key_verifier(public_key=key)
    try:
        config.set_hashing_config(_hashing(ignored)).verify(folder, folder / SIGNATURE)
    except ValueError as exc:
        raise SignatureError(f"{folder} does not verify with {key}: {_said(exc)}") from exc
    except InvalidSignature as exc:  # carries no message
        raise SignatureError(f"{folder} does not verify with {key}: InvalidSignature") from exc


def _said(exc: ValueError) -> str:
    """model-signing's refusal with the files that differ named, not their digests' bytes."""
    text = str(exc).replace("\\'", "'")  # a list's repr escapes quotes where both kinds occur
    if not text.startswith("Signature mismatch"):
        return text  # "Key mismatch: ...", a bundle that does not parse
    found = re.findall(r"(?:Extra files found|Missing files) in model '[^']*': [^\"\]]*", text)
    found += [
        f"Hash mismatch for '{name}' (changed)"
        for name in re.findall(r"Hash mismatch for '([^']+)'", text)
    ]
    return "Signature mismatch: " + "; ".join(found)
