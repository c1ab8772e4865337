"""Every kind of bad request a public inference port gets: a 4xx with a message (or 200 for a valid
image), never a 5xx, no worker restarted, the model READY afterwards."""

from __future__ import annotations

import base64
import http.client
import io
import json
import urllib.parse
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from catsdogs_pl import places
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.images import image_bytes, png_claiming
from tests.helpers.serving import SessionTorchServe, worker_pids

pytestmark = pytest.mark.integration

JPEG = image_bytes(1, (120, 90))
PNG = image_bytes(2, (120, 90), "PNG")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _noise(mode: str = "RGB", size: tuple[int, int] = (96, 72)) -> Image.Image:
    pixels = np.random.default_rng(5).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _png16() -> bytes:
    pixels = np.random.default_rng(6).integers(0, 65535, (72, 96), dtype=np.uint16)
    return _encode(Image.fromarray(pixels), "PNG")  # mode I;16


def _gif() -> bytes:
    frames = [_noise("P"), _noise("P").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW on display
    return _encode(_noise(), "JPEG", exif=exif.tobytes())


def _multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (filename or None, content)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, content) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        parts.append(content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


OCTET = "application/octet-stream"
PRED = "/predictions/catsdogs"


def raw(make: Callable[[], bytes], content_type: str = OCTET) -> Callable[[], tuple[bytes, str]]:
    return lambda: (make(), content_type)


def image(mode: str, fmt: str, **options) -> Callable[[], tuple[bytes, str]]:
    return raw(lambda: _encode(_noise(mode), fmt, **options))


# kind -> (method, path, body and content type, expected status: 200 or a 4xx)
CASES: dict[str, tuple[str, str, Callable[[], tuple[bytes, str]], int]] = {
    "empty body": ("POST", PRED, raw(lambda: b""), 400),
    "random bytes": ("POST", PRED, raw(lambda: np.random.default_rng(1).bytes(5000)), 400),
    "plain text": ("POST", PRED, raw(lambda: b"a cat, I promise", "text/plain"), 400),
    "HTML page": ("POST", PRED, raw(lambda: b"<!doctype html><html><body>404</body></html>"), 400),
    "truncated JPEG": ("POST", PRED, raw(lambda: image_bytes(3, (400, 300))[:2500]), 400),
    "truncated PNG": ("POST", PRED, raw(lambda: image_bytes(3, (400, 300), "PNG")[:3000]), 400),
    "JPEG header only": ("POST", PRED, raw(lambda: JPEG[:20]), 400),
    "1x1 image": ("POST", PRED, raw(lambda: image_bytes(4, (1, 1), "PNG")), 400),
    "30000x30000 PNG header (bomb)": ("POST", PRED, raw(lambda: png_claiming(30_000, 30_000)), 400),
    "JSON that is not JSON": ("POST", PRED, raw(lambda: b'{"data": ', "application/json"), 400),
    "JSON without the field": (
        "POST",
        PRED,
        raw(lambda: b'{"picture": "x"}', "application/json"),
        400,
    ),
    "JSON with a wrong type": ("POST", PRED, raw(lambda: b'{"data": 12}', "application/json"), 400),
    "malformed base64": ("POST", PRED, raw(lambda: b"@@not*base64@@", "text/plain"), 400),
    "multipart without a file": ("POST", PRED, lambda: _multipart({"note": (None, b"none")}), 400),
    "form fields, no image": (
        "POST",
        PRED,
        raw(lambda: b"a=1&b=2", "application/x-www-form-urlencoded"),
        400,
    ),
    # TorchServe hands any method to the handler: no body, so "empty"
    "wrong HTTP method (GET)": ("GET", PRED, raw(lambda: b""), 400),
    "wrong HTTP method (DELETE)": ("DELETE", PRED, raw(lambda: b""), 400),
    "missing model name": ("POST", "/predictions/", raw(lambda: JPEG), 404),
    "unknown model": ("POST", "/predictions/horses", raw(lambda: JPEG), 404),
    "unknown version": ("POST", f"{PRED}/99", raw(lambda: JPEG), 404),
    # valid pictures in every format a user may have: 200 with a label
    "JPEG": ("POST", PRED, raw(lambda: JPEG), 200),
    "PNG named as JPEG": ("POST", PRED, raw(lambda: PNG, "image/jpeg"), 200),
    "16-bit PNG": ("POST", PRED, raw(_png16), 200),
    "RGBA PNG": ("POST", PRED, image("RGBA", "PNG"), 200),
    "palette PNG": ("POST", PRED, image("P", "PNG"), 200),
    "CMYK JPEG": ("POST", PRED, image("CMYK", "JPEG"), 200),
    "greyscale JPEG": ("POST", PRED, image("L", "JPEG"), 200),
    "animated GIF": ("POST", PRED, raw(_gif), 200),
    "WebP": ("POST", PRED, image("RGB", "WEBP"), 200),
    "TIFF": ("POST", PRED, image("RGB", "TIFF"), 200),
    "BMP": ("POST", PRED, image("RGB", "BMP"), 200),
    "EXIF-rotated JPEG": ("POST", PRED, raw(_exif_rotated), 200),
    "JSON with base64": (
        "POST",
        PRED,
        raw(
            lambda: json.dumps({"data": base64.b64encode(JPEG).decode()}).encode(),
            "application/json",
        ),
        200,
    ),
    "multipart file": ("POST", PRED, lambda: _multipart({"data": ("x.jpg", JPEG)}), 200),
}


@pytest.fixture(scope="module")
def workers_before(torchserve: SessionTorchServe) -> dict[str, int]:
    """The workers as this module starts: the last test finds the same ones."""
    with torchserve.environment():
        torchserve.serving_only("1")
        return worker_pids()


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_kind(kind: str, workers_before: dict[str, int], served, report) -> None:
    method, path, build, expected = CASES[kind]
    body, content_type = build()
    data = body if method == "POST" else None
    try:
        response = ts.call(
            "inference", method, path, data, {"Content-Type": content_type}, timeout=60
        )
    except ts.TorchServeError as exc:  # the server may close a connection it will not read
        pytest.fail(f"{kind}: no HTTP answer ({exc})")
    report(f"bad input: {kind}", response.status)
    assert response.status < 500, f"{kind}: HTTP {response.status} {response.body[:300]!r}"
    assert response.status == expected, f"{kind}: HTTP {response.status} {response.body[:300]!r}"
    if expected == 200:
        assert response.json()["label"] in ("cat", "dog")
    else:
        assert len(response.body) > 10, f"{kind}: a {response.status} without a message"


def test_body_over_max_request_size(workers_before: dict[str, int], served, report) -> None:
    """TorchServe answers 413 as soon as it reads a Content-Length over max_request_size (10 MB),
    before the body: a client that waits for the answer (curl does) gets it, not a reset."""
    url = urllib.parse.urlsplit(places.address("inference"))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", PRED)
    conn.putheader("Authorization", f"Bearer {ts.read_key('inference')}")
    conn.putheader("Content-Type", OCTET)
    conn.putheader("Content-Length", str(11_000_000))
    conn.endheaders()
    response = conn.getresponse()
    report("bad input: body over max_request_size (11 MB)", response.status)
    assert (response.status, response.reason) == (413, "Request Entity Too Large")
    conn.close()


def test_no_worker_restarted_and_still_ready(workers_before: dict[str, int], served) -> None:
    assert worker_pids() == workers_before  # same worker ids, same processes
    entry = ts.wait_ready(timeout=5)
    assert ts.ready_workers(entry) == len(workers_before)
