"""Our HTTP endpoints (prometheus.expose: the monitor's /metrics and POST /feedback) stay up under
slow, keyless and too many clients: the key before the body, a socket timeout, a thread bound, and
a status for every failure."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from catsdogs_pl import prometheus
from tests.helpers.ports import free_ports


def _route(read: Any, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    if headers.get("Authorization") != "Bearer key":
        return 401, {"error": "send the key"}
    body = read()
    if body == b"boom":
        raise RuntimeError("the route failed")
    return 200, {"read": len(body)}


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    found = free_ports(1)[0]
    monkeypatch.setenv("TS_MONITOR_ADDRESS", f"http://127.0.0.1:{found}")
    monkeypatch.setattr(prometheus, "TIMEOUT_S", 2.0)
    monkeypatch.setattr(prometheus, "MAX_THREADS", 2)

    def produce() -> str:
        raise OSError("the store is unreadable")

    server = prometheus.expose("monitor", produce, {"/feedback": _route})
    yield found
    server.shutdown()
    server.server_close()


def _post(port: int, body: bytes, key: str, length: int | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("POST", "/feedback")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Content-Length", str(len(body) if length is None else length))
    conn.endheaders(body)
    response = conn.getresponse()
    answer = (response.status, response.read())
    conn.close()
    return answer


def test_a_keyless_client_is_answered_before_its_body(port: int) -> None:
    start = time.monotonic()
    status, _ = _post(port, b"", "wrong", length=10_000)  # says 10 kB, sends none of it
    assert status == 401 and time.monotonic() - start < 1.9  # not after the socket timeout


def test_a_silent_connection_is_dropped_after_the_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        start = time.monotonic()
        assert idle.recv(1) == b""  # closed by the server, not by this test's 10 s
        assert time.monotonic() - start < 8


def test_connections_past_the_thread_bound_get_503(port: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    time.sleep(0.2)  # both accepted (before the next: in order), each holding a thread
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(100).startswith(b"HTTP/1.1 503")  # answered before it says a word
    finally:
        for conn in idle:
            conn.close()
    deadline, answer = time.monotonic() + 10, None
    while answer != (200, b'{"read": 2}') and time.monotonic() < deadline:
        time.sleep(0.1)  # their threads end as they close: the bound frees
        with contextlib.suppress(OSError):  # a 503 may close before the request is sent
            answer = _post(port, b"{}", "key")
    assert answer == (200, json.dumps({"read": 2}).encode())


def test_every_failure_has_a_status(port: int) -> None:
    status, body = _post(port, b"boom", "key")
    assert status == 500 and "the route failed" in json.loads(body)["error"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 500 and b"the store is unreadable" in response.read()
    conn.close()
