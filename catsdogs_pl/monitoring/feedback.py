"""Users' labels for served answers: what a photo really was, named by the answer's id.

Only captured answers can be labelled: the capture store keeps the photo a label is about, and the
label becomes training data (`python -m catsdogs_pl.data feedback-export`). The classes a label may
name are the ones the answer's version was trained on (its probabilities' keys). One function,
`give`, decides for `POST /feedback` on the monitor's port (with a labeller's key: labellers.py)
and for `python -m catsdogs_pl.feedback add FILE.csv --giver NAME` alike; every label names its
giver, and each giver has a rate bound of its own.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from catsdogs_pl import capture, errors, places
from catsdogs_pl.capture import Feedback, Gone, LabelStoreFull, Review, Store
from catsdogs_pl.monitoring import labellers
from catsdogs_pl.serving import torchserve as ts

RATE_PER_S = 10.0  # POST /feedback accepted per second and giver, after a burst of BURST: then 429
BURST = 200
OUTCOMES = (  # catsdogs_feedback_total{outcome}: what became of each POST /feedback
    "recorded",
    "unauthorized",
    "rate_limited",
    "malformed",
    "not_captured",
    "bad_label",
    "label_store_full",
)


class Refused(Exception):
    """Feedback that is not recorded: `status` is its HTTP code, `outcome` one of OUTCOMES, the
    message says why."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status, self.outcome = status, outcome


def give(store: Store, answer_id: str, label: str, giver: str) -> dict[str, Any]:
    """Record `giver`'s `label` for the captured answer `answer_id`; the later label of an id
    stands."""
    gone = Refused(
        404,
        "not_captured",
        f"no captured answer {answer_id[:64]!r}: only captured answers can be labelled "
        "(config.properties capture_fraction), and the oldest are removed "
        "(capture_max_age_days, capture_max_mb)",
    )
    found = store.get(answer_id)
    if found is None:
        raise gone
    classes = sorted(found.probabilities)
    if label not in classes:
        raise Refused(400, "bad_label", f"label {label[:64]!r}: use one of {', '.join(classes)}")
    try:
        before = store.set_feedback(answer_id, Feedback(label, giver=giver))
    except Gone:
        raise gone from None
    except LabelStoreFull as exc:
        message = f"label store full, label not recorded: {exc}"
        raise Refused(507, "label_store_full", message) from exc
    return {
        "id": answer_id,
        "label": label,
        "answered": found.label,
        "replaced": before.label if before else None,  # the same id again: this label stands
        "giver": giver,
    }


def review(store: Store, answer_id: str, decision: str, reviewer: str) -> str:
    """Record a reviewer's `decision` on a labelled capture: "keep" (its label), "drop", or a
    class name (relabelled); every later export applies it. Says what was decided."""
    found, given = store.get(answer_id), store.feedback(answer_id)
    if found is None or given is None:
        raise errors.ConfigError(f"no labelled capture {answer_id[:64]!r} to review")
    classes = sorted(found.probabilities)
    if decision not in ("keep", "drop", *classes):
        raise errors.ConfigError(f"decision {decision!r}: use keep, drop or one of {classes}")
    label = {"keep": given.label, "drop": None}.get(decision, decision)
    try:
        store.set_review(answer_id, Review(label, reviewer))
    except Gone:
        raise errors.ConfigError(f"capture {answer_id} was removed meanwhile") from None
    verdict = "dropped" if label is None else f"trains as {label}"
    return f"{answer_id}: {verdict} (labelled {given.label}, answered {found.label}; by {reviewer})"


LABELLED = {  # the monitor's gauges of users' labels, per served version, over its window
    "catsdogs_labelled_answers": "Captured answers that users labelled (POST /feedback)",
    "catsdogs_labelled_correct": "Labelled answers the version got right",
    "catsdogs_labelled_accuracy": "Accuracy on users' labels (a sample users chose to label)",
}


@dataclass
class Tally:
    """Labelled and correct answers of one version."""

    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else float("nan")


def tally(store: Store, since: float = 0.0) -> dict[str, Tally]:
    """Per version, the answers labelled at or after `since` (a Unix time): by the label's time,
    so a label given late counts when it comes."""
    found: dict[str, Tally] = {}
    for answer, given in store.labelled():
        if given.time >= since:
            counts = found.setdefault(answer.version, Tally())
            counts.labelled += 1
            counts.correct += given.label == answer.label
    return found


