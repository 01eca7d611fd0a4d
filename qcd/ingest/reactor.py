"""Event-driven reactors for the associations the Storage SCP accepts.

Why: pynetdicom runs two threads per association that poll: the DUL reactor sleeps 1 ms
whenever it finds nothing to do, and the association reactor sleeps 1 ms on every turn
(pynetdicom 3.0, ``dul.py`` ``_run_loop_delay``, ``association.py`` ``_run_reactor``;
its own TODO: "make this event based"). Each wake-up takes the GIL. On a busy host that
is most of ingest's context switches (203 per instance on 4 associations, measured with
``perf`` in docs/BENCHMARKS.md), and each instance waits up to 1 ms twice: once before
its message is noticed, once before its response leaves.

Here both threads sleep until something happens instead:

- the DUL thread blocks in ``select`` on the peer's socket and on a wake-up socket pair
  that is written whenever a primitive is queued for it (a response to send, an abort,
  a transport event) or it is told to stop;
- the association thread waits on an event set when a DIMSE message is complete or a
  release/abort primitive arrives, when the DUL stops and when the association is
  killed.

Both still wake every :data:`IDLE_WAIT_S` to check their timers (ARTIM, network
timeout), as the polling loops did every millisecond.

The two loops are pynetdicom 3.0.4's (MIT licence) with only the sleeps replaced; they
use its private attributes, so :func:`supported` allows them only on the pynetdicom
series they were copied from (the dependency is pinned ``<4``) and the Storage SCP
falls back to pynetdicom's own reactors elsewhere. Only acceptor associations of the
Storage SCP use them: qcd's own SCU associations (delivery, audit) are unchanged.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler

# the loops log as pynetdicom's own did, so its log configuration and filters still apply
DUL_LOGGER = logging.getLogger("pynetdicom.dul")
ASSOC_LOGGER = logging.getLogger("pynetdicom.association")

IDLE_WAIT_S = 0.05
"""Longest sleep of either thread with nothing to do: the resolution of its timers."""
SUPPORTED_SERIES = "3.0."
"""The pynetdicom series whose private reactor internals this module follows."""


def supported(version: str = pynetdicom.__version__) -> bool:
    """Whether the event-driven reactors may replace this pynetdicom's polling ones."""
    return version.startswith(SUPPORTED_SERIES)


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after every put, so a sleeping consumer sees it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL service provider whose reactor sleeps in ``select``."""

    def __init__(self, assoc: Association, activity: threading.Event) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # a send from another thread must not race the close: its file descriptor
        # number could by then belong to another file
        self._wake_lock = threading.Lock()
        self._wake_closed = False
        # everything that can give the reactor work, from any thread, wakes it
        self.event_queue = _WakingQueue(self.notify)
        self.to_provider_queue = _WakingQueue(self.notify)
        # what the association thread waits for
        self.to_user_queue = _WakingQueue(activity.set)
        self._activity = activity

    def notify(self) -> None:
        """Wake the reactor (from any thread; harmless once it has stopped)."""
        if threading.get_ident() == self.ident:
            return  # the reactor queues events for itself while awake: no system call
        with self._wake_lock:
            if self._wake_closed:
                return
            try:
                self._wake_w.send(b"\0")
            except OSError:  # buffer full: a wake-up is pending anyway
                pass

    def kill_dul(self) -> None:
        super().kill_dul()
        self.notify()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.notify()
        return super().stop_dul()

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:  # nothing left
            pass

    def _idle_wait(self) -> None:
        """Sleep until the peer sends, a primitive is queued, or IDLE_WAIT_S passes."""
        if self._kill_thread or self.event_queue.qsize() or self.to_provider_queue.qsize():
            return
        watch: list[Any] = [self._wake_r]
        transport = self.socket
        peer = getattr(transport, "socket", None)
        if peer is not None and getattr(transport, "_is_connected", False):
            if isinstance(peer, ssl.SSLSocket) and peer.pending():
                return  # decrypted bytes select cannot see
            watch.append(peer)
        try:
            ready, _, _ = select.select(watch, [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # the socket closed under us: the loop will see it
            return
        if self._wake_r in ready:  # no read of an empty wake-up socket when the peer woke us
            self._drain()

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor``, sleeping in select."""
        try:
            self._reactor()
        finally:
            with self._wake_lock:
                self._wake_closed = True
                self._wake_r.close()
                self._wake_w.close()
            self._activity.set()  # the association thread checks whether the DUL lives

    def _reactor(self) -> None:
        self._idle_timer.start()
        assert self.socket is not None
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._idle_wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                DUL_LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor waits for activity instead of polling."""

    _activity: threading.Event

    @classmethod
    def adopt(cls, assoc: Association) -> EventDrivenAssociation:
        """Turn a freshly created, not yet started acceptor into an event-driven one.

        pynetdicom's request handler builds the :class:`Association` itself; changing the
        class of that object (same layout, no new slots) keeps every setting the handler
        made. The DUL (not started yet) is replaced, keeping its socket and what is
        already queued for it.
        """
        if assoc.is_alive() or assoc.dul.is_alive():
            raise RuntimeError("only an association that has not started can be adopted")
        activity = threading.Event()
        dul = EventDrivenDUL(assoc, activity)
        old = assoc.dul
        dul.socket = old.socket
        # the association set its timeouts (ARTIM, network) on the old DUL's timers
        dul.artim_timer, dul._idle_timer = old.artim_timer, old._idle_timer
        # the accepted socket already queued its "transport connection" event (Evt5)
        pairs: list[tuple[queue.Queue[Any], queue.Queue[Any]]] = [
            (old.event_queue, dul.event_queue), (old.to_provider_queue, dul.to_provider_queue),
            (old.to_user_queue, dul.to_user_queue)]
        for source, target in pairs:
            while not source.empty():
                target.put(source.get_nowait())
        assoc.__class__ = cls
        adopted: EventDrivenAssociation = assoc  # type: ignore[assignment]
        adopted._activity = activity
        adopted.dul = dul
        adopted.dimse.msg_queue = _WakingQueue(activity.set)
        return adopted

    def kill(self) -> None:
        self._kill = True
        self._activity.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's acceptor ``Association._run_reactor``, waiting on activity."""
        self._is_paused = False
        while not self._kill:
            # wait, then clear, then look at everything: a wake-up after the clear
            # leaves the event set for the next turn, so none is lost
            self._activity.wait(IDLE_WAIT_S)
            self._activity.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
                self._activity.set()  # more may have been queued meanwhile

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                ASSOC_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                ASSOC_LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                ASSOC_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's request handler, handing out :class:`EventDrivenAssociation`."""

    def _create_association(self) -> Association:
        return EventDrivenAssociation.adopt(super()._create_association())
