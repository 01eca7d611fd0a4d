"""Outgoing DICOM over TLS with certificate checks: delivery C-STORE to dcmtk's storescp
(``+tls``), ``qcd send`` to qcd's own TLS listener, the audit's C-FIND/C-MOVE/C-GET to a
pynetdicom TLS SCP. The PKI is the ``pki`` fixture of ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from qcd.app import Daemon
from qcd.ingest.scp import configure_pynetdicom
from qcd.audit.query import AuditFilters, Peer, SeriesCandidate, find_series
from qcd.audit.retrieve import retrieve_get, retrieve_move
from qcd.cli import main
from qcd.db.engine import Database
from qcd.db.models import Delivery, DeliveryState, Series, utcnow
from qcd.errors import ExportError
from qcd.outputs.delivery import (
    DeliverySettings,
    DeliveryWorker,
    Destination,
    DicomSender,
    enqueue,
)
from qcd.outputs.settings import ClientTlsSettings
from qcd.synth import SeriesSpec, make_study
from tests.conftest import free_port, make_settings
from tests.integration.conftest import mutual_tls_listener
from tests.integration.test_delivery import make_series

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _pynetdicom() -> None:
    configure_pynetdicom()


@contextmanager
def storescp_tls(pki: Path, out: Path, cert: str = "server", require_client_cert: bool = False,
                 port: int | None = None) -> Iterator[int]:
    """dcmtk's storescp as a TLS PACS (AE ``PACS``) writing into ``out``, on ``port`` or a
    free one."""
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    peer = ["-rc", "+cf", str(pki / "ca.crt")] if require_client_cert else ["-ic"]
    proc = subprocess.Popen(
        ["storescp", "+tls", str(pki / f"{cert}.key"), str(pki / f"{cert}.crt"), *peer,
         "-aet", "PACS", "-od", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # listening? (a bare TCP probe is a failed handshake it shrugs off)
            assert proc.poll() is None, "storescp exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "storescp did not listen"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def tls(pki: Path, **kw: Any) -> ClientTlsSettings:
    return ClientTlsSettings(**{"enabled": True, "ca_file": str(pki / "ca.crt"), **kw})


def mutual(pki: Path, name: str = "client", **kw: Any) -> ClientTlsSettings:
    return tls(pki, cert_file=str(pki / f"{name}.crt"), key_file=str(pki / f"{name}.key"), **kw)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[tuple[Database, list[tuple[Path, str]]]]:
    """A migrated SQLite database and two small Part 10 files (stand-ins for SR/SEG)."""
    db = Database(f"sqlite:///{tmp_path}/qcd.db")
    db.upgrade()
    paths = make_study(tmp_path / "objects", [SeriesSpec("CT", 2, "x")], 16)
    files = [(p, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID))
             for p in paths]
    yield db, files
    db.dispose()


def _queue(db: Database, files: list[tuple[Path, str]], dest: Destination) -> None:
    series_id = make_series(db)
    for path, uid in files:
        enqueue(db, series_id, "SR", uid, path, [dest])


def _rows(db: Database) -> list[Delivery]:
    with db.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def _received(out: Path) -> int:
    return sum(1 for p in out.iterdir() if p.is_file()) if out.exists() else 0


# --------------------------------------------------------------------------- delivery


def test_delivery_over_tls_with_the_sites_ca(
    pki: Path, tmp_path: Path, outbox: tuple[Database, list[tuple[Path, str]]]
) -> None:
    db, files = outbox
    with storescp_tls(pki, tmp_path / "pacs") as port:
        dest = Destination("pacs", "127.0.0.1", port, "PACS", timeout=10, tls=tls(pki))
        _queue(db, files, dest)
        counts = DeliveryWorker(db, DeliverySettings(destinations=(dest,))).sweep()
    assert counts["sent"] == 2
    assert [r.state for r in _rows(db)] == [DeliveryState.SENT] * 2
    assert _received(tmp_path / "pacs") == 2


def test_server_certificate_of_a_rogue_ca_is_refused_and_retried_later(
    pki: Path, tmp_path: Path, outbox: tuple[Database, list[tuple[Path, str]]]
) -> None:
    db, files = outbox
    port = free_port()
    dest = Destination("pacs", "127.0.0.1", port, "PACS", timeout=10, tls=tls(pki))
    _queue(db, files, dest)
    settings = DeliverySettings(destinations=(dest,), backoff_seconds=30)
    worker = DeliveryWorker(db, settings)
    with storescp_tls(pki, tmp_path / "rogue", cert="rogue-server", port=port):
        counts = worker.sweep()
    assert counts == {"claimed": 2, "sent": 0, "retried": 2, "dead": 0}
    rows = _rows(db)
    assert all(r.state == DeliveryState.PENDING and r.attempts == 1 for r in rows)
    assert all("certificate verify failed" in (r.last_error or "") for r in rows)
    assert all(r.next_attempt_at is not None and r.next_attempt_at > utcnow() for r in rows)
    assert _received(tmp_path / "rogue") == 0  # nothing left qcd for the impostor
    # the real PACS is back on that address: the retry delivers
    with storescp_tls(pki, tmp_path / "pacs", port=port):
        later = worker.sweep(now=utcnow() + dt.timedelta(seconds=31))
    assert later["sent"] == 2
    assert [(r.state, r.attempts) for r in _rows(db)] == [(DeliveryState.SENT, 2)] * 2
    assert _received(tmp_path / "pacs") == 2


@pytest.mark.parametrize(("check_hostname", "server_name", "delivered"), [
    (True, "", False),                  # certificate names pacs.example.org, we dial 127.0.0.1
    (True, "pacs.example.org", True),   # the name the certificate carries
    (True, "other.example.org", False),
    (False, "", True),                  # check off: any certificate of the CA will do
])
def test_host_name_check(pki: Path, tmp_path: Path, check_hostname: bool, server_name: str,
                         delivered: bool) -> None:
    paths = make_study(tmp_path / "objects", [SeriesSpec("CT", 1, "x")], 16)
    with storescp_tls(pki, tmp_path / "pacs", cert="elsewhere") as port:
        dest = Destination("pacs", "127.0.0.1", port, "PACS", timeout=10,
                           tls=tls(pki, check_hostname=check_hostname, server_name=server_name))
        [outcome] = DicomSender().send(dest, paths)
    if delivered:
        assert outcome.status == 0
    else:
        assert outcome.status is None and not outcome.permanent  # retried later
        assert "mismatch" in outcome.comment
    assert _received(tmp_path / "pacs") == int(delivered)


@pytest.mark.parametrize(("client", "delivered"), [
    (None, False),        # the PACS requires a client certificate; we offer none
    ("rogue", False),     # self-signed: not from the CA the PACS trusts
    ("client", True),
])
def test_mutual_tls(pki: Path, tmp_path: Path, client: str | None, delivered: bool) -> None:
    paths = make_study(tmp_path / "objects", [SeriesSpec("CT", 2, "x")], 16)
    with storescp_tls(pki, tmp_path / "pacs", require_client_cert=True) as port:
        dest = Destination("pacs", "127.0.0.1", port, "PACS", timeout=10,
                           tls=mutual(pki, client) if client else tls(pki))
        outcomes = DicomSender().send(dest, paths)
    assert [o.status for o in outcomes] == ([0, 0] if delivered else [None, None])
    assert not any(o.permanent for o in outcomes)
    assert _received(tmp_path / "pacs") == (2 if delivered else 0)


def test_plain_sender_meets_a_tls_pacs_and_fails(pki: Path, tmp_path: Path) -> None:
    paths = make_study(tmp_path / "objects", [SeriesSpec("CT", 1, "x")], 16)
    with storescp_tls(pki, tmp_path / "pacs") as port:
        [outcome] = DicomSender().send(Destination("pacs", "127.0.0.1", port, "PACS",
                                                   timeout=5), paths)
    assert outcome.status is None


# --------------------------------------------------------------------------- qcd send


def test_qcd_send_over_mutual_tls_to_the_qcd_listener(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = Daemon(make_settings(
        tmp_path,
        **mutual_tls_listener(pki),
    ), registry={})
    daemon.start()
    try:
        make_study(tmp_path / "in", [SeriesSpec("CT", 3, "CT")], 16)
        to = ["--to", f"127.0.0.1:{daemon.scp.port}"]
        ca = ["--tls-ca", str(pki / "ca.crt")]
        me = ["--tls-cert", str(pki / "client.crt"), "--tls-key", str(pki / "client.key")]
        assert main(["send", str(tmp_path / "in"), *to, *ca, *me]) == 0
        assert "sent 3 of 3" in capsys.readouterr().out
        assert main(["send", str(tmp_path / "in"), *to, "--tls-ca", str(pki / "rogue-ca.crt"),
                     *me]) == 3
        assert "certificate verify failed" in capsys.readouterr().err
        assert main(["send", str(tmp_path / "in"), *to, *ca]) == 3  # no client certificate
        assert main(["send", str(tmp_path / "in"), *to]) == 3  # plain TCP to a TLS port
        loose = tmp_path / "loose.key"
        loose.write_bytes((pki / "client.key").read_bytes())
        loose.chmod(0o644)
        assert main(["send", str(tmp_path / "in"), *to, *ca, "--tls-cert",
                     str(pki / "client.crt"), "--tls-key", str(loose)]) == 2
        assert "mode 0644" in capsys.readouterr().err
    finally:
        daemon.stop()
    with daemon.db.session() as session:
        assert session.scalar(select(Series.instance_count)) == 3


# --------------------------------------------------------------------------- audit


@contextmanager
def qr_scp(pki: Path) -> Iterator[int]:
    """A pynetdicom Query/Retrieve SCP over TLS that requires a client certificate of the
    site's CA: one study with one PT series; C-MOVE/C-GET answer with no sub-operations."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    context.load_verify_locations(str(pki / "ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        ds = Dataset()
        ds.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        ds.StudyInstanceUID = "1.2.3.4"
        ds.StudyDate = "20240310"
        if ds.QueryRetrieveLevel == "SERIES":
            ds.SeriesInstanceUID = "1.2.3.4.5"
            ds.Modality = "PT"
        yield 0xFF00, ds

    def on_move(event: evt.Event) -> Iterator[Any]:
        yield "127.0.0.1", 1  # a destination that is never contacted: no sub-operations
        yield 0

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield 0

    ae = AE(ae_title="PACS")
    for model in (StudyRootQueryRetrieveInformationModelFind,
                  StudyRootQueryRetrieveInformationModelMove,
                  StudyRootQueryRetrieveInformationModelGet):
        ae.add_supported_context(model)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move),
                                           (evt.EVT_C_GET, on_get)])
    try:
        yield port
    finally:
        assert server is not None
        server.shutdown()


