"""Signed exports (catsdogs_pl/signing.py): the key pair made on first use, and each tampering
(a byte changed, a file added, a file removed, another key, no signature) refused naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catsdogs_pl import servable, signing
from catsdogs_pl.errors import MissingError
from tests.helpers.serving import make_export


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    for name in (signing.PRIVATE_ENV, signing.PUBLIC_ENV):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    return signing.private_key(home), signing.public_key(home)


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    folder = make_export(tmp_path / "export")
    assert signing.sign(folder, keys[0]) == folder / signing.SIGNATURE
    signing.verify(folder, keys[1])  # untouched: verifies
    return folder


def test_the_key_pair_is_made_once_private_to_its_owner(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    assert signing.private_key(private.parents[1]).read_bytes() == before  # not made again


def test_keys_given_by_environment(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(signing.PRIVATE_ENV, str(keys[0]))
    monkeypatch.setenv(signing.PUBLIC_ENV, str(keys[1]))
    elsewhere = tmp_path / "elsewhere"
    assert signing.private_key(elsewhere) == keys[0] and signing.public_key(elsewhere) == keys[1]
    assert not elsewhere.exists()  # no pair made where the environment names one
    monkeypatch.setenv(signing.PRIVATE_ENV, str(tmp_path / "nope.pem"))
    with pytest.raises(MissingError, match=r"no private key at .*nope\.pem, but a public key at"):
        signing.private_key(elsewhere)  # the public key of a pair whose private half is lost
    assert not (tmp_path / "nope.pem").exists() and keys[1].read_bytes().startswith(b"-----")


def test_first_pair_where_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose's trainer: the private half in its own volume, the public one in serving's."""
    private, public = tmp_path / "trainer" / "private.pem", tmp_path / "serving" / "public.pem"
    monkeypatch.setenv(signing.PRIVATE_ENV, str(private))
    monkeypatch.setenv(signing.PUBLIC_ENV, str(public))
    home = tmp_path / "home"
    assert signing.private_key(home) == private and signing.public_key(home) == public
    assert private.stat().st_mode & 0o777 == 0o600 and not (home / signing.KEYS).exists()
    folder = make_export(tmp_path / "export")
    signing.sign(folder, private)
    signing.verify(folder, public)


def test_a_pair_in_the_state_folder_moves_where_the_environment_says(
    tmp_path: Path, keys: tuple[Path, Path], signed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack that signed before the key had a place of its own keeps its versions verifying,
    and its state volume no longer holds the private key."""
    home = keys[0].parents[1]
    before = keys[0].read_bytes()
    private, public = tmp_path / "trainer" / "private.pem", tmp_path / "serving" / "public.pem"
    monkeypatch.setenv(signing.PRIVATE_ENV, str(private))
    monkeypatch.setenv(signing.PUBLIC_ENV, str(public))
    assert signing.private_key(home).read_bytes() == before and not keys[0].exists()
    assert private.stat().st_mode & 0o777 == 0o600
    signing.verify(signed, signing.public_key(home))  # signed before the move: still verifies


def test_no_public_key_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.PUBLIC_ENV, raising=False)
    with pytest.raises(MissingError, match="set CATSDOGS_VERIFY_KEY"):
        signing.public_key(tmp_path)


def test_one_byte_changed_in_the_weights_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    weights = signed / servable.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(
        signing.SignatureError, match=r"Hash mismatch for 'weights\.pt' \(changed\)"
    ):
        signing.verify(signed, keys[1])


def test_a_file_added_is_refused_unless_it_is_named_as_not_the_exports(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    (signed / "extra.pt").write_bytes(b"another network")
    with pytest.raises(signing.SignatureError, match=r"Extra files found .*extra\.pt"):
        signing.verify(signed, keys[1])
    signing.verify(signed, keys[1], ignored=["extra.pt"])  # an archive's own code, say


def test_a_file_removed_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / servable.INDEX_TO_NAME).unlink()
    with pytest.raises(signing.SignatureError, match=r"Missing files .*index_to_name\.json"):
        signing.verify(signed, keys[1])


def test_another_key_is_refused(signed: Path, tmp_path: Path) -> None:
    other = signing.public_key(signing.private_key(tmp_path / "other").parents[1])
    with pytest.raises(signing.SignatureError, match="Key mismatch"):
        signing.verify(signed, other)


def test_a_signature_made_over_other_files_is_refused(
    signed: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """model.sig copied from another export onto these files: its digests are not theirs."""
    other = make_export(tmp_path / "other", seed=1)
    signing.sign(other, keys[0])
    shutil.copy(other / signing.SIGNATURE, signed / signing.SIGNATURE)
    with pytest.raises(signing.SignatureError, match=r"'weights\.pt' \(changed\)"):
        signing.verify(signed, keys[1])


def test_an_unsigned_export_is_refused_with_what_to_do(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    folder = make_export(tmp_path / "export")
    (folder / signing.SIGNATURE).unlink()  # as a version registered before signing
    with pytest.raises(signing.SignatureError, match="has no model.sig: it was not signed"):
        signing.verify(folder, keys[1])
