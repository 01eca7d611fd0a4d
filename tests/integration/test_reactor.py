"""The event-driven association reactors (qcd.ingest.reactor) on real sockets.

An accepted association runs on them by default (``ingest.reactor = event``) and on
pynetdicom's polling loops with ``polling``; an idle association's two threads sleep
instead of waking every millisecond; the timers they now check every 50 ms still fire
(network timeout), and an ended association leaves no thread and no descriptor behind.
The ingest suites (test_ingest_dcmtk, test_fuzz_pdu, test_tls, test_receivers, ...) run
on these reactors as the default.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler

from qcd.app import Daemon
from qcd.ingest import reactor
from qcd.ingest.reactor import (
    EventDrivenAssociation,
    EventDrivenDUL,
    EventDrivenRequestHandler,
    supported,
)
from qcd.ingest.scp import StorageSCP
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"


def daemon_with(tmp_path: Path, **env: str) -> Daemon:
    d = Daemon(make_settings(tmp_path, QCD_INGEST__NETWORK_TIMEOUT="2", **env))
    d.start()
    return d


@pytest.fixture
def event_daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = daemon_with(tmp_path / "event")
    yield d
    d.stop()


def associate(port: int, network_timeout: float = 30) -> Association:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = 5
    ae.network_timeout = network_timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="QCD")
    assert assoc.is_established
    return assoc


def acceptor(daemon: Daemon, timeout: float = 5.0) -> Association:
    """The association the daemon accepted (exactly one may be open)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = daemon.scp.ae.active_associations
        if active:
            assert len(active) == 1
            return active[0]
        time.sleep(0.01)
    raise AssertionError("no accepted association")


def switches(*threads: threading.Thread) -> int:
    """Context switches so far of the given (running) threads, from /proc."""
    total = 0
    for t in threads:
        status = Path(f"/proc/self/task/{t.native_id}/status").read_text()
        total += sum(int(line.split()[1]) for line in status.splitlines()
                     if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
    return total


def open_sockets() -> int:
    """Sockets this process holds (the daemon's and the test's own SCU)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def idle_switches(daemon: Daemon, seconds: float = 1.0) -> int:
    """Context switches of an idle accepted association's two threads over ``seconds``."""
    assoc = associate(daemon.scp.port)
    try:
        accepted = acceptor(daemon)
        assert accepted.dul.is_alive()
        time.sleep(0.2)  # past negotiation
        before = switches(accepted, accepted.dul)
        time.sleep(seconds)
        return switches(accepted, accepted.dul) - before
    finally:
        assoc.release()


def test_pinned_pynetdicom_is_the_supported_series() -> None:
    assert supported()  # the dependency pin (<4) and the copied loops must agree
    assert supported("3.0.9") and not supported("3.1.0") and not supported("4.0.0")


def test_another_pynetdicom_series_falls_back_to_polling_and_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    scp = SimpleNamespace(settings=SimpleNamespace(reactor="event"))
    assert StorageSCP._request_handler(scp) is EventDrivenRequestHandler  # type: ignore[arg-type]
    monkeypatch.setattr(reactor, "supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="qcd.ingest.scp"):
        assert StorageSCP._request_handler(scp) is RequestHandler  # type: ignore[arg-type]
    assert "associations poll" in caplog.text
    scp.settings.reactor = "polling"
    assert StorageSCP._request_handler(scp) is RequestHandler  # type: ignore[arg-type]


def test_accepted_associations_are_event_driven_and_polling_is_a_setting(
        tmp_path: Path, event_daemon: Daemon) -> None:
    assoc = associate(event_daemon.scp.port)
    try:
        accepted = acceptor(event_daemon)
        assert isinstance(accepted, EventDrivenAssociation)
        assert isinstance(accepted.dul, EventDrivenDUL)
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()

    polling = daemon_with(tmp_path / "polling", QCD_INGEST__REACTOR="polling")
    try:
        assoc = associate(polling.scp.port)
        try:
            accepted = acceptor(polling)
            assert type(accepted) is Association and type(accepted.dul) is not EventDrivenDUL
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
    finally:
        polling.stop()


def test_an_idle_association_sleeps_instead_of_polling(tmp_path: Path,
                                                       event_daemon: Daemon) -> None:
    event = idle_switches(event_daemon)
    polling_daemon = daemon_with(tmp_path / "polling", QCD_INGEST__REACTOR="polling")
    try:
        polling = idle_switches(polling_daemon)
    finally:
        polling_daemon.stop()
    # two threads waking every 50 ms: ~40 a second; pynetdicom's loops: ~2000
    assert event < 150, event
    assert polling > 5 * event, (polling, event)


def test_the_network_timeout_still_ends_an_idle_association(event_daemon: Daemon) -> None:
    assoc = associate(event_daemon.scp.port)
    accepted = acceptor(event_daemon)
    start = time.monotonic()
    accepted.join(15)
    waited = time.monotonic() - start
    assert not accepted.is_alive() and not accepted.dul.is_alive()
    assert 1.5 <= waited <= 8.0, waited  # network_timeout is 2 s here; slack for a busy host
    deadline = time.monotonic() + 5
    while (assoc.is_established) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_released or assoc.is_aborted


def test_ended_associations_leave_no_thread_or_descriptor(event_daemon: Daemon) -> None:
    port = event_daemon.scp.port
    associate(port).release()
    time.sleep(0.3)
    sockets = open_sockets()
    threads = threading.active_count()
    for i in range(20):
        assoc = associate(port)
        assert assoc.send_c_echo().Status == 0
        if i % 2:
            assoc.release()
        else:
            assoc.abort()
    deadline = time.monotonic() + 5
    while event_daemon.scp.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert event_daemon.scp.ae.active_associations == []
    time.sleep(0.3)
    assert threading.active_count() <= threads
    assert open_sockets() <= sockets  # each event-driven DUL had a wake-up socket pair
