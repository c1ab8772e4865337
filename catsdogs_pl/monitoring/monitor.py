"""`python -m catsdogs_pl.monitor`: what the server saw in a window against each version's training
reference (input drift per statistic, confidence, predicted class ratio, estimated accuracy).

  monitor                           totals since TorchServe started, from its metrics endpoint
  monitor --window 600              the next 10 minutes (two scrapes of the metrics endpoint)
  monitor --prometheus URL --window 3600   the last hour, from Prometheus (docker compose)
  monitor ... --serve [--interval 60]      keep comparing; gauges at monitor_address/metrics,
                                           and users' labels taken at POST /feedback there

Each version's reference (`reference.json`, written by fit) comes from its newest `.mar` in the
model store (`$CATSDOGS_HOME`), else from the registry (`servable/reference.json` of the version's
run; needs mlflow), so a monitor without the model store (Kubernetes) compares too. A version whose
reference cannot be read now (an archive being rewritten, a registry that does not answer) is
reported as skipped, with why, and read again the next round.

Beside the drift figures: the accuracy on users' labels of captured answers (monitoring/feedback.py)
per version, of the answers labelled in the window.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catsdogs_pl import errors, places, prometheus
from catsdogs_pl.contracts import Reference
from catsdogs_pl.monitoring import drift, feedback, reference, stats

BUCKETS = f"{stats.METRIC}_bucket"
PREDICTIONS = "CatsDogsPredictions"
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Window:
    """Cumulative le-bucket counts per (version, statistic, le) and predictions per (version,
    label): what one scrape, or the increase between two, holds."""

    buckets: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    predicted: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def minus(self, before: Window) -> Window:
        """The increase since `before`; a series that went down (a restarted server) counts
        from zero."""
        out = Window()
        for mine, theirs, target in (
            (self.buckets, before.buckets, out.buckets),
            (self.predicted, before.predicted, out.predicted),
        ):
            for key, value in mine.items():
                old = theirs.get(key, 0.0)
                target[key] = value - old if value >= old else value
        return out

    def versions(self) -> list[str]:
        """The versions that answered in the window (a series that did not grow is not one)."""
        found = {v for (v, _, _), n in self.buckets.items() if n}
        found |= {v for (v, _), n in self.predicted.items() if n}
        return sorted(found, key=lambda v: (len(v), v))

    def counts(self, version: str) -> dict[str, np.ndarray]:
        """Per statistic: the counts of each bucket (not cumulative) of one version."""
        out = {}
        for name in stats.EDGES:
            cumulative = [
                self.buckets.get((version, name, le), 0.0) for le in stats.le_labels(name)
            ]
            out[name] = np.diff(np.maximum.accumulate(cumulative), prepend=0.0)
        return out

    def labels(self, version: str) -> dict[str, float]:
        return {label: n for (v, label), n in self.predicted.items() if v == version}


def parse(text: str) -> Window:
    """The catsdogs series of a Prometheus text exposition (TorchServe's metrics port)."""
    window = Window()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in (BUCKETS, PREDICTIONS):
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        value = float(match.group(3))
        if match.group(1) == BUCKETS:
            key = (labels["model_version"], labels["statistic"], labels["le"])
            window.buckets[key] += value
        else:
            window.predicted[(labels["model_version"], labels["Label"])] += value
    return window


def scrape(url: str | None = None) -> Window:
    """One scrape of TorchServe's metrics endpoint (no token on that port)."""
    url = url or places.address("metrics") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse(response.read().decode())
    except OSError as exc:
        raise errors.UnreachableError(f"cannot scrape {url} ({exc}): is TorchServe up?") from exc


def query_prometheus(url: str, seconds: int) -> Window:
    """The increase over the last `seconds`, from Prometheus' query API."""
    window = Window()
    queries = {
        "buckets": f"sum by (model_version, statistic, le) (increase({BUCKETS}[{seconds}s]))",
        "predicted": f"sum by (model_version, Label) (increase({PREDICTIONS}[{seconds}s]))",
    }
    for kind, query in queries.items():
        address = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(address, timeout=30) as response:
                found = json.loads(response.read())["data"]["result"]
        except (OSError, KeyError, ValueError) as exc:
            raise errors.UnreachableError(f"Prometheus at {url} did not answer ({exc})") from exc
        for series in found:
            m, value = series["metric"], float(series["value"][1])
            if kind == "buckets":
                window.buckets[(m["model_version"], m["statistic"], m["le"])] += value
            else:
                window.predicted[(m["model_version"], m["Label"])] += value
    return window


class ReferenceUnavailable(errors.CatsDogsError):
    """A version's reference cannot be read this round; the next round tries again."""


# what reading an archive that is missing, half written or being replaced raises
_UNREADABLE = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def load_reference(version: str) -> Reference | None:
    """The reference of `version` (None: it was exported without one): from its newest archive in
    the model store, else from the registry. ReferenceUnavailable when it cannot be read now."""
    try:
        mar = places.find_mar(version)
        if mar is not None:
            return reference.from_mar(mar)
    except _UNREADABLE as exc:
        raise ReferenceUnavailable(
            f"the archive of v{version} in {places.model_store()} is unreadable "
            f"({type(exc).__name__}: {exc}); if `package --force` is rewriting it, it is read "
            f"again next round, else package v{version} again with --force"
        ) from exc
    return _registry_reference(version)


def _registry_reference(version: str) -> Reference | None:
    """`servable/reference.json` of the run of registered `version` (None: it has none), in the
    registry of the fit config as package and deploy find it: for a monitor without the model
    store."""
    where = f"no archive of v{version} in {places.model_store()}"
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from catsdogs_pl import registry
    except ImportError as exc:
        raise ReferenceUnavailable(
            f"{where}, and no mlflow to read the registry ({exc}): mount the model store or "
            "install mlflow"
        ) from exc
    store = registry.MlflowSettings.from_config()
    uri = registry.resolve_tracking_uri(store.tracking_uri)
    try:
        registry.check_reachable(uri)  # UnreachableError (an OSError) in seconds, no retries
        client = MlflowClient(uri)
        _, run_id = registry.resolve_version(client, store.registered_model, version)
        logged = {Path(a.path).name for a in client.list_artifacts(run_id, "servable")}
        if Reference.FILE not in logged:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, f"servable/{Reference.FILE}", tmp)
            return Reference.read(Path(path).parent)
    except (registry.NotRegisteredError, MlflowException, OSError, ValueError) as exc:
        raise ReferenceUnavailable(f"{where}, and the registry at {uri}: {exc}") from exc


