"""Secure defaults, each shown against the real thing: tokens on both APIs, no remote archives
(ShellTorch), no pickle from anything a user hands us. The size and pixel limits are in
test_bad_input.py, archive extraction in tests/test_sources.py, the compose and image rules
(management on 127.0.0.1, non-root users) in tests/test_deployment.py."""

from __future__ import annotations

import pathlib
import pickle
import shutil
import urllib.parse
from pathlib import Path

import pytest
import torch

from catsdogs_pl import servable, signing
from catsdogs_pl.serving import package, sign
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.serving import FakeContext, load_handler, make_export


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "method", "path"),
    [
        ("inference", "POST", "/predictions/catsdogs"),
        ("inference", "GET", "/ping"),
        ("management", "GET", "/models"),
        ("management", "DELETE", "/models/catsdogs/1"),
    ],
)
def test_token_required_on_inference_and_management(served, kind, method, path) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-key"}):
        response = ts.call(
            kind, method, path, b"x" if method == "POST" else None, headers, token=False
        )
        assert response.status == 400 and b"Token Authorization failed" in response.body, (
            response.body
        )
    assert ts.describe("1"), "the refused DELETE must not have unregistered anything"


@pytest.mark.integration
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/evil.mar",
        "https://example.com/m.mar",
        "file:///etc/passwd",
        "../catsdogs_v1.mar",
        "/etc/passwd",
    ],
)
def test_only_archives_of_the_local_model_store_can_be_registered(served, url: str, report) -> None:
    before = {e["modelVersion"] for e in ts.describe("all")}
    response = ts.call("management", "POST", f"/models?{urllib.parse.urlencode({'url': url})}")
    report(f"register url={url}", f"{response.status} {response.json().get('message')}")
    assert response.status >= 400 and b"message" in response.body, response.body
    assert {e["modelVersion"] for e in ts.describe("all")} == before


class _Payload:
    """What a poisoned weights.pt carries: unpickling it runs code (here: creates a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_weights_are_never_unpickled(tmp_path: Path) -> None:
    """A weights.pt that runs code when unpickled is refused by servable.load, by package (before
    it reaches a server) and by the handler inside TorchServe: weights_only loading, even where
    whoever wrote it held the signing key. Swapped in after signing, the signature refuses it
    before anything is unpickled."""
    folder = make_export(tmp_path / "export")
    marker = tmp_path / "code-ran"
    torch.save({"weight": _Payload(marker)}, folder / servable.WEIGHTS)
    sign.sign_export(folder)  # signed by the key's holder: the signature cannot help here
    refused = "Weights only load failed"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        servable.load(folder)
    with pytest.raises(pickle.UnpicklingError, match=refused):
        package.package_version("5", export_dir=folder)
    with pytest.raises(pickle.UnpicklingError, match=refused):
        package.stage(folder, tmp_path / "refused")
    staged = package.stage(make_export(tmp_path / "good"), tmp_path / "model")
    shutil.copy(folder / servable.WEIGHTS, staged / servable.WEIGHTS)  # swapped inside a .mar
    with pytest.raises(ValueError, match="Hash mismatch for 'weights.pt'"):  # the .mar's class
        load_handler(staged, FakeContext(staged))
    shutil.copy(folder / signing.SIGNATURE, staged / signing.SIGNATURE)  # the same seed: only
    with pytest.raises(pickle.UnpicklingError, match=refused):  # the weights differ
        load_handler(staged, FakeContext(staged))
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: plain pickle runs it
    assert marker.exists()
