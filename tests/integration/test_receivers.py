"""``ingest.processes``: extra receiving processes on the listener's port.

Real storescu pushes, real processes: the kernel spreads associations over the daemon
and its receivers, nothing acknowledged is lost when a receiver is killed, the daemon
restarts it, and receivers never outlive their daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qcd.app import Daemon
from qcd.db.models import Instance, Series, SeriesState
from qcd.errors import ListenerError
from qcd.ingest.events import MetricsEvents
from qcd.ingest.filemeta import split_part10
from qcd.ingest.receivers import ReceiverPool
from qcd.metrics import Metrics
from qcd.synth import SeriesSpec, make_study
from tests.conftest import free_port, make_settings
from tests.integration.conftest import count_own_stores
from tests.integration.dcmtk import PushResult, echoscu, push_concurrently

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One CT series of 160 small slices (one transfer syntax: one association a lane)."""
    return make_study(tmp_path_factory.mktemp("ct"), [SeriesSpec("CT", 160, "CT", "CHEST")],
                      size=64, seed=11)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def start(daemons: list[Daemon], tmp_path: Path, db_url: str | None = None,
          **env: str) -> Daemon:
    daemon = Daemon(make_settings(tmp_path, db_url, QCD_WORKERS__THREADS="0", **env),
                    registry={})
    daemon.start()
    daemons.append(daemon)
    return daemon


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def metric(daemon: Daemon, name: str) -> float:
    """Sum of a metric's samples as /metrics serves them (the relay included)."""
    assert daemon.http is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http.port}/metrics") as rsp:
        body = rsp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name) and not line.startswith("#")
               and line[len(name)] in "{ ")


def assert_durable(daemon: Daemon, acknowledged: list[Path]) -> None:
    """Every acknowledged file has its row and its intact data set in the spool."""
    with daemon.db.session() as s:
        paths = {i.sop_uid: i.path for i in s.scalars(select(Instance))}
    for source in acknowledged:
        meta, data = split_part10(source.read_bytes())
        sop = str(meta.MediaStorageSOPInstanceUID)
        assert sop in paths, f"acknowledged {source.name} has no row"
        assert split_part10((daemon.spool.root / paths[sop]).read_bytes())[1] == data


def test_receivers_share_the_port_and_lose_nothing(
    daemons: list[Daemon], tmp_path: Path, db_url: str, series: list[Path]
) -> None:
    daemon = start(daemons, tmp_path, db_url, QCD_INGEST__PROCESSES="3")
    receivers = daemon.receivers.pids()
    assert len(receivers) == 2 and os.getpid() not in receivers
    own = count_own_stores(daemon)

    result = push_concurrently(series, daemon.scp.port, lanes=16)

    assert result.failed == {} and sorted(result.acknowledged) == sorted(series)
    assert 0 < len(own) < len(series), "the receivers took none (or all) of the work"
    assert_durable(daemon, result.acknowledged)
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == len(series)
    # reports from the receivers reach the daemon's /metrics and its completion sweep
    wait_for(lambda: metric(daemon, "qcd_instances_received_total") == len(series))
    assert metric(daemon, "qcd_associations_total") == 16
    assert metric(daemon, "qcd_receiving_processes") == 3

    def complete() -> bool:
        with daemon.db.session() as s:
            return set(s.scalars(select(Series.state))) == {SeriesState.COMPLETE}

    wait_for(complete)
    daemon.stop()
    daemons.remove(daemon)
    for pid in receivers:  # drained and gone, not orphaned
        assert not _alive(pid)


def test_a_killed_receiver_loses_nothing_and_is_restarted(
    daemons: list[Daemon], tmp_path: Path, series: list[Path]
) -> None:
    daemon = start(daemons, tmp_path, QCD_INGEST__PROCESSES="2")
    [victim] = daemon.receivers.pids()
    own = count_own_stores(daemon)
    pushed: list[PushResult] = []
    killed = threading.Event()

    def push() -> None:
        # the kernel may hand all 8 associations to the daemon (1 in 256): push the
        # series again (one row per instance) until the receiver has been killed
        for _ in range(5):
            pushed.append(push_concurrently(series, daemon.scp.port, lanes=8))
            if killed.is_set():
                return

    pusher = threading.Thread(target=push)
    pusher.start()

    def receiver_busy() -> bool:
        with daemon.db.session() as s:
            stored = s.scalar(select(func.count()).select_from(Instance)) or 0
        return stored - len(own) >= 10  # the receiver has acknowledged some

    wait_for(receiver_busy, timeout=60)
    os.kill(victim, signal.SIGKILL)
    killed.set()
    pusher.join(120)
    acknowledged = [path for result in pushed for path in result.acknowledged]
    assert acknowledged, "nothing acknowledged before the kill"
    assert_durable(daemon, acknowledged)

    wait_for(lambda: daemon.receivers.alive() == 1 and daemon.receivers.pids() != [victim])
    assert metric(daemon, "qcd_receiver_restarts_total") == 1
    again = push_concurrently(series, daemon.scp.port, lanes=8)
    assert again.failed == {} and len(again.acknowledged) == len(series)
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == len(series)
    assert_durable(daemon, series)


def test_receivers_stop_when_the_daemon_is_killed(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QCD_")},
           "QCD_INGEST__HOST": "127.0.0.1", "QCD_INGEST__PORT": str(port),
           "QCD_INGEST__PROCESSES": "3", "QCD_HTTP__HOST": "127.0.0.1",
           "QCD_HTTP__PORT": str(http_port), "QCD_SPOOL__PATH": str(tmp_path / "spool"),
           "QCD_SPOOL__MIN_FREE_BYTES": "0",
           "QCD_DATABASE__URL": f"sqlite:///{tmp_path}/qcd.db"}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qcd.cli", "serve"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ready(http_port) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        receivers = [pid for pid in _children(proc.pid) if b"spawn_main" in _cmdline(pid)]
        assert len(receivers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # each notices the broken pipe at its next heartbeat, drains and exits
        wait_for(lambda: not any(_alive(pid) for pid in receivers), timeout=20)
        assert echoscu(port) != 0, "something still listens on the daemon's port"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_receiver_that_cannot_start_fails_the_start(tmp_path: Path) -> None:
    # nothing listens on that port: the receiver's database connection is refused
    settings = make_settings(tmp_path, f"postgresql+psycopg://qcd@127.0.0.1:{free_port()}/qcd")
    pool = ReceiverPool(settings, MetricsEvents(Metrics()), Metrics(), count=1)
    with pytest.raises(ListenerError, match="receiving process 1 exited with code 1"):
        pool.start(free_port())
    assert pool.alive() == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    """Child processes of every thread of ``pid`` (a thread that ends while we read has
    none: its /proc entry vanishes between the listing and the read)."""
    def of(task: Path) -> list[int]:
        try:
            return [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            return []

    return [c for task in Path(f"/proc/{pid}/task").iterdir() for c in of(task)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False
