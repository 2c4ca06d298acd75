"""The probe server: ``/v2/health/live``, ``/v2/health/ready`` and ``/metrics`` on a port of their own.

The kubelet's probes and Prometheus's scrapes must be answered while the main port is saturated. On the
main port they would queue behind inference on the one event loop; here they are answered by the
standard library's threading HTTP server, in threads of its own, which need nothing from the event loop:
readiness reads the models' state and the metrics registry is thread-safe. MLServer's separate metrics
server is the pattern. The main port keeps the same routes for clients.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.status import LIVE_PATH, METRICS_PATH, READY_PATH

log = logging.getLogger("modelyard.serving")


class _ProbeHandler(BaseHTTPRequestHandler):
    server: ProbeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the kubelet and Prometheus use it

    def do_GET(self) -> None:
        dataplane = self.server.dataplane
        path = self.path.split("?", 1)[0]
        if path == LIVE_PATH:
            live = dataplane.live()
            self._answer(200 if live else 503, b'{"live":true}' if live else b'{"live":false}')
        elif path == READY_PATH:
            ready = dataplane.ready() and self.server.serving()
            self._answer(200 if ready else 503, b'{"ready":true}' if ready else b'{"ready":false}')
        elif path == METRICS_PATH and dataplane.metrics is not None:
            body, content_type = dataplane.metrics.render(self.headers.get("accept"))
            self._answer(200, body, content_type)
        else:
            self._answer(
                404, b'{"error":"Not Found: this port serves /v2/health/live, /v2/health/ready and /metrics"}'
            )

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        # One write for the whole answer: under load every socket call waits its turn for the GIL.
        head = (
            f"{self.protocol_version} {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no line each."""


class ProbeServer(ThreadingHTTPServer):
    """Serves the probes of one data plane from a background thread: :meth:`start`, :meth:`stop`."""

    daemon_threads = True

    def __init__(
        self, dataplane: DataPlane, host: str, port: int, serving: Callable[[], bool] = lambda: True
    ) -> None:
        self.dataplane = dataplane
        self.serving = serving
        """True while the inference ports listen and no signal asked them to stop: readiness is 503
        before (the probe port is up first) and while the main port drains."""
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _ProbeHandler)
        except OSError as exc:
            raise OSError(f"cannot listen for probes and metrics on {host}:{port} (in use?): {exc}") from None
        self._thread = threading.Thread(target=self.serve_forever, name="modelyard-probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("probes and metrics on http://%s:%d", self.server_address[0], self.port)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()


__all__ = ["ProbeServer"]
