"""`python -m catsdogs_pl.training.robustness`: a registered version scored on the test split under
the shifts users' photos have (cropped, recompressed, darker, greyscale, tilted, resized elsewhere).

Each shift acts on the ORIGINAL bytes of a test photo, the way a user's upload differs from what
the model was trained on, and is followed by the serving decode (`preprocessing.decode`), so `none`
is exactly what TorchServe does with the original file. The table goes to stdout (text and JSON)
and, for the whole test split (no --limit), to the version's MLflow run: metrics
`robustness/<shift>`, artifact `robustness/table.json`.
The version's `data/dataset_version` must be the prepared data's: on another split the figures
would include training photos.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow import MlflowClient
from PIL import Image, ImageEnhance, ImageOps

from catsdogs_pl import config, preprocessing, registry, servable
from catsdogs_pl.contracts import Preprocessing, Summary
from catsdogs_pl.data import sources
from catsdogs_pl.data.prepare import read_manifest
from catsdogs_pl.errors import ConfigError, MissingError, exit_code
from catsdogs_pl.predictor import Predictor

PARAM = "data/dataset_version"
ARTIFACT = "robustness/table.json"
BATCH = 64

Shift = Callable[[Image.Image, int], Image.Image]  # (the opened upload, model size) -> upload


def _upright(img: Image.Image) -> Image.Image:
    """The upload as its owner sees it: decoded at full size, EXIF-rotated, RGB."""
    img = ImageOps.exif_transpose(img)
    return img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    img = _upright(img)
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def _jpeg(quality: int) -> Shift:
    def shift(img: Image.Image, size: int) -> Image.Image:
        buf = io.BytesIO()
        _upright(img).save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))  # lazy, so the decode drafts it as served

    return shift


def _enhance(kind: Callable[[Image.Image], Any], factor: float) -> Shift:
    return lambda img, size: kind(_upright(img)).enhance(factor)


def _greyscale(img: Image.Image, size: int) -> Image.Image:
    return _upright(img).convert("L").convert("RGB")  # as phones save it: grey pixels, RGB file


def _rotate(degrees: float) -> Shift:
    """A tilted shot: same frame, corners filled black (PIL: positive is counter-clockwise)."""
    return lambda img, size: _upright(img).rotate(degrees, Image.Resampling.BILINEAR)


def _resize(method: Image.Resampling) -> Shift:
    """Resized to the model's size by another program's filter; the serving resize is then a no-op."""
    return lambda img, size: _upright(img).resize((size, size), method)


SHIFTS: dict[str, Shift] = {
    "none": lambda img, size: img,  # the upload untouched: exactly the served decode
    "center_crop": _center_crop,
    "jpeg_q30": _jpeg(30),
    "jpeg_q60": _jpeg(60),
    "brighter_1.4": _enhance(ImageEnhance.Brightness, 1.4),
    "darker_0.6": _enhance(ImageEnhance.Brightness, 0.6),
    "contrast_0.6": _enhance(ImageEnhance.Contrast, 0.6),
    "greyscale": _greyscale,
    "rotate_10": _rotate(10),
    "rotate_-10": _rotate(-10),
    "resize_nearest": _resize(Image.Resampling.NEAREST),
    "resize_bicubic": _resize(Image.Resampling.BICUBIC),
}


def prepared_command(data_dir: Path) -> str:
    return f"python -m catsdogs_pl.data prepare --source <archive or folder> --out {data_dir}"


def read_prepared(data_dir: Path) -> Summary:
    """summary.json of the prepared data, or MissingError naming the command that writes it."""
    for name in (Summary.FILE, "manifest.csv"):
        if not (data_dir / name).is_file():
            raise MissingError(
                f"{data_dir / name} not found: prepare the data first ({prepared_command(data_dir)})"
            )
    return Summary.read(data_dir)


def source_root(data_dir: Path, summary: Summary) -> Path:
    """The folder the manifest's relpaths are relative to, as prepare resolved it: the source
    folder itself, or prepare's extraction of the archive under `data_dir/extracted` (reused)."""
    source = Path(summary.source)
    if source.is_dir():
        return source
    if source.is_file():
        return sources.extract(source, data_dir / "extracted")
    raise MissingError(
        f"{source}, the source {data_dir} was prepared from, is gone: the test photos' original "
        "bytes are read from it; put it back there"
    )


