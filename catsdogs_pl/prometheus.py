"""Our own HTTP endpoints: Prometheus text at /metrics (the worker metrics beside TorchServe, the
monitor) and JSON POST routes beside it (the monitor's /feedback). On the ground floor, so serving
and monitoring both import it downward."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from catsdogs_pl import places

MAX_BODY = 16_384  # bytes of a POST body: a larger one is refused (413) before it is read
# a POST route: (body, headers) -> (HTTP status, JSON answer)
Route = Callable[[bytes, Mapping[str, str]], tuple[int, dict[str, Any]]]


def expose(
    kind: str, produce: Callable[[], str], post: dict[str, Route] | None = None
) -> http.server.ThreadingHTTPServer:
    """Publish `produce()` (Prometheus text, made at each scrape) at /metrics of `kind`'s address
    (config.properties), and the `post` routes, in a thread."""
    routes = post or {}

    class Handler(http.server.BaseHTTPRequestHandler):
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
                status, answer = route(self.rfile.read(length), self.headers)
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
            body = produce().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # a line per scrape is noise
            pass

    url = urllib.parse.urlsplit(places.address(kind, bind=True))
    server = http.server.ThreadingHTTPServer((url.hostname, url.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
