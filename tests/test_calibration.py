"""Temperature scaling: fitted on a split, carried in the export, applied by the handler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from catsdogs_pl import servable
from catsdogs_pl.contracts import Calibration
from catsdogs_pl.serving import package, sign
from catsdogs_pl.training import calibration
from tests.helpers.images import image_bytes
from tests.helpers.serving import FakeContext, load_handler, make_export


def _split(answered_at: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) and a network that answers softmax(z * answered_at): too sure
    of itself above 1, too unsure below."""
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(rng.normal(0, 2.5, (n, 2)))
    labels = torch.multinomial(z.softmax(-1), 1, generator=torch.Generator().manual_seed(seed))
    return (z * answered_at).softmax(-1).numpy(), labels.squeeze(1).numpy()


@pytest.mark.parametrize("answered_at", [3.0, 1 / 3])
def test_fit_finds_the_temperature_that_undoes_over_and_under_confidence(
    answered_at: float,
) -> None:
    probs, labels = _split(answered_at)
    fitted = calibration.fit(probs, labels)
    assert fitted.temperature == pytest.approx(answered_at, rel=0.1)
    assert fitted.ece_before > 0.05 and fitted.ece_after < 0.02
    assert fitted.images == len(labels) and fitted.split == "val"
    # dividing the logits changes no label
    served = calibration.scale(probs, fitted.temperature)
    assert (served.argmax(1) == probs.argmax(1)).all()
    assert served.sum(1) == pytest.approx(np.ones(len(labels)), abs=1e-6)
    assert calibration.ece(served, labels) == pytest.approx(fitted.ece_after)


def test_a_calibrated_split_keeps_temperature_one_and_an_empty_one_gets_it() -> None:
    probs, labels = _split(1.0)
    assert calibration.fit(probs, labels).temperature == pytest.approx(1.0, abs=0.1)
    empty = calibration.fit(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    assert empty.temperature == 1.0 and empty.images == 0


def test_the_handler_divides_the_logits_by_the_exported_temperature(tmp_path: Path) -> None:
    plain = package.stage(make_export(tmp_path / "plain"), tmp_path / "plain-model")
    assert servable.temperature(plain) == 1.0  # an export made before calibration existed
    export = make_export(tmp_path / "export")
    Calibration(2.5, "val", 10, 0.1, 0.01, 15).write(export)
    sign.sign_export(export)  # as publish signs after writing it
    model_dir = package.stage(export, tmp_path / "model")
    assert (model_dir / Calibration.FILE).exists()  # package ships it
    handler = load_handler(model_dir, FakeContext(model_dir))
    assert handler.predictor.temperature == 2.5
    image = handler.predictor.decode(image_bytes(1, (80, 60)))[0]
    net, _ = servable.load(model_dir)
    with torch.inference_mode():
        logits = net(handler.predictor.batch([image]))
    assert torch.allclose(
        handler.predictor.probabilities([image]), (logits / 2.5).softmax(-1), atol=1e-6
    )