def gauges(tallies: dict[str, Tally]) -> str:
    """Prometheus text of LABELLED."""
    values = {name: [] for name in LABELLED}
    for version, t in sorted(tallies.items()):
        for name, value in zip(LABELLED, (t.labelled, t.correct, t.accuracy), strict=True):
            values[name].append(f'{name}{{model_version="{version}"}} {value:.10g}')
    lines = []
    for name, help_text in LABELLED.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *values[name]]
    return "\n".join(lines) + "\n"


def report(tallies: dict[str, Tally]) -> str:
    """The monitor's lines about users' labels."""
    if not tallies:
        return "labelled answers: none yet (POST /feedback, python -m catsdogs_pl.feedback)"
    return "\n".join(
        f"labelled answers of v{v}: {t.correct}/{t.labelled} right, accuracy {t.accuracy:.3f}"
        for v, t in sorted(tallies.items())
    )


STORE = {  # the monitor's gauges of the capture store's fill
    "catsdogs_label_store_bytes": "Bytes of labelled photos (capture_label_max_mb bounds them)",
    "catsdogs_label_store_max_bytes": "Labelled photos' bound: past it, new labels get 507",
    "catsdogs_captures": "Captures kept, labelled or not",
}


def store_gauges(store: Store) -> str:
    """Prometheus text of STORE: labelled photos against their bound, and the captures kept."""
    entries = store.index()
    labelled = [e for e in entries if e.labelled]
    samples = {  # what follows each name on its sample lines
        "catsdogs_label_store_bytes": [f" {sum(e.size for e in labelled)}"],
        "catsdogs_label_store_max_bytes": [f" {store.limits.max_label_bytes}"],
        "catsdogs_captures": [
            f'{{labelled="true"}} {len(labelled)}',
            f'{{labelled="false"}} {len(entries) - len(labelled)}',
        ],
    }
    lines = []
    for name, help_text in STORE.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [name + sample for sample in samples[name]]
    return "\n".join(lines) + "\n"


def labels_round(store: Store, since: float) -> tuple[str, str]:
    """The monitor's round of labels, once per interval: the capture bounds applied (so photos go
    at their age without traffic too), then its report line and the gauges of the labels given
    since `since` and of the store's fill."""
    try:
        pruned = f"{store.prune()} captures past their bounds removed"
    except OSError as exc:  # e.g. a read-only capture folder: say so, keep monitoring
        pruned = f"cannot prune {store.folder} ({exc}): python -m catsdogs_pl.feedback prune"
    tallies = tally(store, since)
    return f"{report(tallies)}; {pruned}", gauges(tallies) + store_gauges(store)


