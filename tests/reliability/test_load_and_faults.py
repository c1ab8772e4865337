"""The server under load, and the worst moments of its day while under load: a worker killed,
a new version swapped in, a broken archive registered. Bounded: 127.0.0.1 only, fixed durations."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import zipfile

import pytest

from catsdogs_pl import places
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.load import photos, run_load
from tests.helpers.serving import mar_path, worker_pids

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 16


@pytest.fixture(scope="module")
def images():
    return photos()


def _wait_all(threads) -> None:
    for t in threads:
        t.join(timeout=120)


def test_sixteen_clients_for_a_minute(images, served, report) -> None:
    pictures, what = images
    ts.wait_ready()
    load, threads = run_load(CLIENTS, 60.0, pictures)
    start = time.monotonic()
    _wait_all(threads)
    figures = load.figures(time.monotonic() - start)
    report("load, 16 clients x 60 s", {**figures, "images": what})
    assert figures["errors"] == 0, load.failed()[:5]
    assert figures["requests"] > CLIENTS * 10


def test_worker_killed_under_load(images, served, report) -> None:
    pictures, _ = images
    entry = ts.wait_ready()
    expected = len(entry["workers"])
    load, threads = run_load(CLIENTS, 40.0, pictures)
    time.sleep(8)
    victim = entry["workers"][0]
    with load.lock:
        in_flight = load.in_flight
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    recovered = None
    while time.monotonic() - killed_at < 60:
        workers = ts.describe("")[0]["workers"]
        pids = {w["pid"] for w in workers if w["status"] == "READY"}
        if len(pids) == expected and victim["pid"] not in pids:
            recovered = time.monotonic() - killed_at
            break
        time.sleep(0.1)
    _wait_all(threads)
    failed = load.failed()
    figures = {
        "in_flight_at_kill": in_flight,
        "failed": len(failed),
        "failed_statuses": sorted({f[2] for f in failed}),
        "ready_again_s": round(recovered, 2) if recovered else None,
        "requests": len(load.answers),
    }
    report("kill -9 of one worker under load", figures)
    assert recovered is not None, "the killed worker was not replaced by a READY one within 60 s"
    assert len(failed) <= in_flight, failed[:5]
    assert not load.failed(since=killed_at + recovered), "failures after recovery"


def test_new_version_swapped_in_under_load(images, served, report) -> None:
    pictures, _ = images
    ts.wait_ready()
    load, threads = run_load(CLIENTS, 45.0, pictures)
    time.sleep(5)
    query = urllib.parse.urlencode({"url": mar_path("2").name, "synchronous": "true"})
    ts.check(ts.call("management", "POST", f"/models?{query}", timeout=300), "register v2")
    ts.wait_ready("2")
    swap_sent = time.monotonic()
    ts.check(ts.call("management", "PUT", "/models/catsdogs/2/set-default"), "set-default v2")
    swap_done = time.monotonic()
    _wait_all(threads)
    # answered before set-default was sent: only v1; sent a second after it returned: only v2.
    # A request sent shortly before the swap may reach the server (and v2) after it under load.
    versions_before = {a[3] for a in load.answers if a[2] == 200 and a[0] + a[1] < swap_sent}
    versions_after = {a[3] for a in load.answers if a[2] == 200 and a[0] > swap_done + 1}
    report(
        "v2 registered and made default under load",
        {"failed": len(load.failed()), "requests": len(load.answers)},
    )
    assert not load.failed(), load.failed()[:5]
    assert versions_before == {"1"} and versions_after == {"2"}
    # back to v1 for the tests after this one, and v2 out of the way
    ts.check(ts.call("management", "PUT", "/models/catsdogs/1/set-default"), "set-default v1")
    ts.check(ts.call("management", "DELETE", "/models/catsdogs/2"), "unregister v2")


def _corrupt(kind: str, version: str) -> str:
    """A broken copy of v1's archive in the model store, as an archive of `version`."""
    target = places.model_store() / places.mar_name(version, "broken")
    if kind == "not a zip":
        target.write_bytes(b"PK\x03\x04 this was cut off in transfer")
        return target.name
    with zipfile.ZipFile(mar_path("1")) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if kind == "weights missing" and item.filename == "weights.pt":
                continue
            if kind == "handler broken" and item.filename == places.HANDLER.name:
                data = b"import this_module_does_not_exist\n"
            if item.filename == "MAR-INF/MANIFEST.json":  # the archive's own version
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    return target.name


@pytest.mark.parametrize("kind", ["not a zip", "weights missing", "handler broken"])
def test_corrupt_archive_is_refused_and_v1_keeps_serving(kind: str, images, served, report) -> None:
    pictures, _ = images
    before = worker_pids()
    version = {"not a zip": "7", "weights missing": "8", "handler broken": "9"}[kind]
    name = _corrupt(kind, version)
    load, threads = run_load(4, 20.0, pictures)
    query = urllib.parse.urlencode({"url": name, "synchronous": "true", "initial_workers": 1})
    started = time.monotonic()
    response = ts.call("management", "POST", f"/models?{query}", timeout=300)
    took = time.monotonic() - started
    _wait_all(threads)
    registered = {e["modelVersion"] for e in ts.describe("all")}
    report(
        f"corrupt archive: {kind}",
        {
            "status": response.status,
            "answer_s": round(took, 1),
            "message": response.body[:160].decode(),
        },
    )
    assert response.status >= 400 and b"message" in response.body
    assert version not in registered, "a broken version stayed registered"
    assert not load.failed() and load.answers, load.failed()[:5]
    assert ts.default_version() == "1" and worker_pids() == before
