"""`python -m catsdogs_pl.data {download,prepare,synthetic,feedback-export}`: the data stage from the
command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from catsdogs_pl import config, places
from catsdogs_pl.capture import Store
from catsdogs_pl.data import download, feedback, synthetic
from catsdogs_pl.data.prepare import Settings, prepare, report
from catsdogs_pl.errors import exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m catsdogs_pl.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="fetch Microsoft's Kaggle PetImages archive (786 MB)")
    dl.add_argument("--dest", type=Path, default=Path("data"), help="folder for the archive")
    dl.add_argument("--url", default=download.KAGGLE_URL)

    prep = sub.add_parser("prepare", help="clean, split and cache an archive or class folders")
    prep.add_argument("--source", type=Path, required=True, help="archive or folder of classes")
    prep.add_argument(
        "--add",
        type=Path,
        action="append",
        default=[],
        help="a folder of class sub-folders joining the source (users' labels: feedback-export)",
    )
    out = Path(config.load()["data"]["data_dir"])  # base.yaml's, where fit looks by default
    prep.add_argument("--out", type=Path, default=out, help=f"output folder (default: {out})")
    for field in dataclasses.fields(Settings):  # the DataModule's `settings`, option for option
        option = "--" + field.name.replace("_", "-")
        prep.add_argument(option, type=type(field.default), default=field.default)
    prep.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    exp = sub.add_parser("feedback-export", help="users' labelled captures as class folders")
    exp.add_argument("--out", type=Path, required=True, help="folder for <class>/<id>.jpg")
    exp.add_argument(
        "--max-giver-share",
        type=float,
        default=feedback.MAX_SHARE,
        help=f"of the export, at most this from one labeller (default {feedback.MAX_SHARE}; "
        "1: a single labeller's all)",
    )

    syn = sub.add_parser("synthetic", help="draw cat-like and dog-like pictures for demos/tests")
    syn.add_argument("--out", type=Path, default=Path("data/synthetic"))
    syn.add_argument("--per-class", type=int, default=300)
    syn.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "download":
        path = download.download(args.url, args.dest)
        print(f"archive ready: {path}\nnext: python -m catsdogs_pl.data prepare --source {path}")
    elif args.command == "prepare":
        settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
        summary = prepare(args.source, args.out, settings, workers=args.workers, added=args.add)
        print(report(summary, args.out))
    elif args.command == "feedback-export":
        store = Store.reader(places.captures())
        print(
            f"labelled captures in {args.out}: {feedback.export(store, args.out, args.max_giver_share)}"
        )
        print(f"next: python -m catsdogs_pl.data prepare --source SOURCE --add {args.out}")
    else:
        root = synthetic.generate(args.out, per_class=args.per_class, seed=args.seed)
        print(f"synthetic images in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
