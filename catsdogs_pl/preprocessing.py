"""Decoding and evaluation preprocessing: the one code path shared by the data cache, training and serving.

Depends on Pillow and numpy only (tensors are handled by duck typing), so the TorchServe handler can ship
this file inside the `.mar` unchanged: train/serve skew is then impossible by construction.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if __package__:  # catsdogs_pl.preprocessing
    from catsdogs_pl.contracts import Preprocessing
else:  # catsdogs_preprocessing.py inside a .mar (serving/package.py ships the contracts too)
    from catsdogs_contracts import Preprocessing

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MIN_SIDE = 32
MAX_PIXELS = 50_000_000


class BadImage(ValueError):
    """An input that cannot become a training or inference image; `reason` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def open_image(
    data: bytes, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Open from bytes and check the header only, so a decompression bomb never allocates pixels."""
    if not data:
        raise BadImage("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadImage("decompression_bomb", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImage(
            "not_an_image", "not a recognised image format (JPEG, PNG, GIF, ...)"
        ) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise BadImage(
            "decompression_bomb",
            f"{width}x{height} is {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit",
        )
    if min(width, height) < min_side:
        raise BadImage("too_small", f"{width}x{height}: the shorter side is under {min_side} px")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and float greyscale are scaled, palettes keep their transparency."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8), "L")
    elif img.mode == "P":
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode(img: Image.Image, size: int) -> np.ndarray:
    """Decode to a `size` x `size` x 3 uint8 array: JPEG draft decoding, EXIF upright, RGB, bilinear."""
    try:
        img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, never below `size`
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        img = _to_rgb(img).resize((size, size), Image.Resampling.BILINEAR)
    except Exception as exc:  # Pillow raises many types on corrupt data; each one means "bad file"
        reason = "truncated" if "truncated" in str(exc) else "undecodable"
        raise BadImage(reason, f"cannot decode the image data ({exc})") from exc
    return np.asarray(img, dtype=np.uint8)


def load_rgb(data: bytes, size: int, **limits: int) -> np.ndarray:
    """Bytes to a checked, decoded, resized uint8 HWC array; raises BadImage naming the problem."""
    return decode(open_image(data, **limits), size)


def normalize(images: Any, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> Any:
    """uint8 (or float 0..255) CHW or NCHW tensor to normalised, contiguous float32, on whatever
    device the tensor lives: x * 1/(255 std) - mean/std in one new tensor, since every served batch
    pays for this and four passes with a copy each cost 2.5x more."""
    x = images.contiguous().float()
    scale = x.new_tensor([1 / (255 * s) for s in std]).view(-1, 1, 1)
    shift = x.new_tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(-1, 1, 1)
    return (x * scale).add_(shift)


def spec(
    image_size: int, classes: list[str], min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
) -> Preprocessing:
    """This module's evaluation preprocessing at `image_size`, with the limits the data was cleaned
    by: prepare writes it as preprocessing.json, and the handler applies what it says."""
    return Preprocessing(image_size, MEAN, STD, tuple(classes), min_side, max_pixels)