def compare(window: Window) -> list[drift.Comparison]:
    """Every version seen in `window` against its reference; one whose reference cannot be read
    now is reported as skipped."""
    found = []
    for version in window.versions():
        counts = window.counts(version)
        try:
            ref = load_reference(version)
        except ReferenceUnavailable as exc:
            found.append(drift.skipped(version, counts, f"skipped this round: {exc}"))
        else:
            found.append(drift.compare(version, ref, counts, window.labels(version)))
    return found


class Monitor:
    """Repeated comparisons: from Prometheus over a sliding window, or natively from scrapes of
    TorchServe kept for the window (the first comparisons count since the server started)."""

    def __init__(self, prometheus: str | None, seconds: int) -> None:
        self.prometheus = prometheus
        self.seconds = seconds
        self.scrapes: list[tuple[float, Window]] = []
        self.latest = drift.gauges([], time.time())

    def window(self) -> Window:
        if self.prometheus:
            return query_prometheus(self.prometheus, self.seconds)
        now = time.monotonic()
        self.scrapes.append((now, scrape()))
        while len(self.scrapes) > 1 and now - self.scrapes[1][0] >= self.seconds:
            self.scrapes.pop(0)  # keep the newest scrape at least `seconds` old
        if len(self.scrapes) == 1 or now - self.scrapes[0][0] < self.seconds:
            return self.scrapes[-1][1]
        return self.scrapes[-1][1].minus(self.scrapes[0][1])

    def compare_window(self) -> list[drift.Comparison]:
        comparisons = compare(self.window())
        self.latest = drift.gauges(comparisons, time.time())
        return comparisons


def _window_text(args: argparse.Namespace) -> str:
    where = f"Prometheus {args.prometheus}" if args.prometheus else "TorchServe's metrics port"
    span = f"last {args.window} s" if args.window else "since TorchServe started"
    return f"{span}, from {where}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.monitor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prometheus", help="Prometheus base URL (default: scrape TorchServe)")
    parser.add_argument(
        "--window", type=int, default=0, help="seconds compared (default 0: since start)"
    )
    parser.add_argument("--serve", action="store_true", help="keep comparing, export gauges")
    parser.add_argument("--interval", type=int, default=60, help="seconds between comparisons")
    args = parser.parse_args(argv)
    if args.window < 0 or args.interval <= 0:
        raise errors.ConfigError("--window must be >= 0 and --interval > 0 (seconds)")
    if args.prometheus and not args.window:
        raise errors.ConfigError("--prometheus needs a --window in seconds, e.g. 3600")
    monitor = Monitor(args.prometheus, args.window)
    store = feedback.default_store()
    outcomes = feedback.Outcomes()

    def since() -> float:  # labels given in the window count (0: all kept)
        return time.time() - args.window if args.window else 0.0

    def labels_round() -> str:  # once per interval, not per scrape
        line, gauges = feedback.labels_round(store, since())
        print(line, flush=True)
        return gauges

    if not args.serve:
        comparisons = monitor.compare_window()
        if args.window and not args.prometheus:  # natively: a second scrape, a window later
            time.sleep(args.window)
            comparisons = monitor.compare_window()
        print(drift.report(comparisons, _window_text(args)))
        print(feedback.report(feedback.tally(store, since())))
        return 0
    labels = labels_round()
    prometheus.expose(
        "monitor",
        lambda: monitor.latest + labels + outcomes.text(),
        {"/feedback": feedback.route(store, outcomes)},
    )
    print(f"monitor: gauges at {places.address('monitor')}/metrics, POST /feedback", flush=True)
    stop = threading.Event()
    while not stop.is_set():
        try:
            print(drift.report(monitor.compare_window(), _window_text(args)), flush=True)
        except errors.UnreachableError as exc:
            print(f"monitor: {exc}", file=sys.stderr, flush=True)
        stop.wait(args.interval)
        labels = labels_round()
    return 0


if __name__ == "__main__":
    sys.exit(errors.exit_code(main, sys.argv[1:]))
