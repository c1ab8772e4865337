"""A bounded, self-stopping load generator for 127.0.0.1: N clients, each on its own keep-alive
connection, send images back to back until the deadline and record every answer."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field

import numpy as np

from catsdogs_pl import places
from catsdogs_pl.data.synthetic import draw_animal
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.shared_data import FULLSIZE_SAMPLE as SAMPLE
from tests.helpers.shared_data import SAMPLE_DEFECTS, SAMPLE_PREFIX


def photos(limit: int = 200) -> tuple[list[bytes], str]:
    """Real photos from ../shared/data when present (none of its defect files), else drawn
    animals of a photo's size; and which of the two it is."""
    if SAMPLE.exists():
        with zipfile.ZipFile(SAMPLE) as zf:
            names = [
                n
                for n in zf.namelist()
                if n.endswith(".jpg")
                and zf.getinfo(n).file_size > 20_000
                and n.removeprefix(SAMPLE_PREFIX) not in SAMPLE_DEFECTS
            ]
            return [zf.read(n) for n in sorted(names)[:limit]], f"real photos from {SAMPLE.name}"
    rng = np.random.default_rng(0)
    out = []
    for i in range(limit // 4):
        buf = io.BytesIO()
        draw_animal(("cat", "dog")[i % 2], rng, 384).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, "drawn animals (../shared/data is absent)"


@dataclass
class Load:
    """Answers of a load run: (start, seconds, status, model_version or error text) each."""

    answers: list[tuple[float, float, int, str]] = field(default_factory=list)
    in_flight: int = 0
    renewals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def failed(self, since: float = 0.0) -> list[tuple[float, float, int, str]]:
        return [a for a in self.answers if a[2] != 200 and a[0] >= since]

    def figures(self, seconds: float) -> dict[str, float]:
        latencies = np.array([a[1] for a in self.answers if a[2] == 200]) * 1e3
        return {
            "requests": len(self.answers),
            "errors": len(self.failed()),
            "req_per_s": round(len(self.answers) / seconds, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        }


def _post(conn: http.client.HTTPConnection, body: bytes, key: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/octet-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", f"/predictions/{places.MODEL_NAME}", body, headers)
    response = conn.getresponse()
    return response.status, response.read()


def _client(
    load: Load, images: list[bytes], offset: int, deadline: float, interval: float = 0.0
) -> None:
    """One client on a keep-alive connection, its key kept between requests and renewed when
    TorchServe refuses it, as a long-running client of ours does; a request at most every
    `interval` seconds (0: back to back)."""
    url = urllib.parse.urlsplit(places.address("inference"))
    assert url.hostname == "127.0.0.1", "load is only ever sent to this machine"
    key = ts.read_key("inference")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    i = offset
    while time.monotonic() < deadline and not load.stop.is_set():
        body = images[i % len(images)]
        i += 1
        start = time.monotonic()
        with load.lock:
            load.in_flight += 1
        try:
            status, data = _post(conn, body, key)
            if ts.refused_key(ts.Response(status, data)):  # expired: renewed, sent once more
                key = ts.renew_key("inference", key)
                with load.lock:
                    load.renewals += 1
                status, data = _post(conn, body, key)
            detail = (
                json.loads(data).get("model_version", "") if status == 200 else data[:200].decode()
            )
        except ts.TorchServeError as exc:  # the key could not be renewed
            status, detail = 0, str(exc)
        except (OSError, http.client.HTTPException) as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        with load.lock:
            load.in_flight -= 1
            load.answers.append((start, time.monotonic() - start, status, detail))
        load.stop.wait(start + interval - time.monotonic())  # a failure comes back at once
    conn.close()


def run_load(
    clients: int, seconds: float, images: list[bytes], interval: float = 0.0
) -> tuple[Load, list[threading.Thread]]:
    """Start `clients` threads for `seconds`, each sending a request at most every `interval`
    seconds (join the threads to wait; load.stop ends early)."""
    load = Load()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_client, args=(load, images, 7 * c, deadline, interval), daemon=True
        )
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    return load, threads
