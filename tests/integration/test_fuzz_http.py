"""Fuzzing the HTTP API and dashboard of a running daemon over real sockets.

Whatever the method, path, query, headers or body — logged in as an operator or not —
the server must answer with a deliberate status (never a 5xx, never a dropped
connection) and keep serving: /healthz answers after every example. Malformed raw
requests (bad request lines, lying Content-Length, binary garbage) go over a plain
socket. Examples per property: ``QCD_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcd.app import Daemon
from qcd.web import seed
from qcd.web.auth import add_user
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("QCD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
AUTH = "Basic " + base64.b64encode(b"op:operator-password").decode()
ROUTES = ["/", "/sites", "/sites.csv", "/operator", "/study/1.2.3", "/harmonisation",
          "/harmonisation.csv", "/login", "/logout", "/api/me", "/api/sites",
          "/api/sites.csv", "/api/trends", "/api/stations", "/api/series", "/api/alerts",
          "/api/alerts/1/ack", "/api/studies/1.2.3", "/api/harmonisation",
          "/api/openapi.json", "/dicom-web/studies", "/img/1.2.3/axial/0.png", "/metrics",
          "/healthz", "/readyz"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("fuzzhttp")
    daemon = Daemon(make_settings(tmp, QCD_HTTP__STOW_ENABLED="true"), registry={})
    seed.seed(daemon.db, n_series=20, days=2, seed=3)
    add_user(daemon.db, "op", "operator-password", "operator")
    daemon.start()
    assert daemon.http is not None
    yield "127.0.0.1", daemon.http.port
    daemon.stop()


def request(server: tuple[str, int], method: str, path: str, body: bytes | None,
            headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        rsp = conn.getresponse()
        rsp.read()
        return rsp.status
    finally:
        conn.close()


def healthy(server: tuple[str, int]) -> bool:
    return request(server, "GET", "/healthz", None, {}) == 200


text = st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=40)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]),
       route=st.sampled_from(ROUTES), suffix=text,
       query=st.dictionaries(text, text, max_size=4),
       body=st.one_of(st.none(), st.binary(max_size=512)),
       ctype=st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                              'multipart/related; type="application/dicom"; boundary=x',
                              "text/plain", "multipart/related"]),
       logged_in=st.booleans())
def test_any_request_gets_a_deliberate_answer(
        server: tuple[str, int], method: str, route: str, suffix: str,
        query: dict[str, str], body: bytes | None, ctype: str, logged_in: bool) -> None:
    path = route + urllib.parse.quote(suffix, safe="/") + (
        "?" + urllib.parse.urlencode(query) if query else "")
    headers = {"Content-Type": ctype, **({"Authorization": AUTH} if logged_in else {})}
    code = request(server, method, path, body if method in ("POST", "PUT", "PATCH") else None,
                   headers)
    assert 200 <= code < 500, f"{method} {path} -> {code}"
    assert healthy(server)


RAW = [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/alerts/1/ack HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
    b"GET /sites HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 500 + b"\r\n",
    bytes(range(256)) * 4,
]


@pytest.mark.parametrize("raw", RAW, ids=range(len(RAW)))
def test_malformed_raw_requests_never_wedge_the_server(server: tuple[str, int],
                                                       raw: bytes) -> None:
    with socket.create_connection(server, timeout=10) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            reply = b""
    if reply.startswith(b"HTTP/"):
        assert not reply.split(b" ", 2)[1].startswith(b"5"), reply[:80]
    assert healthy(server)
