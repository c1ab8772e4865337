"""BaselineCNN's stem and CatsDogsClassifier's MixUp/CutMix training step and resumed schedule."""

from __future__ import annotations

from types import SimpleNamespace

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


def test_resumed_schedule_runs_over_the_new_run_to_its_end() -> None:
    """Saved after epoch 0 of 1 (4 steps), resumed for 3 epochs of 2 steps (a larger batch): the
    schedule goes on from step 4 as if it had been made for 4 + 2 * 2 steps, instead of raising
    past its old last step."""
    model = CatsDogsClassifier(BaselineCNN(width=4, depth=2))
    model.trainer = SimpleNamespace(estimated_stepping_batches=4)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    lr_config = SimpleNamespace(scheduler=scheduler)
    model.trainer = SimpleNamespace(
        lr_scheduler_configs=[lr_config],
        global_step=4,
        current_epoch=1,
        max_epochs=3,
        max_steps=-1,
        num_training_batches=2,
        accumulate_grad_batches=1,
    )
    model.on_train_start()
    resumed = lr_config.scheduler
    fresh = CatsDogsClassifier(BaselineCNN(width=4, depth=2))
    fresh.trainer = SimpleNamespace(estimated_stepping_batches=8)
    reference = fresh.configure_optimizers()["lr_scheduler"]["scheduler"]
    for step in range(8):
        if step >= 4:
            assert resumed.get_last_lr() == pytest.approx(reference.get_last_lr())
            optimizer.step()
            resumed.step()
        reference.optimizer.step()
        reference.step()
    assert resumed.get_last_lr() == pytest.approx(reference.get_last_lr())
