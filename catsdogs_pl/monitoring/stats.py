"""Statistics of each image and each prediction, counted in fixed buckets: one code path for the
handler (every served image) and fit (the validation reference), so that the served and the
reference histograms compare bucket for bucket.

numpy only: the `.mar` ships this file as `catsdogs_stats.py` beside the handler.
"""

from __future__ import annotations

import numpy as np

# The one Prometheus family of these histograms: CatsDogsStatistic_bucket{statistic, le, ...}.
METRIC = "CatsDogsStatistic"

# Upper bucket edges (Prometheus `le`), chosen once: changing them makes old references
# incomparable. Image statistics are computed on the decoded, resized image the model sees.
EDGES: dict[str, tuple[float, ...]] = {
    # mean luma, 0..255
    "brightness": (32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224),
    # standard deviation of luma
    "contrast": (16, 24, 32, 40, 48, 56, 64, 72, 80, 96),
    # Hasler and Suesstrunk's colourfulness: 0 for a greyscale picture
    "colourfulness": (5, 10, 15, 20, 30, 40, 50, 60, 80, 100),
    # variance of the 4-neighbour Laplacian of luma: blur lowers it, noise raises it
    "sharpness": (25, 50, 100, 200, 400, 800, 1600, 3200, 6400),
    # width / height of the uploaded picture, as stored (before the EXIF rotation)
    "aspect_ratio": (0.5, 0.67, 0.75, 0.8, 0.9, 1.0, 1.12, 1.25, 1.34, 1.5, 2.0),
    # width x height of the uploaded picture, in megapixels
    "megapixels": (0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 4, 12),
    # the predicted class's probability
    "confidence": (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98),
    # the predicted class's probability minus the runner-up's
    "margin": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.96),
}
IMAGE = ("brightness", "contrast", "colourfulness", "sharpness", "aspect_ratio", "megapixels")
PREDICTION = ("confidence", "margin")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_statistics(images: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of `images` (N x H x W x 3 uint8, as decoded for the model) and `sizes`
    (N x 2: the uploaded width and height): one value per statistic of IMAGE."""
    x = images.astype(np.float32)
    luma = x @ _LUMA
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    spread = np.sqrt(rg.var(axis=(1, 2)) + yb.var(axis=(1, 2)))
    offset = np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2)
    laplacian = (
        4 * luma[:, 1:-1, 1:-1]
        - luma[:, :-2, 1:-1]
        - luma[:, 2:, 1:-1]
        - luma[:, 1:-1, :-2]
        - luma[:, 1:-1, 2:]
    )
    width, height = np.asarray(sizes, dtype=np.float64).reshape(-1, 2).T
    return {
        "brightness": luma.mean(axis=(1, 2)),
        "contrast": luma.std(axis=(1, 2)),
        "colourfulness": spread + 0.3 * offset,
        "sharpness": laplacian.var(axis=(1, 2)),
        "aspect_ratio": width / height,
        "megapixels": width * height / 1e6,
    }


def prediction_statistics(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of class probabilities (N x classes): one value per statistic of PREDICTION."""
    top = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)
    return {"confidence": top[:, -1], "margin": top[:, -1] - top[:, -2]}


def bucket_counts(statistic: str, values: np.ndarray) -> np.ndarray:
    """How many `values` fall in each bucket of `statistic`: len(EDGES) + 1 counts, bucket i
    holding EDGES[i-1] < value <= EDGES[i] (the last one: above every edge)."""
    edges = EDGES[statistic]
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)


def histograms(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bucket_counts of every statistic in `values`."""
    return {name: bucket_counts(name, v) for name, v in values.items()}


def le_labels(statistic: str) -> list[str]:
    """The Prometheus `le` label of each bucket of `statistic`, '+Inf' last."""
    return [f"{edge:g}" for edge in EDGES[statistic]] + ["+Inf"]


def cumulative(found: dict[str, np.ndarray]) -> list[tuple[str, str, int]]:
    """(statistic, le, count) of every bucket of `histograms`' counts, cumulative as a
    Prometheus histogram's `_bucket` series are: what both servers add to METRIC_bucket."""
    return [
        (name, le, count)
        for name, counts in found.items()
        for le, count in zip(le_labels(name), np.cumsum(counts).tolist(), strict=True)
    ]
