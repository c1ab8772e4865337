"""The forward pass is accepted by its accuracy: each rung of the ladder (bf16, int8, f32, eager)
is forced here, whatever this CPU has, and the handler serves what the gate accepted, or float32
where the host lacks the units."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from catsdogs_pl import servable
from catsdogs_pl.contracts import ForwardPass
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.predictor import Answers
from catsdogs_pl.serving import package, sign
from catsdogs_pl.training import forward_gate, robustness
from tests.helpers.serving import ARCH, SIZE, FakeContext, load_handler
from tests.test_datamodule import prepared

pytest.importorskip("onnx", reason="the onnx extra is not installed: serving stays eager")
pytest.importorskip("openvino", reason="the onnx extra is not installed: no reduced precision")
pytest.importorskip("nncf", reason="the onnx extra is not installed: no int8")
EVERY_UNIT = {"bf16", "int8"}


@pytest.fixture(scope="module")
def dm(tmp_path_factory: pytest.TempPathFactory) -> CatsDogsDataModule:
    return prepared(tmp_path_factory.mktemp("gate"), image_size=SIZE)


def network() -> BaselineCNN:
    torch.manual_seed(0)
    return BaselineCNN(**ARCH).eval()


def run_gate(
    dm: CatsDogsDataModule, folder: Path, monkeypatch: pytest.MonkeyPatch, units: set[str]
) -> ForwardPass:
    """The gate on a fresh export in `folder`, on a host with `units`; every rung that runs
    passes unless a test makes it fail (a random network's accuracy is what it is)."""
    monkeypatch.setenv(servable.UNITS_ENV, ",".join(units) or "none")
    net = network()
    servable.export(net, dm.preprocessing, folder)
    accepted = forward_gate.accept(net, dm, folder, {"flip_tta": True})
    sign.sign_export(folder)  # as publish signs what the gate wrote
    return accepted


def fail(monkeypatch: pytest.MonkeyPatch, *precisions: str) -> None:
    """Rungs of `precisions` answer the other class: their agreement with eager is 0."""
    build = forward_gate.candidate

    def candidate(precision: str, *args: Any) -> Any:
        forward = build(precision, *args)
        return (lambda x: -forward(x)) if precision in precisions else forward

    monkeypatch.setattr(forward_gate, "candidate", candidate)


def test_bf16_is_served_where_it_agrees(
    dm: CatsDogsDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: Any
) -> None:
    monkeypatch.setattr(forward_gate, "AGREEMENT", 0.0)  # a random network's labels sit on edges
    monkeypatch.setattr(forward_gate, "ACCURACY", 1.0)
    chosen = run_gate(dm, tmp_path, monkeypatch, EVERY_UNIT)
    assert (chosen.runtime, chosen.precision, chosen.model) == ("openvino", "bf16", servable.ONNX)
    assert [r["precision"] for r in chosen.rungs] == ["bf16"]  # the ladder stops at the first
    assert not (tmp_path / servable.INT8).exists()
    assert ForwardPass.read(tmp_path) == chosen
    shifts = chosen.rungs[0]["shifts"]
    by_shift = shifts.pop("by_shift")  # each shift's share of the set, for the model card
    assert list(by_shift) == list(robustness.SHIFTS)[1:]
    assert sum(f["photos"] for f in by_shift.values()) == shifts["photos"]
    report("forward gate, bf16 rung", chosen.rungs[0])


def test_a_rung_that_disagrees_falls_to_int8_with_its_figures(
    dm: CatsDogsDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward_gate, "AGREEMENT", 0.5)  # int8 of a random network: >0.9
    monkeypatch.setattr(forward_gate, "ACCURACY", 1.0)
    fail(monkeypatch, "bf16")
    chosen = run_gate(dm, tmp_path, monkeypatch, EVERY_UNIT)
    assert (chosen.precision, chosen.model) == ("int8", servable.INT8)
    bf16, int8 = chosen.rungs
    assert bf16["precision"] == "bf16" and not bf16["accepted"] and bf16["agreement"] < 0.1
    assert "test" in bf16 and "shifts" in bf16  # the figures that failed it are kept
    assert int8["accepted"] and (tmp_path / servable.INT8).exists()


def test_each_rung_falls_to_the_next(
    dm: CatsDogsDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail(monkeypatch, "bf16", "int8")
    chosen = run_gate(dm, tmp_path / "f32", monkeypatch, EVERY_UNIT)
    assert [r["accepted"] for r in chosen.rungs] == [False, False, True]  # f32: parity-held
    assert (chosen.runtime, chosen.precision) == ("auto", "f32")
    assert not (tmp_path / "f32" / servable.INT8).exists()  # a rejected int8 graph is not shipped
    monkeypatch.setattr(servable, "installed_runtimes", lambda: [])  # no model.onnx: eager
    chosen = run_gate(dm, tmp_path / "eager", monkeypatch, EVERY_UNIT)
    assert (chosen.runtime, chosen.precision) == ("eager", "f32")
    assert all("no model.onnx" in r["skipped"] for r in chosen.rungs)


def test_a_host_without_the_units_gets_f32_and_says_so(
    dm: CatsDogsDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = run_gate(dm, tmp_path, monkeypatch, set())
    assert chosen.precision == "f32"
    assert [r["skipped"] for r in chosen.rungs[:2]] == [
        "this CPU has no bf16 units",
        "this CPU has no int8 dot-product (VNNI or AMX) units",
    ]
    assert chosen.host == []


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_the_handler_serves_what_was_accepted_where_the_host_can(
    dm: CatsDogsDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    monkeypatch.setattr(forward_gate, "AGREEMENT", 0.5)
    monkeypatch.setattr(forward_gate, "ACCURACY", 1.0)
    if precision == "int8":
        fail(monkeypatch, "bf16")
    run_gate(dm, tmp_path / "export", monkeypatch, EVERY_UNIT)
    staged = package.stage(tmp_path / "export", tmp_path / "model")
    assert {servable.ONNX, ForwardPass.FILE} <= set(servable.present(staged))
    served = load_handler(staged, FakeContext(staged))
    assert (served.predictor.runtime, served.predictor.precision) == ("openvino", precision)
    monkeypatch.setenv(servable.UNITS_ENV, "none")  # the same .mar on an older CPU
    with pytest.warns(UserWarning, match=f"this host has no {precision} units.*serving float32"):
        older = load_handler(staged, FakeContext(staged))
    assert older.predictor.precision == "f32"
    explicit = load_handler(staged, FakeContext(staged, runtime="onnx"))  # named: float32
    assert (explicit.predictor.runtime, explicit.predictor.precision) == ("onnx", "f32")


@pytest.mark.parametrize(("gain", "served"), [(-1.0, True), (1.0, False)])
def test_flip_tta_is_served_only_where_it_pays(
    dm: CatsDogsDataModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gain: float,
    served: bool,
) -> None:
    monkeypatch.setattr(forward_gate, "TTA_GAIN", gain)
    net = network()
    figures, val_logits = forward_gate.choose_flip_tta(net, dm)
    assert figures["flip_tta"] is net.flip_tta is served
    assert {"val_accuracy_tta", "val_accuracy_no_tta", "gain"} <= set(figures)
    # one pass over the photos and one over their mirrors answer as the network served
    images, targets = forward_gate.split(dm, "val")
    answered = forward_gate.logits(net.eval(), dm.preprocessing, images)
    np.testing.assert_allclose(val_logits, answered, atol=1e-5)
    accuracy = float((answered.argmax(1) == targets).mean())
    assert accuracy == figures["val_accuracy_tta" if net.flip_tta else "val_accuracy_no_tta"]
    servable.export(net, dm.preprocessing, tmp_path)
    written = json.loads((tmp_path / "architecture.json").read_text())
    assert written["flip_tta"] is served  # what serving rebuilds is what was chosen
    assert servable.load(tmp_path)[0].flip_tta is served


def test_the_gate_scores_against_eager() -> None:
    targets = np.array([0, 1] * 500)
    sets = {"test": (np.zeros((1000, 1, 1, 3), np.uint8), targets)}
    eager = {"test": targets.copy()}
    off_by = eager["test"].copy()
    off_by[:6] = 1 - off_by[:6]  # 6 of 1,000 differ: agreement 0.994, accuracy -0.006
    assert forward_gate.score(eager, eager, sets)["accepted"]
    assert not forward_gate.score({"test": off_by}, eager, sets)["accepted"]
    off_by[:6:2] = targets[:6:2]  # 3 differ: 0.997 agree, -0.003 accuracy: the edge passes
    assert forward_gate.score({"test": off_by}, eager, sets)["accepted"]


def test_the_forward_pass_shows_in_the_metrics_and_the_listing(
    dm: CatsDogsDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = run_gate(dm, tmp_path / "export", monkeypatch, set())
    staged = package.stage(tmp_path / "export", tmp_path / "model")
    context = FakeContext(staged)
    handler = load_handler(staged, context)
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    handler.observe(Answers([{}], [image], [(SIZE, SIZE)], np.array([[0.3, 0.7]]), 0.0, 0.0))
    handler.flush(context.metrics, [])
    gauges = [dims for name, _, dims in context.metrics.calls if name == "CatsDogsForwardPass"]
    assert gauges == [
        [("runtime", handler.predictor.runtime), ("precision", "f32"), ("flip_tta", "true")]
    ]
    mar = tmp_path / "v.mar"
    with zipfile.ZipFile(mar, "w") as zf:
        zf.write(staged / ForwardPass.FILE, ForwardPass.FILE)
    assert package.read_forward(mar) == chosen.describe() == "auto f32, flip TTA"
    with zipfile.ZipFile(tmp_path / "old.mar", "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", "{}")
    assert package.read_forward(tmp_path / "old.mar") == "float32 (no forward gate)"
