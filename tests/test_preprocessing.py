"""Decoding rules shared by cleaning and serving: each rejection reason and each kept oddity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs_pl import preprocessing
from catsdogs_pl.preprocessing import BadImage, load_rgb
from tests.helpers.images import image_bytes, png_claiming


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html><body>404 Not Found</body></html>", "not_an_image"),
        (b"\x00" * 1000, "not_an_image"),
        (image_bytes(1, (400, 300))[:3000], "truncated"),
        (image_bytes(2, (1, 1)), "too_small"),
        (image_bytes(3, (200, 31)), "too_small"),
        (png_claiming(30_000, 30_000), "decompression_bomb"),
        (png_claiming(8000, 7000), "decompression_bomb"),  # 56 MP: over our 50 MP, under Pillow's
    ],
)
def test_rejections_name_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=f"^{reason}: ") as info:
        load_rgb(data, 32)
    assert info.value.reason == reason
    assert info.value.detail


def test_bomb_is_refused_before_pixels_are_allocated() -> None:
    # a 30000x30000 RGB image would need 2.7 GB; the check must come from the header alone
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(BadImage, match="^decompression_bomb: "):
        load_rgb(png_claiming(30_000, 30_000), 32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10_000_000


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    img = img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if mode in ("L", "CMYK") else "PNG")
    out = load_rgb(buf.getvalue(), 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert 10 < out.mean() < 245  # not black or saturated: the conversion kept the content


def test_animated_gif_keeps_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = load_rgb(buf.getvalue(), 16)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_exif_orientation_is_applied() -> None:
    # left half white, right half black, stored with orientation 6 (rotate 90 degrees clockwise)
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif)
    out = load_rgb(buf.getvalue(), 32).astype(float)
    assert out[:16].mean() > 200 and out[16:].mean() < 50  # white ends up on top


def test_junk_after_end_marker_is_kept() -> None:
    out = load_rgb(image_bytes(4, (64, 64)) + b"garbage" * 100, 32)
    assert out.shape == (32, 32, 3)


def test_normalize_matches_constants_for_chw_and_nchw() -> None:
    x = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    expected = [(1 - m) / s for m, s in zip(preprocessing.MEAN, preprocessing.STD, strict=True)]
    for t in (preprocessing.normalize(x), preprocessing.normalize(x[None])[0]):
        assert t.dtype == torch.float32
        assert torch.allclose(t[:, 0, 0], torch.tensor(expected))


def test_normalize_of_a_permuted_batch_is_the_formula_contiguous_and_leaves_its_input() -> None:
    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    batch = pixels.permute(0, 3, 1, 2)  # NHWC memory, as the handler stacks decoded images
    mean = torch.tensor(preprocessing.MEAN).view(-1, 1, 1)
    std = torch.tensor(preprocessing.STD).view(-1, 1, 1)
    x = preprocessing.normalize(batch)
    assert x.is_contiguous() and x.shape == (2, 3, 8, 8)
    assert torch.allclose(x, (batch.float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(batch, pixels.permute(0, 3, 1, 2))  # the caller's pixels untouched
    floats = batch.float()  # training's resized batches arrive as float pixels
    assert torch.allclose(preprocessing.normalize(floats), x, atol=1e-6)
    assert torch.equal(floats, batch.float())


def test_spec_is_the_single_source() -> None:
    d = preprocessing.spec(96, ["cat", "dog"], min_side=40)
    assert d.image_size == 96 and d.classes == ("cat", "dog")
    assert d.mean == preprocessing.MEAN and d.std == preprocessing.STD
    assert d.limits == {"min_side": 40, "max_pixels": preprocessing.MAX_PIXELS}