def test_audit_query_and_retrieve_over_mutual_tls(pki: Path) -> None:
    candidate = SeriesCandidate("1.2.3.4", "1.2.3.4.5", "PT", "20240310", None, None, None,
                                None, None)
    with qr_scp(pki) as port:
        good = Peer("127.0.0.1", port, "PACS", "QCD", 10, mutual(pki))
        assert [c.series_uid for c in find_series(good, AuditFilters())] == ["1.2.3.4.5"]
        assert retrieve_move(good, candidate, "QCD").ok
        assert retrieve_get(good, candidate, None).ok  # type: ignore[arg-type]

        rogue = Peer("127.0.0.1", port, "PACS", "QCD", 10,
                     mutual(pki, ca_file=str(pki / "rogue-ca.crt")))
        with pytest.raises(ExportError, match="certificate verify failed"):
            find_series(rogue, AuditFilters())
        moved = retrieve_move(rogue, candidate, "QCD")
        assert not moved.ok and "certificate verify failed" in moved.error

        anonymous = Peer("127.0.0.1", port, "PACS", "QCD", 10, tls(pki))
        with pytest.raises(ExportError):
            find_series(anonymous, AuditFilters())
        assert not retrieve_get(anonymous, candidate, None).ok  # type: ignore[arg-type]
