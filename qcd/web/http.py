"""``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded HTTP server.

``/healthz`` says the process is alive and its scheduler runs; ``/readyz`` says it
can take work: the DICOM listener is up, the database answers and the spool is
above its free-space floor. Both answer JSON with the failing checks named.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

LOGGER = logging.getLogger(__name__)

Check = Callable[[], bool]


class HealthServer:
    """Serves the endpoints until :meth:`stop`.

    Parameters
    ----------
    host, port
        Where to listen (port 0 picks a free one).
    registry
        The metrics registry to expose.
    liveness, readiness
        Named checks; each returns True when fine (an exception counts as False).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Mapping[str, Check],
        readiness: Mapping[str, Check],
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _checks(liveness),
            "/readyz": lambda: _checks(readiness),
        }

        class Handler(BaseHTTPRequestHandler):
            server_version = "qcd"

            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    code, ctype, body = 404, "application/json", b'{"error": "not found"}'
                else:
                    code, ctype, body = route()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                LOGGER.debug("http %s", format % args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="qcd-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()
        LOGGER.info("metrics and health on http://%s:%d", *self.httpd.server_address[:2])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _checks(checks: Mapping[str, Check]) -> tuple[int, str, bytes]:
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:  # a failing dependency is a "no", not a 500
            results[name] = False
    ok = all(results.values())
    body = json.dumps({"status": "ok" if ok else "fail", "checks": results}).encode()
    return (200 if ok else 503), "application/json", body
