"""`prepare`: source -> cleaned manifest -> split -> cache, idempotent at every step.

Outputs in `out/`: `manifest.csv` (one row per source file, with its reason when rejected),
`summary.json` (counts, settings, `dataset_version`), `preprocessing.json` (what serving must do)
and `cache/<size>px/` (the training arrays). A second run with the same source and settings reuses
them all; a changed source re-cleans, a changed split or size only rebuilds what depends on it.

Folders `added` beside the source (users' labels, `python -m catsdogs_pl.data feedback-export`)
join it: their manifest rows start with `+1/`, `+2/`, ... Every source photo's split is a keyed hash
of its bytes, so the source's photos keep their split; the added photos join the training split
only. A photo already in the source is a duplicate (labelled otherwise: rejected, the source's label
stands), and one whose label contradicts a confident answer is rejected as `feedback_conflict`
(data/feedback.py).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from catsdogs_pl import preprocessing
from catsdogs_pl.contracts import Summary
from catsdogs_pl.data import cache, feedback, sources
from catsdogs_pl.data.cleaning import ADDED, Record, inspect, reject_conflicts_and_duplicates
from catsdogs_pl.data.split import SPLITS, assign_split, dataset_version
from catsdogs_pl.errors import ConfigError

log = logging.getLogger(__name__)
MANIFEST_COLUMNS = [f.name for f in dataclasses.fields(Record)]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the prepared dataset; recorded in summary.json."""

    image_size: int = 96
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    min_side: int = preprocessing.MIN_SIDE
    max_pixels: int = preprocessing.MAX_PIXELS

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size={self.image_size}: use a size between 16 and 1024 px")
        if (
            min(self.val_fraction, self.test_fraction) < 0
            or self.val_fraction + self.test_fraction >= 1
        ):
            raise ConfigError(
                f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}: "
                "each must be >= 0 and together < 1"
            )


def _fingerprint(files: list[sources.SourceFile], settings: Settings) -> str:
    """Changes when any file is added, removed, relabelled or rewritten, or the cleaning rules change."""
    h = hashlib.sha256(f"{settings.min_side}:{settings.max_pixels}".encode())
    for f in files:
        st = f.path.stat()
        h.update(f"\n{f.relpath}\t{f.label}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _resolve(
    source: Path, added: list[Path], out: Path
) -> tuple[Callable[[str], Path], list[sources.SourceFile], dict[str, str]]:
    """Where a manifest row's file is, every source file (the added folders' under `+k/`), and
    the rows whose label is not trusted, with why."""
    root, files = sources.resolve(source, out / "extracted")
    roots = {}
    distrusted = {}
    for k, folder in enumerate(added, start=1):
        extra_root, extra = sources.resolve(folder, out / f"extracted-{k}", classes_needed=1)
        prefix = f"{ADDED}{k}/"
        roots[prefix] = extra_root
        files += [dataclasses.replace(f, relpath=prefix + f.relpath) for f in extra]
        distrusted |= {prefix + rel: why for rel, why in feedback.conflicts(extra_root).items()}

    def where(relpath: str) -> Path:
        head, _, rest = relpath.partition("/")
        return roots[f"{head}/"] / rest if relpath.startswith(ADDED) else root / relpath

    return where, files, distrusted


def _inspect_all(
    where: Callable[[str], Path],
    records: list[Record],
    indices: list[int],
    settings: Settings,
    staging: Path,
    workers: int,
    progress: bool,
) -> None:
    """Hash, check and decode `records[indices]` in threads, writing pixels to `staging`.

    Threads, not processes: Pillow releases the GIL while decoding and resizing, so threads use
    every core without forking, pickling or copying records, on any OS.
    """
    with open(staging, "wb") as f:
        f.truncate(len(records) * settings.image_size**2 * 3)  # sparse until rows are written
    limits = {"min_side": settings.min_side, "max_pixels": settings.max_pixels}

    def work(i: int) -> Record:
        return inspect(
            where(records[i].relpath), records[i], settings.image_size, staging, i, limits
        )

    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(work, indices)
        for _ in tqdm(done, total=len(indices), desc="decode", unit="img", disable=not progress):
            pass


def read_manifest(path: Path) -> list[Record]:
    with open(path, newline="") as f:
        return [
            Record(**{**row, "width": int(row["width"]), "height": int(row["height"])})
            for row in csv.DictReader(f)
        ]


def _write_manifest(path: Path, records: list[Record]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in records)
    tmp.replace(path)