def load_test_photos(
    data_dir: Path, summary: dict[str, Any], classes: list[str], limit: int | None = None
) -> list[tuple[Path, int, str]]:
    """(file, class index, sha256) of the kept test photos in manifest order; with `limit`, the
    first limit // len(classes) of each class."""
    rows = [
        r
        for r in read_manifest(data_dir / "manifest.csv")
        if r.split == "test" and r.status == "kept"
    ]
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise ConfigError(
            f"{data_dir} has test photos of {unknown}, not classes of the model {classes}"
        )
    if limit is not None:
        per_class = max(1, limit // len(classes))
        rows = [r for c in classes for r in [r for r in rows if r.label == c][:per_class]]
    if not rows:
        raise MissingError(f"{data_dir} has no kept test photos: prepare with a test_fraction > 0")
    root = source_root(data_dir, summary)
    return [(root / r.relpath, classes.index(r.label), r.sha256) for r in rows]


def check_dataset_version(client: MlflowClient, run_id: str, summary: Summary) -> None:
    """The version was tested on the same split as the prepared data, or ConfigError naming both."""
    trained = client.get_run(run_id).data.params.get(PARAM)
    prepared = summary.dataset_version
    if trained != prepared:
        raise ConfigError(
            f"run {run_id} was trained on dataset_version {trained} ({PARAM}), the prepared data "
            f"is dataset_version {prepared}: its test split would include other photos; pass the "
            "--data-dir the version was trained on"
        )


def decode_all(path: Path, sha256: str, predictor: Predictor) -> list[np.ndarray | None]:
    """One photo under every shift (None where a shifted upload fails to decode)."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"{path} changed since it was prepared: prepare the data again")
    out: list[np.ndarray | None] = []
    for shift in SHIFTS.values():
        try:
            out.append(predictor.pixels(shift(predictor.open(data), predictor.pre.image_size)))
        except preprocessing.BadImage:
            out.append(None)
    return out


def evaluate(
    net: torch.nn.Module,
    pre: Preprocessing,
    photos: list[tuple[Path, int, str]],
    workers: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Accuracy per shift (overall, per class, its delta to `none`, uploads that failed to decode,
    which count as wrong), reading each photo once and decoding it in threads."""
    predictor, classes = Predictor(net, pre), list(pre.classes)
    labels = np.array([label for _, label, _ in photos])
    preds = np.full((len(SHIFTS), len(photos)), -1)
    workers = workers or min(16, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        for start in range(0, len(photos), BATCH):
            chunk = photos[start : start + BATCH]
            decoded = list(pool.map(lambda p: decode_all(p[0], p[2], predictor), chunk))
            for s in range(len(SHIFTS)):
                ok = [i for i, images in enumerate(decoded) if images[s] is not None]
                if ok:
                    found = predictor.logits(np.stack([decoded[i][s] for i in ok])).argmax(1)
                    preds[s, [start + i for i in ok]] = found
    table: dict[str, dict[str, Any]] = {}
    for s, name in enumerate(SHIFTS):
        right = preds[s] == labels
        table[name] = {
            "accuracy": float(right.mean()),
            "per_class": {c: float(right[labels == i].mean()) for i, c in enumerate(classes)},
            "failed": int((preds[s] == -1).sum()),
        }
    for row in table.values():
        row["delta"] = row["accuracy"] - table["none"]["accuracy"]
    return table


def format_table(result: dict[str, Any]) -> str:
    """The table a person reads: one line per shift."""
    classes = list(result["photos_per_class"])
    lines = [
        f"== robustness of {result['registered_model']} v{result['model_version']}: "
        f"{result['photos']} test photos of dataset {result['dataset_version']} ==",
        f"{'shift':<16}{'accuracy':>9}{'delta':>8}"
        + "".join(f"{c:>8}" for c in classes)
        + f"{'failed':>8}",
    ]
    for name, row in result["shifts"].items():
        lines.append(
            f"{name:<16}{row['accuracy']:>9.4f}{row['delta']:>+8.4f}"
            + "".join(f"{row['per_class'][c]:>8.4f}" for c in classes)
            + f"{row['failed']:>8}"
        )
    return "\n".join(lines)


def data_dir_of(path: Path) -> Path:
    """`data.data_dir` of the fit config as fit reads it (configs/base.yaml names the default)."""
    return Path(config.load(path)["data"]["data_dir"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.training.robustness", description=__doc__
    )
    registry.add_version_arguments(parser)
    parser.add_argument(
        "--data-dir", type=Path, help="the prepared data (default: the config's data.data_dir)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="at most this many test photos (the first limit/2 per class); a quick look, not "
        "logged to MLflow",
    )
    parser.add_argument(
        "--no-flip-tta",
        action="store_true",
        help="score without the flip test-time augmentation the version serves with (what it "
        "buys); not logged to MLflow",
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: use a positive number of photos")
    store = registry.store_of(args)
    data_dir = args.data_dir or data_dir_of(args.config)
    summary = read_prepared(data_dir)
    client = registry.client(store)
    version, run_id = registry.resolve_version(
        client, store.registered_model, args.model_version, args.alias, args.run_id
    )
    check_dataset_version(client, run_id, summary)
    with tempfile.TemporaryDirectory() as tmp:
        net, pre = servable.load(Path(client.download_artifacts(run_id, "servable", tmp)))
    if args.no_flip_tta:
        net.flip_tta = False
    photos = load_test_photos(data_dir, summary, list(pre.classes), args.limit)
    shifts = evaluate(net, pre, photos)
    labels = [label for _, label, _ in photos]
    result = {
        "registered_model": store.registered_model,
        "model_version": version,
        "run_id": run_id,
        "dataset_version": summary.dataset_version,
        "photos": len(photos),
        "photos_per_class": {c: labels.count(i) for i, c in enumerate(pre.classes)},
        "limit": args.limit,
        "flip_tta": net.flip_tta,
        "shifts": shifts,
    }
    print(format_table(result))
    print(json.dumps(result, indent=2))
    if args.limit is not None or args.no_flip_tta:  # not the version's figures as served
        return 0
    for name, row in shifts.items():
        client.log_metric(run_id, f"robustness/{name}", row["accuracy"])
    client.log_dict(run_id, result, ARTIFACT)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