class Outcomes:
    """Counts of what became of each POST /feedback, by outcome (OUTCOMES)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.lock = threading.Lock()

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1

    def text(self) -> str:
        name = "catsdogs_feedback_total"
        lines = [f"# HELP {name} POST /feedback by outcome", f"# TYPE {name} counter"]
        lines += [f'{name}{{outcome="{k}"}} {n}' for k, n in self.counts.items()]
        return "\n".join(lines) + "\n"


class Bucket:
    """A token bucket: `take()` is False once more than BURST came faster than RATE_PER_S."""

    def __init__(self, rate: float = RATE_PER_S, burst: float = BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.when = burst, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.when) * self.rate)
            self.when = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


def route(
    store: Store | None = None,
    outcomes: Outcomes | None = None,
    rate: float = RATE_PER_S,
    burst: float = BURST,
) -> Any:
    """The `POST /feedback` route for prometheus.expose: a labeller's key and `{"id": ...,
    "label": ...}` in, the recorded feedback or an error naming what was wrong out; each outcome
    counted in `outcomes`, each giver held to `rate` per second after `burst`."""
    outcomes = outcomes or Outcomes()
    buckets: dict[str, Bucket] = {}
    lock = threading.Lock()

    def post(read: Callable[[], bytes], headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            status, answer = decide(read, headers)
        except Refused as exc:
            status, answer = exc.status, {"error": str(exc)}
            outcomes.add(exc.outcome)
        else:
            outcomes.add("recorded")
        return status, answer

    def decide(read: Callable[[], bytes], headers: Mapping[str, str]) -> tuple[int, dict]:
        giver = labellers.giver(headers)  # before the body is read
        if giver is None:
            raise Refused(
                401,
                "unauthorized",
                "send a labeller's key (Authorization: Bearer <key>; the inference key is not "
                "one): python -m catsdogs_pl.feedback labeller add NAME prints one",
            )
        with lock:
            bucket = buckets.setdefault(giver, Bucket(rate, burst))
        if not bucket.take():
            message = f"{giver}: over {rate:g} labels per second"
            raise Refused(429, "rate_limited", message)
        try:
            sent = json.loads(read())
        except ValueError:
            sent = None
        if not (isinstance(sent, dict) and isinstance(sent.get("id"), str)):
            message = 'send a JSON object {"id": "<answer id>", "label": "cat"}'
            raise Refused(400, "malformed", message)
        if not isinstance(sent.get("label"), str):
            raise Refused(400, "malformed", 'the "label" must be a class name, e.g. "cat"')
        return 200, give(store or default_store(), sent["id"], sent["label"], giver)

    return post


def send(answer_id: str, label: str, key: str, tries: int = 100) -> tuple[int, dict[str, Any]]:
    """POST one label to the monitor's /feedback with a labeller's `key`: (HTTP status, answer).
    A 429 (over the giver's rate) is sent again a moment later, `tries` times at most, as a
    client of a rate-limited API should."""
    body = json.dumps({"id": answer_id, "label": label}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    for attempt in range(tries):
        if attempt:
            time.sleep(1 / RATE_PER_S)
        response = ts.call("monitor", "POST", "/feedback", body, headers, timeout=10, token=False)
        if response.status != 429:
            break
    return response.status, response.json()


def default_store() -> Store:
    """The capture store of the state folder, with the bounds config.properties gives it."""
    return Store(places.captures(), capture.limits(places.capture_properties()))


def add_csv(store: Store, path: str, giver: str) -> tuple[int, list[str]]:
    """Give `giver`'s labels of a CSV file of `id,label` rows (a header row is allowed): how many
    were recorded, and a line per refused row saying why."""
    recorded, refused = 0, []
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise errors.ConfigError(
            f"cannot read {path} as a CSV file of id,label rows: {exc}"
        ) from exc
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if number == 1 and cells[:2] == ["id", "label"] or not any(cells):
            continue
        if len(cells) != 2:
            refused.append(f"line {number}: {len(cells)} cells, expected id,label")
            continue
        try:
            give(store, *cells, giver)
            recorded += 1
        except Refused as exc:
            refused.append(f"line {number}: {exc}")
    return recorded, refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.feedback", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="labels from a CSV file of id,label rows")
    add.add_argument("csv", help="FILE.csv: one id,label row per answer (a header row is allowed)")
    add.add_argument("--giver", default=getpass.getuser(), help="who gave them (default: you)")
    who = commands.add_parser("labeller", help="the keys that may POST /feedback")
    who.add_argument("action", choices=("add", "remove", "list"))
    who.add_argument("name", nargs="?", help="the labeller (add, remove)")
    judge = commands.add_parser("review", help="decide on a flagged label, for every export")
    judge.add_argument("id", help="the answer id (the file name in the export, without .jpg)")
    judge.add_argument("decision", help="keep (its label), drop, or the class it really is")
    judge.add_argument("--reviewer", default=getpass.getuser(), help="who decided (default: you)")
    commands.add_parser("prune", help="remove the captures past their bounds now")
    args = parser.parse_args(argv)
    store = default_store()
    if args.command == "prune":
        removed = store.prune()
        entries = store.index()
        labelled = sum(e.labelled for e in entries)
        print(
            f"{removed} captures removed; {len(entries)} kept ({labelled} labelled) "
            f"in {store.folder}"
        )
        return 0
    if args.command == "labeller":
        return _labeller(args.action, args.name)
    if args.command == "review":
        print(review(store, args.id, args.decision, args.reviewer))
        return 0
    recorded, refused = add_csv(store, args.csv, args.giver)
    for line in refused:
        print(f"refused {line}")
    print(f"{recorded} labels recorded, {len(refused)} refused, in {places.captures()}")
    return 1 if refused else 0


def _labeller(action: str, name: str | None) -> int:
    if action == "list":
        print("\n".join(labellers.names()) or f"no labellers in {labellers.path()}")
        return 0
    if not name:
        raise errors.ConfigError(f"labeller {action} needs a NAME")
    if action == "add":
        key = labellers.add(name)
        print(f"{name}'s key (shown once; send it as Authorization: Bearer <key>):\n{key}")
        return 0
    if not labellers.remove(name):
        raise errors.ConfigError(f"no labeller {name!r} in {labellers.path()}")
    print(f"{name}'s key no longer labels")
    return 0