def _summarise(source: str, records: list[Record], settings: Settings, fingerprint: str) -> Summary:
    kept = [r for r in records if r.status == "kept"]
    classes = sorted({r.label for r in kept})
    splits = {
        s: {c: sum(r.split == s and r.label == c for r in kept) for c in classes} for s in SPLITS
    }
    return Summary(
        dataset_version=dataset_version((r.sha256, r.label, r.split) for r in kept),
        source=source,
        classes=tuple(classes),
        files=len(records),
        kept=len(kept),
        rejected=len(records) - len(kept),
        by_label={
            label: dict(Counter(r.status for r in records if r.label == label))
            for label in sorted({r.label for r in records})
        },
        by_reason=dict(sorted(Counter(r.reason for r in records if r.reason).items())),
        splits={s: {**counts, "total": sum(counts.values())} for s, counts in splits.items()},
        settings=dataclasses.asdict(settings),
        source_fingerprint=fingerprint,
    )


def prepare(
    source: Path | str,
    out: Path | str,
    settings: Settings | None = None,
    workers: int | None = None,
    progress: bool = True,
    added: list[Path] | None = None,
) -> Summary:
    """Run every step that is not already done for this source (and `added` folders) and
    settings; return the summary."""
    settings = settings or Settings()
    source, out, added = Path(source), Path(out), [Path(a) for a in added or []]
    workers = workers or 2 * len(os.sched_getaffinity(0))  # 2 per core also hides file reads
    out.mkdir(parents=True, exist_ok=True)
    where, files, distrusted = _resolve(source, added, out)
    fingerprint = _fingerprint(files, settings)
    manifest_path = out / "manifest.csv"
    old = _last_fingerprint(out)
    staging = out / f"staging-{settings.image_size}px.u8"
    staged = False
    if old == fingerprint and manifest_path.exists():
        records = read_manifest(manifest_path)
    else:
        records = [Record(f.relpath, f.label) for f in files]
        _inspect_all(
            where, records, list(range(len(records))), settings, staging, workers, progress
        )
        reject_conflicts_and_duplicates(records)
        for rec in records:
            if rec.status == "kept" and rec.relpath in distrusted:
                rec.reject("feedback_conflict", distrusted[rec.relpath])
        staged = True
    for rec in records:
        if rec.status == "kept":  # users' labels train only: val and test stay the source's,
            # so the accuracy a version reports (and the gate) is measured on photos no user labelled
            rec.split = (
                "train"
                if rec.relpath.startswith(ADDED)
                else assign_split(
                    rec.sha256, settings.split_seed, settings.val_fraction, settings.test_fraction
                )
            )
    described = " + ".join(str(p) for p in (source, *added))
    summary = _summarise(described, records, settings, fingerprint)
    if len(summary.classes) < 2:
        raise sources.SourceError(
            f"{source}: after cleaning only {list(summary.classes)} has usable images; "
            "a classifier needs at least two classes"
        )
    problem = cache.check(out, summary.dataset_version, settings.image_size)
    current = not staged and problem is None
    damaged = problem if problem and "checksum" in problem else None  # never train on it
    if damaged:
        log.warning("%s: rebuilding the cache", problem)
    reused = {"cleaning": not staged, "cache": current}
    summary = dataclasses.replace(summary, reused=reused, cache_rebuilt_because=damaged)
    if not current:
        if not staged:  # manifest reused, but the cache is for another size or split: decode kept
            kept = [i for i, r in enumerate(records) if r.status == "kept"]
            _inspect_all(where, records, kept, settings, staging, workers, progress)
        cache.build(
            out,
            records,
            list(summary.classes),
            settings.image_size,
            staging,
            summary.dataset_version,
        )
    staging.unlink(missing_ok=True)
    _write_manifest(manifest_path, records)
    summary.write(out)
    limits = {"min_side": settings.min_side, "max_pixels": settings.max_pixels}
    preprocessing.spec(settings.image_size, list(summary.classes), **limits).write(out)
    return summary


def _last_fingerprint(out: Path) -> str | None:
    """The source fingerprint of the last prepare into `out` (None: none, or unreadable)."""
    try:
        return Summary.read(out).source_fingerprint
    except (OSError, ConfigError):
        return None


def report(summary: Summary, out: Path) -> str:
    """A cleaning report a person can read at the end of `prepare`."""
    lines = [
        f"files: {summary.files}  kept: {summary.kept}  rejected: {summary.rejected}",
        "kept by class: "
        + ", ".join(f"{c}={v.get('kept', 0)}" for c, v in summary.by_label.items()),
    ]
    lines += [f"  rejected, {reason}: {n}" for reason, n in summary.by_reason.items()]
    for split, counts in summary.splits.items():
        lines.append(f"{split:>5}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    reused = [name for name, flag in summary.reused.items() if flag]
    if summary.cache_rebuilt_because:
        lines.append(f"cache rebuilt: {summary.cache_rebuilt_because}")
    lines += [
        f"dataset_version: {summary.dataset_version}",
        f"reused from the last run: {', '.join(reused) or 'nothing'}",
        f"manifest: {out / 'manifest.csv'}  (rejected rows carry reason and detail)",
        f"cache: {cache.cache_dir(out, summary.image_size)}",
    ]
    return "\n".join(lines)
