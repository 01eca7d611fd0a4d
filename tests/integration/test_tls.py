"""DICOM over TLS with certificate checks, against dcmtk's echoscu/storescu."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qcd.app import Daemon
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings
from tests.integration.dcmtk import storescu

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server and a client certificate it signed, and a rogue self-signed client."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=qcd test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=rogue", "-keyout", "rogue.key", "-out", "rogue.crt", cwd=d)
    return d


def _echo(port: int, *tls: str) -> int:
    return subprocess.run(["echoscu", *tls, "-aec", "QCD", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


def test_tls_with_required_client_certificates(pki: Path, tmp_path: Path) -> None:
    daemon = Daemon(make_settings(
        tmp_path,
        QCD_INGEST__TLS__ENABLED="true",
        QCD_INGEST__TLS__CERT_FILE=str(pki / "server.crt"),
        QCD_INGEST__TLS__KEY_FILE=str(pki / "server.key"),
        QCD_INGEST__TLS__CA_FILE=str(pki / "ca.crt"),
        QCD_INGEST__TLS__REQUIRE_CLIENT_CERT="true",
    ))
    daemon.start()
    try:
        port = daemon.scp.port
        good = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
        assert _echo(port, *good) == 0
        assert _echo(port) != 0  # plain TCP is refused
        rogue = ["+tls", str(pki / "rogue.key"), str(pki / "rogue.crt"), "+cf", str(pki / "ca.crt")]
        assert _echo(port, *rogue) != 0  # client certificate not signed by our CA
        anonymous = ["+tla", "+cf", str(pki / "ca.crt")]
        assert _echo(port, *anonymous) != 0  # no client certificate at all
        files = make_study(tmp_path / "in", [SeriesSpec("CT", 3, "CT")], 16)
        pushed = storescu(files, port, extra=good)
        assert len(pushed.acknowledged) == 3
        # the server's certificate is checked by the client too: a wrong CA fails
        wrong_ca = ["+tls", str(pki / "client.key"), str(pki / "client.crt"),
                    "+cf", str(pki / "rogue.crt")]
        assert _echo(port, *wrong_ca) != 0
    finally:
        daemon.stop()
