"""Batch augmentation: shapes, per-image randomness, reproducibility, erasing, colour bounds."""

from __future__ import annotations

import torch

from catsdogs_pl.data.augment import JITTER, augment_batch


def halves(n: int = 64, size: int = 48) -> torch.Tensor:
    """Images whose left half is black and right half white: mirroring is visible."""
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    images[..., size // 2 :] = 255
    return images


def test_resizes_to_the_training_size_on_the_0_255_scale() -> None:
    out = augment_batch(halves(size=48), 32)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_each_image_is_mirrored_or_not_on_its_own() -> None:
    torch.manual_seed(0)
    out = augment_batch(halves(), 48, crop_scale=1.0)
    left_bright = out[..., :8].mean((1, 2, 3)) > out[..., -8:].mean((1, 2, 3))
    assert 10 < int(left_bright.sum()) < 54  # about half of the 64, never all or none


def test_crops_differ_per_image_and_repeat_under_a_seed() -> None:
    same = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8).repeat(8, 1, 1, 1)
    torch.manual_seed(1)
    a = augment_batch(same, 32, 0.5)
    torch.manual_seed(1)
    b = augment_batch(same, 32, 0.5)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # same picture, different crop/mirror/colour


def test_brightness_and_contrast_stay_within_the_jitter() -> None:
    flat = torch.full((32, 3, 16, 16), 200, dtype=torch.uint8)
    out = augment_batch(flat, 16)
    assert out.min() >= 200 * (1 - JITTER) - 1e-3 and out.max() <= 200 * (1 + JITTER) + 1e-3
    assert out.mean((1, 2, 3)).std() > 1  # each image got its own factors


def test_erasing_blacks_out_a_patch_only_when_asked() -> None:
    flat = torch.full((16, 3, 32, 32), 200, dtype=torch.uint8)
    assert (augment_batch(flat, 32, erasing=0.0) > 0).all()
    erased = augment_batch(flat, 32, erasing=1.0)
    black = (erased == 0).all(1)  # (N, H, W): pixels erased in every channel
    assert black.any((1, 2)).all() and not black.all((1, 2)).any()
