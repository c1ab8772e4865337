"""Deterministic drawn cat/dog pictures in the ``root/<class>/`` folder layout.

Demos and tests use these instead of downloading real photos. The two classes differ only
by shape (cats: pointed ears, whiskers, small nose; dogs: floppy ears, protruding muzzle,
sometimes a tongue). Fur, background, position, size, rotation and noise are drawn from the
same distributions for both, so no single colour statistic separates them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_SUPERSAMPLE = 2  # draw at 2x and downscale: cheap anti-aliasing
_FOLDERS = ("cat", "dog")


def _rgb(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, size=3))
    return r, g, b


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return r, g, bl


def _shrink(pts: list[tuple[float, float]], t: float) -> list[tuple[float, float]]:
    """Scale a polygon towards its centroid (inner ear inside outer ear)."""
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return [(mx + (x - mx) * t, my + (y - my) * t) for x, y in pts]


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float) -> list[tuple]:
    """Polygon of a rotated ellipse (ImageDraw.ellipse cannot rotate)."""
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for k in range(32):
        t = 2 * math.pi * k / 32
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def draw_animal(label: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one cartoon ``"cat"`` or ``"dog"`` head on a cluttered, noisy background."""
    if label not in _FOLDERS:
        raise ValueError(f"label must be 'cat' or 'dog', got {label!r}")
    s = size * _SUPERSAMPLE
    # Shared nuisance variables, drawn in the same order for both classes.
    bg_top, bg_bottom = _rgb(rng), _rgb(rng)
    fur = _rgb(rng, 40, 240)
    dark, light = _mix(fur, (0, 0, 0), rng.uniform(0.3, 0.6)), _mix(fur, (255,) * 3, 0.5)
    pink = _mix((235, 120, 140), _rgb(rng), rng.uniform(0.0, 0.3))
    r = s * rng.uniform(0.17, 0.24)
    cx, cy = s * rng.uniform(0.35, 0.65), s * rng.uniform(0.42, 0.6)
    tilt, noise = rng.uniform(-15.0, 15.0), rng.uniform(2.0, 10.0)

    ramp = np.linspace(0.0, 1.0, s)[:, None, None]
    bg = (1 - ramp) * np.array(bg_top) + ramp * np.array(bg_bottom)
    canvas = Image.fromarray(np.broadcast_to(bg, (s, s, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):  # clutter so the model must look at the animal
        x, y, w = s * rng.uniform(0, 1), s * rng.uniform(0, 1), s * rng.uniform(0.03, 0.1)
        draw.ellipse((x - w, y - w, x + w, y + w), fill=_rgb(rng))

    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    head = (cx - r, cy - r, cx + r, cy + r)
    lw = max(1, round(s / 100))
    if label == "cat":
        d.ellipse(head, fill=fur)
        for side in (-1, 1):
            a0, a1 = math.radians(-90 + side * 15), math.radians(-90 + side * 60)
            tip = math.radians(-90 + side * rng.uniform(25, 45))
            h = r * rng.uniform(1.5, 1.9)
            base = [(cx + r * math.cos(a) * 0.95, cy + r * math.sin(a) * 0.95) for a in (a0, a1)]
            apex = (cx + h * math.cos(tip), cy + h * math.sin(tip))
            d.polygon([base[0], apex, base[1]], fill=fur)
            d.polygon(_shrink([base[0], apex, base[1]], 0.55), fill=pink)
        nose_y = cy + 0.25 * r
        d.polygon([(cx - 0.1 * r, nose_y), (cx + 0.1 * r, nose_y), (cx, nose_y + 0.1 * r)], pink)
        whisker = dark if rng.random() < 0.5 else light
        for side in (-1, 1):
            for k in (-1, 0, 1):
                x0 = cx + side * 0.2 * r
                x1, y1 = x0 + side * 1.1 * r, nose_y + k * 0.25 * r
                d.line((x0, nose_y + 0.1 * r, x1, y1), fill=whisker, width=lw)
    else:
        d.ellipse(head, fill=fur)
        mx, my = cx, cy + r * rng.uniform(0.5, 0.65)
        d.ellipse((mx - 0.5 * r, my - 0.4 * r, mx + 0.5 * r, my + 0.45 * r), fill=light)
        if rng.random() < 0.6:
            d.ellipse((mx - 0.18 * r, my + 0.25 * r, mx + 0.18 * r, my + 0.8 * r), fill=pink)
            d.ellipse((mx - 0.5 * r, my - 0.4 * r, mx + 0.5 * r, my + 0.45 * r), fill=light)
        d.ellipse((mx - 0.2 * r, my - 0.35 * r, mx + 0.2 * r, my - 0.05 * r), fill=(20, 20, 20))
        for side in (-1, 1):
            ang = math.radians(side * rng.uniform(5, 25))
            ex, ey = cx + side * 0.95 * r, cy + 0.25 * r
            d.polygon(_ellipse(ex, ey, 0.28 * r, r * rng.uniform(0.7, 0.9), ang), fill=dark)
    for side in (-1, 1):  # eyes are shared by both classes
        ex, ey, er = cx + side * 0.4 * r, cy - 0.1 * r, 0.13 * r
        d.ellipse((ex - er, ey - er, ex + er, ey + er), fill=(20, 20, 20))
        d.ellipse((ex - er / 3, ey - er / 1.5, ex + er / 6, ey - er / 6), fill=(250, 250, 250))

    layer = layer.rotate(tilt, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    canvas.paste(layer, (0, 0), layer)
    img = canvas.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, noise, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def generate(root: Path, per_class: int = 200, size: int = 128, seed: int = 0) -> Path:
    """Write ``root/{cat,dog}/NNNNN.jpg``; deterministic, append-stable and idempotent.

    Each image gets its own generator seeded from (seed, class, index), so asking for more
    images later leaves the earlier files byte-identical, and existing files are skipped.
    """
    root = Path(root)
    for ci, label in enumerate(_FOLDERS):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i:05d}.jpg"
            if path.exists():
                continue
            rng = np.random.default_rng([seed, ci, i])
            tmp = path.with_suffix(".jpg.tmp")  # atomic: a killed run leaves no half-written jpg
            draw_animal(label, rng, size).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
    return root
