"""Training augmentation of whole batches, on the device the batch was moved to.

Each image gets its own crop position, mirroring, brightness, contrast and erased patch; one
antialiased resize per batch brings the crops to the epoch's training size (progressive resizing).
Per-image transforms in loader workers took about a third of a CPU epoch, at the cached size even
when the epoch trained on smaller images; this costs a few percent of a training step
(bench/train_throughput.py) and the batch stays on the GPU when there is one.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

RATIO = (0.85, 1.18)  # aspect ratios of the crops (width / height)
JITTER = 0.1  # brightness and contrast factors are drawn from [1 - JITTER, 1 + JITTER]
GREY = (0.299, 0.587, 0.114)  # luma weights: the grey level that contrast scales around
ERASE_AREA = (0.02, 0.33)  # fraction of the image an erased patch covers


def _uniform(like: torch.Tensor, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n draws from [low, high) on `like`'s device: every per-image random number."""
    return torch.empty(n, device=like.device).uniform_(low, high)


def _crop_flip_resize(images: torch.Tensor, size: int, crop_scale: float) -> torch.Tensor:
    """A crop of `crop_scale`..1 of the area with an aspect ratio in RATIO, at a random place
    in each image, resized to `size` px (antialiased) and mirrored half of the time. The crop's
    shape is drawn once per batch (so one resize serves the whole batch), its place and the
    mirroring per image."""
    n, _, h, w = images.shape
    u, v = torch.rand(2).tolist()
    area = crop_scale + (1 - crop_scale) * u
    ratio = RATIO[0] * (RATIO[1] / RATIO[0]) ** v  # log-uniform, as RandomResizedCrop draws it
    ch = min(h, round(h * math.sqrt(area / ratio)))
    cw = min(w, round(w * math.sqrt(area * ratio)))
    tops = torch.randint(0, h - ch + 1, (n,)).tolist()
    lefts = torch.randint(0, w - cw + 1, (n,)).tolist()
    # slices then one copy: 0.3 ms for 32 images on CPU, where a gather by index took 2-6 ms
    crops = torch.stack(
        [
            image[:, top : top + ch, left : left + cw]
            for image, top, left in zip(images, tops, lefts, strict=True)
        ]
    )
    # uint8 resampling is a CPU kernel (and there 3x faster than float); elsewhere resize floats
    crops = F.interpolate(
        crops if crops.is_cpu else crops.float(), size, mode="bilinear", antialias=True
    ).float()
    mirror = _uniform(crops, n) < 0.5
    crops[mirror] = crops[mirror].flip(-1)
    return crops


def _jitter(x: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast around each image's mean grey level (as ColorJitter does), in
    one pass: b*x then (b*x - b*g)*c + b*g equals x*(b*c) + b*g*(1 - c)."""
    n = len(x)
    brightness = _uniform(x, n, 1 - JITTER, 1 + JITTER)
    contrast = _uniform(x, n, 1 - JITTER, 1 + JITTER)
    grey = x.mean((2, 3)) @ x.new_tensor(GREY)  # each image's mean grey level
    scale = (brightness * contrast).view(n, 1, 1, 1)
    shift = (brightness * grey * (1 - contrast)).view(n, 1, 1, 1)
    return x.mul_(scale).add_(shift).clamp_(0, 255)


def _erase(x: torch.Tensor, probability: float) -> torch.Tensor:
    """With `probability` per image, a random rectangle (ERASE_AREA of the image, aspect ratio
    0.3..3.3) set to black, as RandomErasing does."""
    n, _, h, w = x.shape
    area = _uniform(x, n, *ERASE_AREA)
    ratio = _uniform(x, n, math.log(0.3), math.log(3.3)).exp()
    eh = ((area * ratio).sqrt() * h).clamp(max=h)
    ew = ((area / ratio).sqrt() * w).clamp(max=w)
    top = _uniform(x, n) * (h - eh)
    left = _uniform(x, n) * (w - ew)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + ew).view(n, 1, 1))
    )
    chosen = (_uniform(x, n) < probability).view(n, 1, 1)
    return x.masked_fill((inside & chosen).unsqueeze(1), 0.0)


def augment_batch(
    images: torch.Tensor, size: int, crop_scale: float = 0.7, erasing: float = 0.0
) -> torch.Tensor:
    """uint8 NCHW at the cached size -> float NCHW at `size`, still on the 0..255 scale (the
    DataModule normalises after): crop, mirror, brightness/contrast and, with probability
    `erasing` per image, an erased patch. Random numbers come from torch's global generator, so
    `seed_everything` makes the batches reproducible."""
    x = _jitter(_crop_flip_resize(images, size, crop_scale))
    return _erase(x, erasing) if erasing > 0 else x
