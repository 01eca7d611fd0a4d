"""Extra processes receiving DICOM on the daemon's port (``ingest.processes``).

One Python process receives what about one core gives it: ~7 ms of CPU an instance of
512 KB on 4 associations, Python work spread over pynetdicom, the spool and the database
(docs/BENCHMARKS.md), so a host with idle cores can take more by running more processes. Each receiver here
is a whole ingest path of its own (Storage SCP, IngestService, database engine, spool
handle) bound to the same port with ``SO_REUSEPORT``; the kernel gives each new
connection to one of the listeners. Durability needs nothing shared between
them: spool temp files are unique, ``link()`` never overwrites, rows are inserted with
``ON CONFLICT DO NOTHING``, and every process answers Success only after its own fsync
and COMMIT.

What the daemon needs back comes through a pipe: one
:class:`~qcd.ingest.events.StoreReport` per instance (metrics, and the quiet period of
its series: ``CLOCK_MONOTONIC`` is shared by all processes on Linux) and association
events and counts. The daemon restarts a receiver that dies, with back-off, and stops
them all on shutdown (SIGTERM: each drains its associations like the daemon does). A
receiver whose daemon is gone (its pipe breaks) stops by itself.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from qcd.config import Settings
from qcd.errors import ListenerError
from qcd.ingest.events import MetricsEvents, StoreReport
from qcd.ingest.scp import StorageSCP, configure_pynetdicom
from qcd.ingest.service import build_ingest
from qcd.logsetup import configure_logging
from qcd.metrics import Metrics

LOGGER = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 0.5
"""How often a receiver reports its open associations (and notices a dead daemon)."""
START_TIMEOUT = 60.0
"""Seconds a new receiver may take to import, connect to the database and bind."""
RESTART_BACKOFF = (1.0, 60.0)
"""First and longest wait before restarting a receiver that died; the wait doubles
while receivers keep dying within a minute of their start."""


class PipeEvents:
    """A receiver's :class:`~qcd.ingest.events.IngestEvents`: everything goes to the daemon.

    Sends are serialised (one pipe, many association threads). A broken pipe means the
    daemon is gone: ``open`` turns false and the receiver stops.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.open = True

    def stored(self, report: StoreReport) -> None:
        self._send(("stored", report))

    def association(self, calling_ae: str, result: str) -> None:
        self._send(("association", calling_ae, result))

    def active(self, count: int) -> None:
        self._send(("active", count))

    def ready(self) -> None:
        self._send(("ready",))

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            if not self.open:
                return
            try:
                self._conn.send(message)
            except (OSError, EOFError, ValueError):
                self.open = False


