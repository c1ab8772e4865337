"""BaselineCNN's stem and CatsDogsClassifier's MixUp/CutMix training step."""

from __future__ import annotations

import pytest
import torch

from catsdogs_pl.models.classifier import CatsDogsClassifier
from catsdogs_pl.models.cnn import BaselineCNN


def test_stride_4_stem_quarters_the_pixels_of_every_later_layer() -> None:
    shapes = {}
    for stride in (2, 4):
        net = BaselineCNN(width=8, depth=2, stem_stride=stride)
        shapes[stride] = net.features(torch.zeros(1, 3, 64, 64)).shape
        assert net.init_args["stem_stride"] == stride  # the export rebuilds the same network
        assert net.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    assert shapes[2][-2:] == (16, 16) and shapes[4][-2:] == (8, 8)
    with pytest.raises(ValueError, match="stem_stride=3"):
        BaselineCNN(stem_stride=3)


def test_mixing_trains_on_soft_targets() -> None:
    torch.manual_seed(0)
    model = CatsDogsClassifier(BaselineCNN(width=4, depth=2, dropout=0.0), mix_alpha=1.0)
    model.log = lambda *args, **kwargs: None  # no Trainer attached
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1] * 4)
    mixed = model.training_step((x, y), 0)
    plain = CatsDogsClassifier(model.net, mix_alpha=0.0)
    plain.log = model.log
    assert model.mix is not None and plain.mix is None
    assert torch.isfinite(mixed) and not torch.isclose(mixed, plain.training_step((x, y), 0))
