"""Soak of the capture store: 20,000 captures of realistic sizes through the shipped bounds, with
users labelling 5 % of them, the old eviction rule replayed beside it. Prints JSON figures.

Sizes: 90 % web photos (lognormal, median 40 kB), 10 % phone photos (median 2.5 MB). The workers
prune every PRUNE_S (10 s); at 10 captures per second that is every 100 captures, which is when
this replays a prune. Figures: labels lost (given, then gone before they expired), the disk held
against `capture_max_mb` (after each prune, and at most just before one), and the CPU seconds of
reading the store: a worker's prune and a monitor's round, today's (one listing, only labelled
records read) against the old rule's (every record read, oldest evicted labelled or not), on the
same store.

Usage: python bench/capture_soak.py [--captures 20000] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from pathlib import Path

from catsdogs_pl.capture import Capture, Feedback, Limits, Store
from catsdogs_pl.monitoring import feedback

PRUNE_EVERY = 100  # captures between two prunes: PRUNE_S (10 s) at 10 captures per second
LABELLED = 0.05


def size(draw: random.Random) -> int:
    median = 2_500_000 if draw.random() < 0.10 else 40_000
    sigma = 0.3 if median > 1_000_000 else 0.6
    return max(2_000, int(draw.lognormvariate(0.0, sigma) * median))


def old_prune(store: Store) -> int:
    """The eviction of landed main before issue 33: every record read, the oldest removed until
    the images fit max_bytes, labelled or not."""
    kept = store.captures()
    total = sum(c.size for c in kept)
    removed = 0
    while kept and total > store.limits.max_bytes:
        total -= kept[0].size
        store._remove(kept.pop(0).id)
        removed += 1
    return removed


def old_round(store: Store) -> int:
    """The monitor's read of landed main, at every scrape: every record and every label file."""
    return sum(store.feedback(c.id) is not None for c in store.captures())


def soak(folder: Path, captures: int, prune: object, seed: int = 0) -> dict[str, float]:
    draw = random.Random(seed)
    limits = Limits(fraction=1.0)  # the shipped bounds: 1000 MB, 1000 MB of labelled, 30 days
    store = Store(folder, limits)
    store.next_prune = float("inf")  # the replayed prunes below, not the handler's thread
    payload = random.Random(seed).randbytes(4_000_000)
    given: set[str] = set()
    peak_before = peak_after = 0
    cpu_prune = 0.0
    start = time.time() - captures  # one capture a second of capture time, none expires
    for k in range(captures):
        n = size(draw)
        answer = Capture(uuid.uuid4().hex, "1", "cat", {"cat": 0.7, "dog": 0.3}, start + k)
        store.keep(answer, payload[:n])
        if draw.random() < LABELLED:
            store.set_feedback(answer.id, Feedback("dog", giver="soak"))
            given.add(answer.id)
        if (k + 1) % PRUNE_EVERY == 0:
            unlabelled = sum(e.size for e in store.index() if e.id not in given)
            peak_before = max(peak_before, unlabelled)
            t = time.process_time()
            prune(store)  # type: ignore[operator]
            cpu_prune = time.process_time() - t
            unlabelled = sum(e.size for e in store.index() if e.id not in given)
            peak_after = max(peak_after, unlabelled)
    lost = sum(store.feedback(i) is None for i in given)
    entries = store.index()
    return {
        "captures": captures,
        "labels given": len(given),
        "labels lost": lost,
        "kept": len(entries),
        "unlabelled MB after a prune, at most": round(peak_after / 1e6, 1),
        "unlabelled MB just before a prune, at most": round(peak_before / 1e6, 1),
        "bound MB": limits.max_bytes / 1e6,
        "labelled MB": round(sum(e.size for e in entries if e.labelled) / 1e6, 1),
        "last prune CPU s": round(cpu_prune, 4),
        "disk MB": round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1),
    }


def round_cpu(store: Store, reader: object, times: int = 5) -> float:
    t = time.process_time()
    for _ in range(times):
        reader(store)  # type: ignore[operator]
    return round((time.process_time() - t) / times, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, help="where the stores go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        today = soak(Path(tmp) / "today", args.captures, Store.prune)
        old = soak(Path(tmp) / "old", args.captures, old_prune)
        store = Store(Path(tmp) / "today", Limits())  # both readers on this one store
        cpu = {
            "worker prune, today (one listing)": round_cpu(store, Store.prune),
            "worker prune, old rule (every record)": round_cpu(store, Store.captures),
            "monitor round, today (labelled only)": round_cpu(
                store, lambda s: (feedback.tally(s), feedback.store_gauges(s))
            ),
            "monitor scrape, old rule (every record)": round_cpu(store, old_round),
        }
    cpu["ratio prune old/today"] = round(
        cpu["worker prune, old rule (every record)"]
        / max(cpu["worker prune, today (one listing)"], 1e-6),
        1,
    )
    cpu["ratio monitor old/today"] = round(
        cpu["monitor scrape, old rule (every record)"]
        / max(cpu["monitor round, today (labelled only)"], 1e-6),
        1,
    )
    figures = {
        "today": today,
        "old rule, same captures": old,
        f"CPU s on {today['kept']} captures": cpu,
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