def run_receiver(settings: Settings, port: int, conn: Connection) -> None:
    """Entry point of one receiving process (spawned by :class:`ReceiverPool`)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    configure_logging(settings.logging)
    configure_pynetdicom()
    events = PipeEvents(conn)
    db, _, service = build_ingest(settings, events)
    scp = StorageSCP(settings.node.ae_title, dataclasses.replace(settings.ingest, port=port),
                     service, events, shared_port=True)
    scp.start()
    events.ready()
    while events.open and not stop.wait(HEARTBEAT_SECONDS):
        events.active(scp.active())
    if not events.open:
        LOGGER.error("receiver %d: the daemon is gone; stopping", os.getpid())
    scp.stop()
    service.close()
    db.dispose()
    conn.close()


@dataclasses.dataclass
class _Slot:
    """One receiver position: the process now in it and what it last reported."""

    index: int
    process: BaseProcess | None = None
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    active: int = 0
    started: float = 0.0
    backoff: float = RESTART_BACKOFF[0]


class ReceiverPool:
    """``count`` receiving processes beside the daemon's own listener.

    Parameters
    ----------
    settings
        The daemon's settings, passed whole to every receiver.
    events
        Where the receivers' reports end (the daemon's metrics and quiet clock).
    metrics
        Restart counter.
    count
        Receivers to run (``ingest.processes - 1``).
    """

    def __init__(self, settings: Settings, events: MetricsEvents, metrics: Metrics,
                 count: int) -> None:
        self.settings = settings
        self.events = events
        self.metrics = metrics
        self.slots = [_Slot(i) for i in range(count)]
        self.port = 0
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._started = threading.Event()  # restarts only once every receiver listened
        self._lock = threading.Lock()

    def start(self, port: int) -> None:
        """Start every receiver on ``port`` (the daemon's bound port) and wait until each
        listens.

        Raises
        ------
        ListenerError
            A receiver exited or did not listen within :data:`START_TIMEOUT`.
        """
        self.port = port
        for slot in self.slots:
            self._spawn(slot)
        deadline = time.monotonic() + START_TIMEOUT
        for slot in self.slots:
            while not slot.ready.wait(0.1):
                process = slot.process
                exited = process is not None and process.exitcode is not None
                if exited or time.monotonic() > deadline:
                    self.stop(0.0)
                    reason = (f"exited with code {process.exitcode}" if exited and process
                              else f"did not listen within {START_TIMEOUT:.0f} s")
                    raise ListenerError(f"DICOM receiving process {slot.index + 1} {reason} "
                                        f"(port {port}; see its log above)")
        self._started.set()
        LOGGER.info("%d extra DICOM receiving process(es) on port %d", len(self.slots), port)

    def alive(self) -> int:
        """Receivers running and listening now."""
        return sum(1 for s in self.slots if s.ready.is_set()
                   and s.process is not None and s.process.is_alive())

    def active(self) -> int:
        """Associations the receivers reported open at their last heartbeat."""
        return sum(s.active for s in self.slots if s.ready.is_set())

    def pids(self) -> list[int]:
        """Process ids of the running receivers (for tests and diagnostics)."""
        return [s.process.pid for s in self.slots
                if s.process is not None and s.process.pid is not None and s.ready.is_set()]

    def terminate(self) -> None:
        """Ask every receiver to drain and stop (SIGTERM); :meth:`join` waits for them."""
        self._stopping.set()
        with self._lock:
            for slot in self.slots:
                if slot.process is not None and slot.process.is_alive():
                    slot.process.terminate()

    def join(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the receivers to exit, kill the rest; return
        how many had to be killed."""
        deadline = time.monotonic() + timeout
        killed = 0
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                LOGGER.warning("DICOM receiver %d (pid %s) did not stop in time; killed",
                               slot.index + 1, process.pid)
                process.kill()
                process.join(5.0)
                killed += 1
        return killed

    def stop(self, timeout: float) -> int:
        """:meth:`terminate`, then :meth:`join`."""
        self.terminate()
        return self.join(timeout)

    # -- internals ----------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            reader, writer = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=run_receiver, args=(self.settings, self.port, writer),
                name=f"qcd-receiver-{slot.index + 1}", daemon=True)
            slot.ready.clear()
            slot.active = 0
            slot.process, slot.started = process, time.monotonic()
            process.start()
            writer.close()  # ours: the reader sees EOF once the receiver's copy closes
        threading.Thread(target=self._listen, args=(slot, process, reader),
                         name=f"qcd-receiver-{slot.index + 1}-pipe", daemon=True).start()

    def _listen(self, slot: _Slot, process: BaseProcess, conn: Connection) -> None:
        """Apply one receiver's reports until its pipe closes; then restart it."""
        try:
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "stored":
                    self.events.stored(message[1])
                elif kind == "association":
                    self.events.association(message[1], message[2])
                elif kind == "active":
                    slot.active = int(message[1])
                elif kind == "ready":
                    slot.ready.set()
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
        process.join()
        slot.ready.clear()
        slot.active = 0
        if self._stopping.is_set() or not self._started.is_set():
            return
        lived = time.monotonic() - slot.started
        if lived > RESTART_BACKOFF[1]:
            slot.backoff = RESTART_BACKOFF[0]
        LOGGER.error("DICOM receiver %d (pid %s) exited with code %s after %.0f s; "
                     "restarting in %.0f s", slot.index + 1, process.pid, process.exitcode,
                     lived, slot.backoff)
        self.metrics.receiver_restarts.inc()
        if self._stopping.wait(slot.backoff):
            return
        slot.backoff = min(slot.backoff * 2, RESTART_BACKOFF[1])
        self._spawn(slot)
