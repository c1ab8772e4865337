"""Tests for catsdogs_pl.data.download against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from catsdogs_pl.data.download import DownloadError, download

NAME = "archive.zip"
DATA = random.Random(0).randbytes(300_000)
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()
HALF = len(DATA) // 2


class _Handler(BaseHTTPRequestHandler):
    """Serves server.payload, honours Range unless server.ignore_range, can cut the body short."""

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append(rng)
        body, start = srv.payload, 0
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if srv.cut_after is None else body[: srv.cut_after])

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.ignore_range, httpd.cut_after, httpd.requests = DATA, False, None, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_port}/files/{NAME}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _get(server, dest: Path, **kw) -> Path:
    kw.setdefault("expected_size", len(DATA))
    kw.setdefault("sha256", DATA_SHA256)
    return download(server.url, dest, timeout=5, **kw)


def test_full_download(server, tmp_path):
    path = _get(server, tmp_path / "data")
    assert path == tmp_path / "data" / NAME
    assert path.read_bytes() == DATA
    assert server.requests == [None]  # one plain request, no Range
    assert not (tmp_path / "data" / f"{NAME}.part").exists()


def test_resumes_from_part_file(server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(DATA[:HALF])
    path = _get(server, tmp_path)
    assert server.requests == [f"bytes={HALF}-"]
    assert path.read_bytes() == DATA
    assert not (tmp_path / f"{NAME}.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / f"{NAME}.part").write_bytes(DATA[:HALF])
    path = _get(server, tmp_path)
    assert server.requests == [f"bytes={HALF}-"]  # asked to resume, got the whole file
    assert path.read_bytes() == DATA  # not the first half twice


def test_part_already_complete_is_not_downloaded_again(server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(DATA)
    path = _get(server, tmp_path, expected_size=None)  # server answers 416
    assert server.requests == [f"bytes={len(DATA)}-"]
    assert path.read_bytes() == DATA


def test_checksum_mismatch_raises_and_deletes_part(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=wrong) as err:
        _get(server, tmp_path, sha256=wrong)
    assert DATA_SHA256 in str(err.value) and NAME in str(err.value)
    assert not (tmp_path / f"{NAME}.part").exists()
    assert not (tmp_path / NAME).exists()


def test_size_mismatch_raises(server, tmp_path):
    with pytest.raises(DownloadError, match=rf"expected {len(DATA) - 1} bytes, got {len(DATA)}"):
        _get(server, tmp_path, expected_size=len(DATA) - 1, sha256=None)
    assert not (tmp_path / NAME).exists()
    assert not (tmp_path / f"{NAME}.part").exists()  # too many bytes: resuming cannot fix it


def test_dropped_connection_keeps_part_and_rerun_resumes(server, tmp_path):
    server.cut_after = HALF  # Content-Length says the full size, only half arrives
    with pytest.raises(DownloadError, match=rf"expected {len(DATA)} bytes, got {HALF}.*resume"):
        _get(server, tmp_path, expected_size=None)  # size comes from Content-Length
    assert (tmp_path / f"{NAME}.part").read_bytes() == DATA[:HALF]
    server.cut_after = None
    assert _get(server, tmp_path).read_bytes() == DATA
    assert server.requests == [None, f"bytes={HALF}-"]


def test_existing_verified_file_makes_no_request(server, tmp_path):
    (tmp_path / NAME).write_bytes(DATA)
    assert _get(server, tmp_path) == tmp_path / NAME
    assert server.requests == []


def test_existing_corrupt_file_is_downloaded_again(server, tmp_path):
    (tmp_path / NAME).write_bytes(b"junk")
    assert _get(server, tmp_path).read_bytes() == DATA
    assert server.requests == [None]


def test_unreachable_url_raises_naming_url(tmp_path):
    with socket.socket() as s:  # grab a free port, then close it so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(DownloadError, match="re-run to resume") as err:
        download(url, tmp_path, expected_size=None, sha256=None, timeout=2)
    assert url in str(err.value)
    assert not (tmp_path / NAME).exists()
