"""Our own HTTP endpoints: Prometheus text at /metrics (the worker metrics beside TorchServe, the
monitor) and JSON POST routes beside it (the monitor's /feedback). On the ground floor, so serving
and monitoring both import it downward."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from catsdogs_pl import places

MAX_BODY = 16_384  # bytes of a POST body: a larger one is refused (413) before it is read
TIMEOUT_S = 10.0  # a client this slow to send its request is dropped: it holds a thread
MAX_THREADS = 32  # connections served at once; one more is answered 503 and closed
# a POST route: (read the body, headers) -> (HTTP status, JSON answer). The route reads the body
# only once the headers (its key) pass: a client without one cannot make the server wait for it.
Route = Callable[[Callable[[], bytes], Mapping[str, str]], tuple[int, dict[str, Any]]]
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Server(http.server.ThreadingHTTPServer):
    """A thread per connection, at most MAX_THREADS of them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):  # a client gone already needs no answer
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def expose(
    kind: str, produce: Callable[[], str], post: dict[str, Route] | None = None
) -> http.server.ThreadingHTTPServer:
    """Publish `produce()` (Prometheus text, made at each scrape) at /metrics of `kind`'s address
    (config.properties), and the `post` routes, in a thread."""
    routes = post or {}

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = TIMEOUT_S

        def do_POST(self) -> None:
            route = routes.get(self.path)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if route is None:
                status, answer = 404, {"error": f"no POST {self.path[:100]} here"}
            elif not 0 <= length <= MAX_BODY:
                status, answer = 413, {"error": f"the body must be 0 to {MAX_BODY} bytes"}
                self.close_connection = True  # its body is left unread
            else:
                try:
                    status, answer = route(lambda: self.rfile.read(length), self.headers)
                except Exception as exc:  # a failure is still an answer, with its status
                    status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"[:500]}
                    self.close_connection = True
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = produce().encode()
            except Exception as exc:  # a failure is still an answer, with its status
                self.send_error(500, f"{type(exc).__name__}: {exc}"[:500])
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # a line per scrape is noise
            pass

    url = urllib.parse.urlsplit(places.address(kind, bind=True))
    server = _Server((url.hostname, url.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
