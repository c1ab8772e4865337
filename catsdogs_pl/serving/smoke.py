"""`python -m catsdogs_pl.serving.smoke`: is a deployed catsdogs server really serving? (CI and by hand)

Checks, in order: /ping answers 200, the default version has READY workers (waiting up to
--timeout), the management API lists the expected version, a prediction on the bundled sample
image returns a label, and /metrics counts it in `ts_inference_requests_total`. Exit 0 when all
hold; else 1 with the first failed check named.

Only the standard library and our TorchServe client: runs with `PYTHONPATH=.` and no install.
Addresses come from config.properties or TS_INFERENCE_ADDRESS / TS_MANAGEMENT_ADDRESS /
TS_METRICS_ADDRESS, the token from `$CATSDOGS_HOME/key_file.json` (copy it out of a container).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catsdogs_pl import places
from catsdogs_pl.errors import exit_code
from catsdogs_pl.serving import torchserve as ts

SAMPLE = Path(__file__).parents[1] / "assets" / "sample-cat.jpg"
LABELS = ("cat", "dog")


class SmokeFailure(RuntimeError):
    """One smoke check failed; the message names it. A verdict (exit 1), not a usage error."""


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise SmokeFailure(message)


def smoke(version: str | None = None, image: Path = SAMPLE, timeout: float = 120) -> list[str]:
    """Run every check; returns one line per passed check, raises SmokeFailure on the first miss."""
    passed = []
    ping = ts.call("inference", "GET", "/ping")
    _expect(ping.status == 200, f"/ping answered HTTP {ping.status}: {ping.body[:200]!r}")
    passed.append(f"/ping: {ping.json()['status']}")

    try:
        entry = ts.wait_ready(timeout=timeout)
    except ts.TorchServeError as exc:
        raise SmokeFailure(f"model not READY: {exc}") from exc
    passed.append(f"default v{entry['modelVersion']}: {ts.ready_workers(entry)} workers READY")

    listed = {e["modelVersion"] for e in ts.describe("all")}
    _expect(
        version is None or version in listed,
        f"management API lists versions {sorted(listed)}, not {version}",
    )
    passed.append(f"management API lists versions {sorted(listed)}")

    headers = {"Content-Type": "application/octet-stream"}
    path = f"/predictions/{places.MODEL_NAME}"
    answer = ts.call("inference", "POST", path, image.read_bytes(), headers)
    _expect(
        answer.status == 200, f"prediction answered HTTP {answer.status}: {answer.body[:300]!r}"
    )
    try:
        label = answer.json()["label"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SmokeFailure(f"prediction has no label: {answer.body[:300]!r}") from exc
    _expect(label in LABELS, f"prediction label {label!r} is not one of {LABELS}")
    passed.append(f"prediction on {image.name}: {label}")

    metrics = ts.call("metrics", "GET", "/metrics").body.decode(errors="replace")
    counted = [m for m in metrics.splitlines() if m.startswith("ts_inference_requests_total{")]
    _expect(bool(counted), "/metrics has no ts_inference_requests_total sample")
    passed.append(f"/metrics: {counted[0]}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.serving.smoke", description=__doc__
    )
    parser.add_argument("--model-version", help="fail unless this version is registered")
    parser.add_argument("--image", type=Path, default=SAMPLE, help="default: the bundled sample")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for READY")
    args = parser.parse_args(argv)
    try:
        for line in smoke(args.model_version, args.image, args.timeout):
            print(f"ok  {line}")
    except (SmokeFailure, ts.TorchServeError) as exc:
        print(f"SMOKE TEST FAILED: {exc}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
