"""Prometheus text over HTTP: the /metrics endpoint of our own exporters (the worker metrics beside
TorchServe, the monitor). On the ground floor, so serving and monitoring both import it downward."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Callable

from catsdogs_pl import places


def expose(kind: str, produce: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    """Publish `produce()` (Prometheus text, made at each scrape) at /metrics of `kind`'s address
    (config.properties) in a thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
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
