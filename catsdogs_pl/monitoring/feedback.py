"""Users' labels for served answers: what a photo really was, named by the answer's id.

Only captured answers can be labelled: the capture store keeps the photo a label is about, and the
label becomes training data (`python -m catsdogs_pl.data feedback-export`). The classes a label may
name are the ones the answer's version was trained on (its probabilities' keys). One function,
`give`, decides for `POST /feedback` on the monitor's port and for `python -m catsdogs_pl.feedback
add FILE.csv` alike.
"""

from __future__ import annotations

import argparse
import csv
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from catsdogs_pl import capture, errors, places
from catsdogs_pl.capture import Feedback, Gone, LabelStoreFull, Store
from catsdogs_pl.serving import torchserve as ts

RATE_PER_S = 50.0  # POST /feedback accepted per second, after a burst of BURST: a flood gets 429
BURST = 200


class Refused(Exception):
    """Feedback that is not recorded: `status` is its HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def give(store: Store, answer_id: str, label: str) -> dict[str, Any]:
    """Record `label` for the captured answer `answer_id`; the later label of an id stands."""
    gone = Refused(
        404,
        f"no captured answer {answer_id[:64]!r}: only captured answers can be labelled "
        "(config.properties capture_fraction), and the oldest are removed "
        "(capture_max_age_days, capture_max_mb)",
    )
    found = store.get(answer_id)
    if found is None:
        raise gone
    classes = sorted(found.probabilities)
    if label not in classes:
        raise Refused(400, f"label {label[:64]!r}: use one of {', '.join(classes)}")
    try:
        before = store.set_feedback(answer_id, Feedback(label))
    except Gone:
        raise gone from None
    except LabelStoreFull as exc:
        raise Refused(507, f"label store full, label not recorded: {exc}") from exc
    return {
        "id": answer_id,
        "label": label,
        "answered": found.label,
        "replaced": before.label if before else None,  # the same id again: this label stands
    }


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


def authorized(headers: Mapping[str, str]) -> bool:
    """The inference key of the state folder (the one clients predict with), as TorchServe checks
    it; anything goes where token authorization is off."""
    if not ts.token_auth():
        return True
    key = ts.read_key("inference")
    given = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
    return bool(key) and hmac.compare_digest(given.encode(), key.encode())


def route(store: Store | None = None, bucket: Bucket | None = None) -> Any:
    """The `POST /feedback` route for prometheus.expose: `{"id": ..., "label": ...}` in, the
    recorded feedback or an error naming what was wrong out."""
    bucket = bucket or Bucket()

    def post(read: Callable[[], bytes], headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        if not authorized(headers):  # before the body is read
            return 401, {"error": "send the inference key: Authorization: Bearer <key>"}
        if not bucket.take():
            return 429, {"error": f"over {RATE_PER_S:g} feedback requests per second"}
        try:
            sent = json.loads(read())
        except ValueError:
            sent = None
        if not (isinstance(sent, dict) and isinstance(sent.get("id"), str)):
            return 400, {"error": 'send a JSON object {"id": "<answer id>", "label": "cat"}'}
        if not isinstance(sent.get("label"), str):
            return 400, {"error": 'the "label" must be a class name, e.g. "cat"'}
        try:
            return 200, give(store or default_store(), sent["id"], sent["label"])
        except Refused as exc:
            return exc.status, {"error": str(exc)}

    return post


def send(answer_id: str, label: str, tries: int = 100) -> tuple[int, dict[str, Any]]:
    """POST one label to the monitor's /feedback with the state folder's inference key:
    (HTTP status, answer). A 429 (over RATE_PER_S) is sent again a moment later, `tries` times
    at most, as a client of a rate-limited API should."""
    body = json.dumps({"id": answer_id, "label": label}).encode()
    headers = {"Content-Type": "application/json"}
    for _ in range(tries):
        response = ts.call("monitor", "POST", "/feedback", body, headers, timeout=10)
        if response.status != 429:
            break
        time.sleep(2 / RATE_PER_S)
    return response.status, response.json()


def default_store() -> Store:
    """The capture store of the state folder, with the bounds config.properties gives it."""
    return Store(places.captures(), capture.limits(places.capture_properties()))


def add_csv(store: Store, path: str) -> tuple[int, list[str]]:
    """Give the labels of a CSV file of `id,label` rows (a header row is allowed): how many were
    recorded, and a line per refused row saying why."""
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
            give(store, *cells)
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
    args = parser.parse_args(argv)
    recorded, refused = add_csv(default_store(), args.csv)
    for line in refused:
        print(f"refused {line}")
    print(f"{recorded} labels recorded, {len(refused)} refused, in {places.captures()}")
    return 1 if refused else 0
