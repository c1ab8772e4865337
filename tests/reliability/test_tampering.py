"""Signed versions (#35): one byte changed in weights.pt, a file added, a file removed, another
key. Each is refused by package (before an archive exists), by the handler (before a worker loads
anything) and by deploy (before the server changes), and on the real TorchServe the version that
served before goes on serving."""

from __future__ import annotations

import re
import shutil
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import places, registry, servable, signing
from catsdogs_pl.errors import exit_code
from catsdogs_pl.serving import deploy, package, sign
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.gate import brightness_net, delete_versions, register_versions
from tests.helpers.images import image_bytes
from tests.helpers.serving import FakeContext, load_handler, make_export


def _byte(folder: Path) -> None:
    data = bytearray((folder / servable.WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 1
    (folder / servable.WEIGHTS).write_bytes(bytes(data))


def _added(folder: Path) -> None:
    (folder / "extra.pt").write_bytes(b"not signed")


def _removed(folder: Path) -> None:
    (folder / servable.INDEX_TO_NAME).unlink()


def _other_key(folder: Path) -> None:
    """Signed again, every file the first signature covered, by a key serving does not trust."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(signing.PRIVATE_ENV)
        patch.delenv(signing.PUBLIC_ENV)  # the thief's own pair, not serving's public key
        key = signing.private_key(folder.parent / f"{folder.name}-thief")
    copy = folder.parent / f"{folder.name}-resigned"
    shutil.copytree(folder, copy, ignore=lambda _, names: signing.archive_files(folder))
    shutil.copy(signing.sign(copy, key), folder / signing.SIGNATURE)


TAMPERS: dict[str, tuple[Callable[[Path], None], str]] = {  # what is done, what the refusal says
    "one byte of weights.pt": (_byte, r"Hash mismatch for 'weights\.pt' \(changed\)"),
    "a file added": (_added, r"Extra files found in model '[^']*': extra\.pt"),
    "a file removed": (_removed, r"Missing files in model '[^']*': index_to_name\.json"),
    "another key": (_other_key, r"Key mismatch: The public key hash"),
}


@pytest.fixture(params=list(TAMPERS))
def tamper(request: pytest.FixtureRequest) -> tuple[str, Callable[[Path], None], str]:
    return request.param, *TAMPERS[request.param]


def test_package_refuses_a_tampered_export(tmp_path: Path, tamper, report) -> None:
    name, change, message = tamper
    folder = make_export(tmp_path / "export")
    change(folder)
    with pytest.raises(signing.SignatureError, match=message) as refused:
        package.package_version("7", export_dir=folder)
    assert not list(places.model_store().glob(places.mar_name("7", "*")))  # nothing archived
    report(f"tampered ({name}): package", str(refused.value).split(": ", 1)[1])


def test_the_handler_refuses_tampered_files(tmp_path: Path, tamper) -> None:
    _, change, message = tamper
    staged = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    load_handler(staged, FakeContext(staged))  # as staged: it loads
    (staged / "__pycache__").mkdir(exist_ok=True)  # what Python writes beside the code is no change
    change(staged)
    context = FakeContext(staged)
    with pytest.raises(ValueError, match=message):  # the .mar's SignatureError class
        load_handler(staged, context)
    assert context.metrics.calls == [("CatsDogsSignatureRefused", 1, [("model_version", "3")])]


def test_an_archive_tampered_in_the_model_store_is_refused(tmp_path: Path, tamper) -> None:
    _, change, message = tamper
    mar = package.build_mar(make_export(tmp_path / "export"), "8", tmp_path / "store")
    assert package.verify_archive(mar).startswith("signature verified with ")
    _rewrite(mar, change)
    with pytest.raises(signing.SignatureError, match=message):
        package.verify_archive(mar)


def test_a_worker_without_a_key_loads_nothing(tmp_path: Path, monkeypatch) -> None:
    staged = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    monkeypatch.delenv(signing.PUBLIC_ENV)
    with pytest.raises(FileNotFoundError, match="CATSDOGS_VERIFY_KEY is not set"):
        load_handler(staged, FakeContext(staged))


def _rewrite(mar: Path, change: Callable[[Path], None]) -> None:
    """`change` applied to the files inside the archive `mar`, written back under its name."""
    unpacked = mar.with_suffix(".unpacked")
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(unpacked)
    change(unpacked)
    mar.unlink()
    with zipfile.ZipFile(mar, "w") as zf:
        for path in sorted(unpacked.rglob("*")):
            zf.write(path, path.relative_to(unpacked).as_posix())
    shutil.rmtree(unpacked)


def _still_serving_v1() -> None:
    assert {e["modelVersion"] for e in ts.describe("all")} == {"1"}
    assert ts.default_version() == "1"
    headers = {"Content-Type": "application/octet-stream"}
    response = ts.call("inference", "POST", "/predictions/catsdogs", image_bytes(3), headers)
    assert response.status == 200 and response.json()["model_version"] == "1", response.body


@pytest.mark.integration
def test_a_tampered_registry_version_is_refused_by_deploy(served: Path, tamper, report) -> None:
    """The version's servable changed in the artifact store after it was registered (signed):
    deploy refuses before packaging, v1 serves on."""
    name, change, message = tamper
    [version] = register_versions(served, [brightness_net()])
    try:
        run_id = (
            MlflowClient(registry.resolve_tracking_uri())
            .get_model_version(places.MODEL_NAME, version)
            .run_id
        )
        artifacts = MlflowClient(registry.resolve_tracking_uri()).get_run(run_id).info.artifact_uri
        change(Path(urllib.parse.urlparse(artifacts).path) / "servable")
        with pytest.raises(signing.SignatureError, match=message) as refused:
            deploy.deploy_version(version)
        assert not list(places.model_store().glob(places.mar_name(version, "*")))
        _still_serving_v1()
        report(f"tampered ({name}): deploy", str(refused.value).split(": ", 1)[1])
    finally:
        delete_versions([version])


@pytest.mark.integration
def test_torchserve_refuses_a_tampered_archive(
    served: Path, tmp_path: Path, tamper, report
) -> None:
    """An archive changed after package built it, registered behind deploy's back: the worker
    verifies before it loads, the registration fails, the log says which file, v1 serves on."""
    name, change, message = tamper
    mar = package.build_mar(make_export(tmp_path / "export", seed=5), "9", places.model_store())
    _rewrite(mar, change)
    log = served / "logs" / "model_log.log"
    before = log.stat().st_size if log.exists() else 0
    try:
        query = urllib.parse.urlencode(
            {"url": mar.name, "model_name": places.MODEL_NAME, "synchronous": "true"}
        )
        response = ts.call("management", "POST", f"/models?{query}", timeout=300)
        assert response.status >= 400, response.body
        with log.open() as handle:
            handle.seek(before)
            found = [line for line in handle if "does not verify" in line]
        assert found and re.search(message, found[-1]), found
        _still_serving_v1()
        said = found[-1].split("does not verify with ")[1].split(": ", 1)[1].strip()
        report(f"tampered ({name}): TorchServe", f"HTTP {response.status}; {said}")
        scraped = ts.call("metrics", "GET", "/metrics").body.decode()
        assert re.search(r'CatsDogsSignatureRefused\{[^}]*model_version="9"', scraped), scraped
    finally:
        if "9" in {e["modelVersion"] for e in ts.describe("all")}:
            deploy._unregister("9")
        mar.unlink(missing_ok=True)


def test_the_archive_files_left_out_are_the_ones_package_adds() -> None:
    assert {package.IDENTITY, places.MODEL_CONFIG.name} <= set(signing.ARCHIVE_FILES)
    assert all(name.endswith(".py") for name in (*package.SOURCES, places.HANDLER.name))


@pytest.mark.integration
def test_a_version_registered_before_signing_is_signed_once_then_served(
    served: Path, torchserve
) -> None:
    """No model.sig: deploy refuses, naming the one-time command; after it, deploy serves the
    version, and a second `sign` only verifies."""
    [version] = register_versions(served, [brightness_net()])
    history = places.deployments_file()
    before = history.read_text() if history.exists() else None
    try:
        client = MlflowClient(registry.resolve_tracking_uri())
        run_id = client.get_model_version(places.MODEL_NAME, version).run_id
        artifacts = Path(urllib.parse.urlparse(client.get_run(run_id).info.artifact_uri).path)
        (artifacts / "servable" / signing.SIGNATURE).unlink()  # as registered before #35
        with pytest.raises(signing.SignatureError, match="catsdogs_pl.serving.sign --model-v"):
            deploy.deploy_version(version)
        _still_serving_v1()
        assert sign.main(["--model-version", version]) == 0
        assert (artifacts / "servable" / signing.SIGNATURE).exists()
        said = deploy.deploy_version(version)
        assert f"catsdogs v{version}: registered and default now (was v1)" in said, said
        assert "signature verified with " in said
        assert sign.sign_version(version) == f"v{version}: already signed, and it verifies"
    finally:
        torchserve.serving_only("1")  # unregisters the new version
        delete_versions([version])
        if before is None:
            history.unlink(missing_ok=True)
        else:
            history.write_text(before)


@pytest.mark.integration
def test_a_version_without_a_card_says_so(served: Path, capsys) -> None:
    """v1 of the session registry is an export made without publish: no model card."""
    assert exit_code(deploy.main, ["list", "--card", "1"]) == 2
    assert "v1 has no model_card.md: published before cards were" in capsys.readouterr().err
