"""`python -m catsdogs_pl.data {download,prepare,synthetic}`: the data stage from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catsdogs_pl.data import download, synthetic
from catsdogs_pl.data.prepare import Settings, prepare, report
from catsdogs_pl.data.sources import SourceError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m catsdogs_pl.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="fetch Microsoft's Kaggle PetImages archive (786 MB)")
    dl.add_argument("--dest", type=Path, default=Path("data"), help="folder for the archive")
    dl.add_argument("--url", default=download.KAGGLE_URL)

    prep = sub.add_parser("prepare", help="clean, split and cache an archive or class folders")
    prep.add_argument("--source", type=Path, required=True, help="archive or folder of classes")
    prep.add_argument("--out", type=Path, default=Path("data/prepared"), help="output folder")
    defaults = Settings()
    prep.add_argument("--image-size", type=int, default=defaults.image_size)
    prep.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    prep.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    prep.add_argument("--split-seed", type=int, default=defaults.split_seed)
    prep.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    syn = sub.add_parser("synthetic", help="draw cat-like and dog-like pictures for demos/tests")
    syn.add_argument("--out", type=Path, default=Path("data/synthetic"))
    syn.add_argument("--per-class", type=int, default=300)
    syn.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "download":
            path = download.download(args.url, args.dest)
            print(
                f"archive ready: {path}\nnext: python -m catsdogs_pl.data prepare --source {path}"
            )
        elif args.command == "prepare":
            settings = Settings(
                image_size=args.image_size,
                val_fraction=args.val_fraction,
                test_fraction=args.test_fraction,
                split_seed=args.split_seed,
            )
            summary = prepare(args.source, args.out, settings, workers=args.workers)
            print(report(summary, args.out))
        else:
            root = synthetic.generate(args.out, per_class=args.per_class, seed=args.seed)
            print(f"synthetic images in {root}")
    except (SourceError, ValueError, download.DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
