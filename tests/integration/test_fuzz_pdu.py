"""Hostile peers on the DICOM port: malformed PDUs sent over a raw socket.

Whatever a peer sends (wrong PDU types, lengths that lie, oversize claims, a
P-DATA before any association, item lengths that overrun, random bytes, slowloris
partial sends), the Storage SCP must drop that connection and keep serving others:
after every attack a normal C-ECHO still succeeds, and a slowloris connection is
cut after ``ingest.network_timeout``. Inputs tried and findings: docs/RELIABILITY.md.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcd.app import Daemon
from tests.conftest import make_settings
from tests.integration.dcmtk import pynetdicom_echo

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"


def _pdu(kind: int, payload: bytes, claimed: int | None = None) -> bytes:
    return struct.pack(">BBI", kind, 0, len(payload) if claimed is None else claimed) + payload


def _item(kind: int, payload: bytes, claimed: int | None = None) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload) if claimed is None else claimed) + payload


def associate_rq(called: bytes = b"QCD", app_len: int | None = None,
                 pc_len: int | None = None) -> bytes:
    """An A-ASSOCIATE-RQ for Verification, optionally with lying item lengths."""
    app = _item(0x10, b"1.2.840.10008.3.1.1.1", app_len)
    syntax = _item(0x30, VERIFICATION.encode()) + _item(0x40, b"1.2.840.10008.1.2")
    pc = _item(0x20, b"\x01\x00\x00\x00" + syntax, pc_len)
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    fixed = (struct.pack(">HH", 1, 0) + called.ljust(16) + b"FUZZ".ljust(16) + b"\x00" * 32)
    return _pdu(0x01, fixed + app + pc + user)


ATTACKS: dict[str, bytes] = {
    "unknown-pdu-type": _pdu(0xFF, b"\x00" * 10),
    "zero-length-associate": _pdu(0x01, b""),
    "oversize-claim": _pdu(0x01, b"\x00" * 8, claimed=0xFFFFFFF0),
    "pdata-before-association": _pdu(0x04, _item(0, b"") + b"\x00\x00\x00\x02\x01\x03"),
    "release-before-association": _pdu(0x05, b"\x00" * 4),
    "abort-before-association": _pdu(0x07, b"\x00" * 4),
    "app-context-overruns": associate_rq(app_len=0xFFFF),
    "presentation-context-overruns": associate_rq(pc_len=0x7FFF),
    "presentation-context-too-short": associate_rq(pc_len=2),
    "short-fixed-fields": _pdu(0x01, struct.pack(">HH", 1, 0) + b"QCD"),
    "header-only": b"\x01\x00",
    "nul-called-ae": associate_rq(called=b"\x00" * 16),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("fuzz")
    d = Daemon(make_settings(tmp, QCD_INGEST__NETWORK_TIMEOUT="2", QCD_INGEST__ACSE_TIMEOUT="2",
                             QCD_INGEST__MAX_ASSOCIATIONS="4"))
    d.start()
    yield d
    d.stop()


def echo_ok(port: int) -> bool:
    return pynetdicom_echo(port)


def serves_again(port: int, within: float = 5.0) -> bool:
    """A C-ECHO succeeds within ``within`` seconds (network_timeout is 2 s here).

    A malformed request can hold its association slot until the timeouts cut it, so
    with every slot taken a well-behaved peer may have to retry once.
    """
    deadline = time.monotonic() + within
    while not echo_ok(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def send_raw(port: int, data: bytes, wait: float = 0.3) -> bytes:
    """Send bytes, read whatever comes back until the server closes or ``wait`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(wait)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return got


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_malformed_pdu_is_dropped_and_service_continues(daemon: Daemon, name: str) -> None:
    reply = send_raw(daemon.scp.port, ATTACKS[name])
    assert not reply.startswith(b"\x02"), f"{name}: an association was accepted"
    assert serves_again(daemon.scp.port), f"{name}: the SCP stopped serving"


def test_random_bytes_never_wedge_the_scp(daemon: Daemon) -> None:
    rng = random.Random(20261126)
    for i in range(60):
        kind = rng.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, rng.randrange(256)])
        body = rng.randbytes(rng.randrange(0, 300))
        claimed = rng.choice([None, 0, rng.randrange(1 << 32)])
        data = _pdu(kind, body, claimed) if i % 3 else rng.randbytes(rng.randrange(1, 64))
        send_raw(daemon.scp.port, data, wait=0.05)
    assert serves_again(daemon.scp.port)


def test_valid_association_then_garbage_pdata_is_aborted(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.scp.port), timeout=5) as s:
        s.sendall(associate_rq())
        s.settimeout(5)
        assert s.recv(1)[:1] == b"\x02"  # A-ASSOCIATE-AC
        s.sendall(_pdu(0x04, struct.pack(">I", 0xFFFF) + b"\x01\x03" + b"\xff" * 20))
        s.settimeout(3)
        try:
            while s.recv(4096):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    assert serves_again(daemon.scp.port)


def test_slowloris_connections_are_cut_after_the_network_timeout(daemon: Daemon) -> None:
    """Fill every association slot with half-sent PDUs: service returns after the timeout."""
    socks = []
    for _ in range(6):  # more than max_associations (4)
        s = socket.create_connection(("127.0.0.1", daemon.scp.port), timeout=5)
        s.sendall(associate_rq()[:7])  # header and one byte of the body, then silence
        socks.append(s)
    try:
        assert serves_again(daemon.scp.port, within=8), "slow peers held the SCP past the timeout"
        for s in socks:  # each half-sent request is closed (or aborted) by the server
            s.settimeout(8)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()


def test_no_threads_leak_after_the_attacks(daemon: Daemon) -> None:
    """Every association thread the attacks started has ended once the timeouts pass."""
    deadline = time.monotonic() + 10
    while daemon.scp.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.25)
    assert daemon.scp.ae.active_associations == []


def test_attack_corpus_is_recorded(tmp_path: Path) -> None:
    """The named attacks stay listed in docs/RELIABILITY.md (kept in step by hand)."""
    doc = (Path(__file__).parents[2] / "docs" / "RELIABILITY.md").read_text()
    missing = [name for name in ATTACKS if name not in doc]
    assert not missing, f"docs/RELIABILITY.md does not list {missing}"
