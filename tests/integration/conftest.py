"""Fixtures shared by integration tests: a real HTTP receiver for webhooks, a test PKI,
a counter of the stores a daemon's own listener handles (the SQLite ``sqlite_db``
fixture lives in tests/conftest.py)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from qcd.app import Daemon


def count_own_stores(daemon: Daemon) -> list[int]:
    """Count the stores the daemon's own listener handles; with ``ingest.processes`` > 1
    the rest went to its receiving processes."""
    own: list[int] = []
    store = daemon.service.store

    def counting(*args: Any, **kwargs: Any) -> Any:
        own.append(1)
        return store(*args, **kwargs)

    daemon.service.store = counting  # type: ignore[method-assign]
    return own


def mutual_tls_listener(pki: Path) -> dict[str, str]:
    """Settings for qcd's DICOM listener with TLS and required client certificates."""
    return {"QCD_INGEST__TLS__ENABLED": "true",
            "QCD_INGEST__TLS__CERT_FILE": str(pki / "server.crt"),
            "QCD_INGEST__TLS__KEY_FILE": str(pki / "server.key"),
            "QCD_INGEST__TLS__CA_FILE": str(pki / "ca.crt"),
            "QCD_INGEST__TLS__REQUIRE_CLIENT_CERT": "true"}


@dataclass
class Receiver:
    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on a free loopback port recording each POST."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(d: Path, name: str, ca: str, san: str) -> None:
    """``name``.key/.crt: a leaf certificate signed by ``ca``.key/.crt with ``san``."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
             "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test PKI (keys are written mode 0600 by openssl):

    * ``ca``: the site's CA; ``server`` and ``client`` signed by it for 127.0.0.1/localhost;
      ``elsewhere`` signed by it for ``pacs.example.org`` only (host name mismatch);
    * ``rogue``: a self-signed client certificate;
    * ``rogue-ca`` and ``rogue-server``: another CA and a server certificate for
      127.0.0.1/localhost that it signed.
    """
    d = tmp_path_factory.mktemp("pki")
    for ca, cn in (("ca", "qcd test CA"), ("rogue-ca", "rogue CA")):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 f"/CN={cn}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)
    local = "IP:127.0.0.1,DNS:localhost"
    _signed(d, "server", "ca", local)
    _signed(d, "client", "ca", local)
    _signed(d, "elsewhere", "ca", "DNS:pacs.example.org")
    _signed(d, "rogue-server", "rogue-ca", local)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=rogue", "-keyout", "rogue.key", "-out", "rogue.crt", cwd=d)
    return d
