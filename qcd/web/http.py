"""``/metrics``, ``/healthz``, ``/readyz`` and the dashboard on a small threaded HTTP server.

``/healthz`` says the process is alive and its scheduler runs; ``/readyz`` says it
can take work: the DICOM listener is up, the database answers and the spool is
above its free-space floor. Both answer JSON with the failing checks named. These
three never ask for credentials (probes and Prometheus scrape them); every other path
goes to the dashboard (:class:`qcd.web.app.Dashboard`), which authenticates itself.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from qcd.web.routing import Request, Response

LOGGER = logging.getLogger(__name__)

Check = Callable[[], bool]
App = Callable[[Request], Response]
BodyLimit = Callable[[Request], int]
MAX_BODY = 64 * 1024
"""Largest request body accepted (forms and JSON are small)."""


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
    app
        The dashboard, for every other path (None: those answer 404).
    body_limit
        Largest body accepted for a request (given without its body); default
        :data:`MAX_BODY` (STOW-RS uploads may be larger).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Mapping[str, Check],
        readiness: Mapping[str, Check],
        app: App | None = None,
        body_limit: BodyLimit | None = None,
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
                if route is not None:
                    code, ctype, body = route()
                    self._send(code, [("Content-Type", ctype)], body)
                else:
                    self._app()

            def do_HEAD(self) -> None:
                self._app(head=True)

            def do_POST(self) -> None:
                self._app()

            def _not_allowed(self) -> None:
                self._send(405, [("Content-Type", "application/json"),
                                 ("Allow", "GET, HEAD, POST")],
                           b'{"error": "method not allowed"}')

            do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

            def _app(self, head: bool = False) -> None:
                if app is None:
                    self._send(404, [("Content-Type", "application/json")],
                               b'{"error": "not found"}')
                    return
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    self._send(411, [("Content-Type", "application/json")],
                               b'{"error": "send a Content-Length (no chunked bodies)"}')
                    self.close_connection = True
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                limit = MAX_BODY
                if body_limit is not None and length > MAX_BODY:
                    limit = body_limit(Request.build(self.command, self.path,
                                                     dict(self.headers.items()),
                                                     client=str(self.client_address[0])))
                if not 0 <= length <= limit:
                    self._send(413, [("Content-Type", "application/json")],
                               b'{"error": "request body too large"}')
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                request = Request.build(self.command, self.path, dict(self.headers.items()),
                                        body, client=str(self.client_address[0]))
                try:
                    response = app(request)
                except Exception:  # a bug: answer and log it rather than drop the socket
                    LOGGER.exception("unhandled error for %s %s", self.command,
                                     self.path.split("?", 1)[0][:200])
                    self._send(500, [("Content-Type", "application/json")],
                               b'{"error": "internal error"}')
                    return
                self._send(response.status, response.all_headers(),
                           b"" if head else response.body)

            def _send(self, code: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(code)
                for name, value in headers:
                    self.send_header(name, value)
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
