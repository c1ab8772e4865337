"""Signatures of servable exports: OpenSSF model-signing in its key mode, so that what serves is
what training wrote and the gate passed.

`sign` writes `model.sig` into an export folder: a Sigstore bundle whose DSSE envelope holds the
SHA-256 of every file of the folder, signed with an elliptic-curve private key. `verify` hashes
the folder again and checks the envelope against the public key: a changed, added or removed
file, or another key, is a `SignatureError` that names the file and what is wrong with it.
Whoever can write an artifact store, a volume or a model store can change the files, but cannot
sign them without the private key.

Keys: the private key is $CATSDOGS_SIGNING_KEY's file, else `signing/private.pem` in the state
folder; the public key $CATSDOGS_VERIFY_KEY's, else `signing/public.pem` there. Where neither
exists yet, the first signing makes the pair (P-256, the private half 0600) in those two places:
compose gives the trainer a volume of its own for the private key and TorchServe the public one
read-only. A pair made in the state folder before $CATSDOGS_SIGNING_KEY named another place moves
there (so the versions it signed still verify); a public key without its private one is refused,
not replaced. Verifying needs only the public key.

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
    """The signing key: $CATSDOGS_SIGNING_KEY's file, else the state folder's; the pair is made
    now where neither half exists yet."""
    path = Path(os.environ.get(PRIVATE_ENV) or home / KEYS / "private.pem")
    if path.is_file():
        return path
    from catsdogs_pl import places  # training's side only: the handler never signs

    with places.locked("signing"):  # two first fits at once make one pair, not two halves
        if not path.exists():
            _first_pair(path, home)
    return path


def _first_pair(private: Path, home: Path) -> None:
    public = public_key_file(home)
    earlier = home / KEYS / "private.pem"
    if earlier.is_file():  # made in the state folder before $CATSDOGS_SIGNING_KEY moved it
        _write_private(private, earlier.read_bytes())
        earlier.unlink()
        if not public.exists():
            _write_public(public, earlier.with_name("public.pem").read_bytes())
        return
    if public.exists():
        raise MissingError(
            f"no private key at {private}, but a public key at {public}: restore the private key "
            f"of that pair (or set {PRIVATE_ENV} to it); removing {public} starts a new pair, and "
            "the versions the old one signed no longer verify"
        )
    _make_pair(private, public)


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


def _make_pair(private: Path, public: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_public(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    _write_private(private, pem)  # last: a pair is whole once this exists


def _write_public(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)


def _write_private(path: Path, pem: bytes) -> None:
    """Write `pem` as `path`, readable by its owner only from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, path)


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
