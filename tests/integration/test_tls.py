"""Incoming DICOM over TLS with certificate checks, against dcmtk's echoscu/storescu.

The PKI is the ``pki`` fixture of ``tests/integration/conftest.py``; outgoing TLS is
tested in ``test_tls_outgoing.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qcd.app import Daemon
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings
from tests.integration.conftest import count_own_stores, mutual_tls_listener
from tests.integration.dcmtk import storescu

pytestmark = pytest.mark.integration


def _echo(port: int, *tls: str) -> int:
    return subprocess.run(["echoscu", *tls, "-aec", "QCD", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("processes", [1, 3])
def test_tls_with_required_client_certificates(pki: Path, tmp_path: Path,
                                               processes: int) -> None:
    """Every receiving process (``ingest.processes``) builds and enforces the same TLS."""
    daemon = Daemon(make_settings(
        tmp_path,
        QCD_INGEST__PROCESSES=str(processes),
        **mutual_tls_listener(pki),
    ), registry={})
    daemon.start()
    try:
        port = daemon.scp.port
        good = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
        tries = 1 if processes == 1 else 12  # the kernel picks a listener per connection
        own = count_own_stores(daemon)
        for path in make_study(tmp_path / "one", [SeriesSpec("CT", tries, "CT")], 16):
            assert len(storescu([path], port, extra=good).acknowledged) == 1
            assert _echo(port) != 0  # plain TCP is refused
        if processes > 1:  # the receivers took part: each made its own TLS context
            assert len(own) < tries
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
