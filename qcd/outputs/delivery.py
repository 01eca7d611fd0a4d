"""The durable outbox: result objects on disk are delivered to each PACS exactly as stored.

Rows of the ``deliveries`` table are the outbox. :func:`enqueue` adds one PENDING row per
destination (idempotent on ``(sop_instance_uid, destination)``); :class:`DeliveryWorker`
claims due rows, sends them over one association per destination and batch, and marks
them SENT, schedules a retry with exponential back-off, or dead-letters them (DEAD plus
one alert).

Delivery is at-least-once and every retry sends the same file, so a PACS may see an
object twice but always under the same SOP Instance UID: never as a new instance. A
worker that dies mid-send leaves its rows PENDING under a claim lease; they are sent
again once the lease has passed. A wall clock that goes back does not hold retries for
the length of the jump (:func:`qcd.clock.due`).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from qcd.clock import SYSTEM_CLOCK, Clock, due, longest_waits
from qcd.db.engine import Database
from qcd.db.models import Alert, Delivery, DeliveryState, utcnow
from qcd.errors import IngestError, QcdError
from qcd.ingest.filemeta import split_part10
from qcd.outputs.dicomweb import StowSender
from qcd.outputs.settings import DeliverySettings, Destination, SendOutcome
from qcd.scu import associate, client_context, new_ae

__all__ = ["DeliverySettings", "Destination", "DeliveryWorker", "DicomSender", "SendOutcome",
           "StowSender", "TransportSender", "enqueue"]

LOGGER = logging.getLogger(__name__)

MAX_CONTEXTS = 128
"""PS3.8: at most 128 presentation contexts may be proposed on one association."""
ALERT_KIND = "delivery_dead_letter"
DELIVERED_WARNINGS = frozenset({0xB000, 0xB006, 0xB007, 0x0001, 0x0107, 0x0116})
"""Warning statuses (PS3.4 B.2.3, PS3.7 C): the object was stored, with a remark."""


# --------------------------------------------------------------------------- sending


class Sender(Protocol):
    """Sends files to a destination; the seam tests replace (like httpx's MockTransport)."""

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]:
        """Send ``paths`` in order; return one outcome per path. Must not raise on
        network or peer errors: those are outcomes."""
        ...


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify(outcome: SendOutcome) -> Verdict:
    """The one place that maps C-STORE results to what the outbox does.

    * no response (refused, aborted, timed out, unreachable): retry, unless marked permanent;
    * 0x0000 and warnings (0xB000, 0xB006, 0xB007, 0x0001, 0x0107, 0x0116): delivered;
    * 0xA7xx "out of resources", 0x0213 "resource limitation", 0xFE00 "cancel": retry;
    * every other failure (0xA9xx, 0xCxxx, 0x01xx/0x02xx refusals): dead-letter now.
    """
    status = outcome.status
    if status is None:
        return Verdict.PERMANENT if outcome.permanent else Verdict.TRANSIENT
    if status == 0x0000 or status in DELIVERED_WARNINGS:
        return Verdict.DELIVERED
    if status & 0xFF00 == 0xA700 or status in (0x0213, 0xFE00):
        return Verdict.TRANSIENT
    return Verdict.PERMANENT


class DicomSender:
    """C-STORE SCU: one association per call, proposing each file's exact SOP class and
    transfer syntax, sending each file as stored (no decoding, no re-encoding).

    The composition root sets ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True``
    (:func:`qcd.ingest.scp.configure_pynetdicom`) so files are streamed from disk.
    """

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]:
        outcomes: dict[int, SendOutcome] = {}
        sendable: list[tuple[int, Path, str, str]] = []
        for i, path in enumerate(paths):
            try:
                sop_class, syntax = _read_meta(path)
            except OSError as exc:
                outcomes[i] = SendOutcome(None, f"cannot read {path}: {exc.strerror}")
            except IngestError as exc:
                outcomes[i] = SendOutcome(None, f"{path} is not sendable: {exc}", permanent=True)
            else:
                sendable.append((i, path, sop_class, syntax))
        # each file adds at most one context, so MAX_CONTEXTS files always fit one association
        for start in range(0, len(sendable), MAX_CONTEXTS):
            outcomes.update(self._send_group(destination, sendable[start : start + MAX_CONTEXTS]))
        return [outcomes[i] for i in range(len(paths))]

    def _send_group(
        self, dest: Destination, files: list[tuple[int, Path, str, str]]
    ) -> dict[int, SendOutcome]:
        peer = f"{dest.ae_title}@{dest.host}:{dest.port}"
        ae = new_ae(dest.calling_ae, dest.timeout)
        for sop_class, syntax in sorted({(c, t) for _, _, c, t in files}):
            ae.add_requested_context(sop_class, syntax)
        try:
            assoc = associate(ae, dest.host, dest.port, dest.ae_title, dest.tls,
                              where=f"delivery destination {dest.name} tls")
        except QcdError as exc:  # unreachable, TLS refused, or unusable TLS files: retry
            return {i: SendOutcome(None, str(exc)) for i, *_ in files}
        if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
            # the peer answered but refused every context; pynetdicom then aborts
            return {i: _refused(peer, c, t) for i, _, c, t in files}
        if not assoc.is_established:
            why = ("rejected the association" if assoc.is_rejected else
                   "unreachable, or the association was aborted or timed out")
            if dest.tls.enabled and not assoc.is_rejected:  # TLS 1.3 reports this late
                why += " (over TLS: the peer may require a client certificate or refuse ours)"
            return {i: SendOutcome(None, f"{peer} {why}") for i, *_ in files}
        outcomes: dict[int, SendOutcome] = {}
        try:
            for i, path, sop_class, syntax in files:
                outcomes[i] = _store_one(assoc, path, sop_class, syntax, peer)
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes


class TransportSender:
    """C-STORE for DIMSE destinations, STOW-RS for those with a ``stow_url``."""

    def __init__(self) -> None:
        self.dimse = DicomSender()
        self.stow = StowSender()

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]:
        transport = self.stow if destination.stow_url else self.dimse
        return transport.send(destination, paths)


def _store_one(assoc: Any, path: Path, sop_class: str, syntax: str, peer: str) -> SendOutcome:
    if not assoc.is_established:
        return SendOutcome(None, f"association with {peer} was lost before sending")
    accepted = any(cx.abstract_syntax == sop_class and syntax in cx.transfer_syntax
                   for cx in assoc.accepted_contexts)
    if not accepted:
        return _refused(peer, sop_class, syntax)
    try:
        rsp = assoc.send_c_store(path)
    except OSError as exc:
        return SendOutcome(None, f"cannot read {path}: {exc.strerror}")
    except (AttributeError, ValueError, RuntimeError) as exc:
        return SendOutcome(None, f"C-STORE to {peer} not sent: {exc}")
    if rsp is None or "Status" not in rsp:
        return SendOutcome(None, f"no response from {peer} (timeout or association aborted)")
    return SendOutcome(int(rsp.Status), str(rsp.get("ErrorComment", "")))


def _refused(peer: str, sop_class: str, syntax: str) -> SendOutcome:
    return SendOutcome(None, f"{peer} did not accept {UID(sop_class).name} in "
                             f"{UID(syntax).name}", permanent=True)


def _read_meta(path: Path) -> tuple[str, str]:
    """(SOP class, transfer syntax) of a Part 10 file, from its File Meta."""
    meta = _file_meta(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _file_meta(path: Path) -> Any:
    with open(path, "rb") as fh:
        meta, _ = split_part10(fh.read(1 << 16))
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        if keyword not in meta:
            raise IngestError(0xC210, f"File Meta has no {keyword}")
    return meta


# --------------------------------------------------------------------------- the outbox


def enqueue(
    db: Database,
    series_id: int,
    object_kind: str,
    sop_instance_uid: str,
    path: str | Path,
    destinations: Iterable[Destination | str],
) -> int:
    """Put one object in the outbox for each destination; return how many rows are new.

    Idempotent, also under concurrency: a ``(sop_instance_uid, destination)`` pair that is
    already queued (in any state) is left as it is, path included.

    Parameters
    ----------
    series_id
        The analysed series (``series.id``) the object belongs to.
    object_kind
        A short label for logs and alerts, e.g. ``"SR"`` or ``"SEG"`` (at most 8 characters).
    path
        The Part 10 file, absolute or relative to the worker's ``root`` (at most 255 characters).
    """
    names = [d.name if isinstance(d, Destination) else d for d in destinations]
    path = str(path)
    for value, limit, what in ((object_kind, 8, "object_kind"), (sop_instance_uid, 64,
                               "sop_instance_uid"), (path, 255, "path")):
        if not value or len(value) > limit:
            raise ValueError(f"{what} must be 1-{limit} characters, got {value!r}")
    for name in names:
        if not name or len(name) > 128:
            raise ValueError(f"destination name must be 1-128 characters, got {name!r}")
    added = 0
    with db.session() as session:
        for name in dict.fromkeys(names):
            added += insert_ignore(
                session, Delivery, ["sop_instance_uid", "destination"],
                series_id=series_id, object_kind=object_kind, sop_instance_uid=sop_instance_uid,
                destination=name, path=path, state=DeliveryState.PENDING, attempts=0,
                next_attempt_at=None, created_at=utcnow())
    if added:
        LOGGER.info("queued %s %s for %d destination(s)", object_kind, sop_instance_uid, added)
    return added


def insert_ignore(session: Session, model: type[Any], keys: list[str], **values: Any) -> int:
    """INSERT ... ON CONFLICT DO NOTHING: 1 if inserted, 0 if the key already existed.

    Unlike catching IntegrityError this leaves the surrounding transaction usable and
    waits for a concurrent inserter of the same key instead of failing.
    """
    dialect = session.get_bind().dialect.name
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(model).on_conflict_do_nothing(index_elements=keys)
    elif dialect == "sqlite":
        stmt = sqlite.insert(model).on_conflict_do_nothing(index_elements=keys)
    else:
        raise TypeError(f"unsupported database dialect {dialect!r}; use sqlite or postgresql")
    # RETURNING, not rowcount: psycopg reports -1 for this statement
    return len(session.execute(stmt.values(**values).returning(model.id)).all())


class DeliveryMetrics(Protocol):
    """What :class:`DeliveryWorker` records: ``deliveries{destination, outcome}``."""

    @property
    def deliveries(self) -> Counter: ...


@dataclass(frozen=True)
class _Claimed:
    id: int
    destination: str
    path: str
    sop_instance_uid: str
    object_kind: str


class DeliveryWorker:
    """Claims due outbox rows, sends them, and records the outcome.

    Parameters
    ----------
    db
        The database holding the ``deliveries`` and ``alerts`` tables.
    settings
        Destinations, attempts, back-off and batch size.
    sender
        Defaults to :class:`DicomSender`; tests pass a fake.
    metrics
        Optional; gets ``deliveries.labels(destination, outcome).inc()`` per row with
        outcome ``sent``, ``retried`` or ``dead``.
    root
        Base directory for relative paths in the outbox.
    clock
        Where ``now`` comes from when :meth:`sweep` is not given one.

    Raises
    ------
    ConfigError
        A destination's TLS files cannot be used (checked here so ``qcd serve`` fails at
        start instead of retrying every delivery).
    """

    def __init__(
        self,
        db: Database,
        settings: DeliverySettings,
        sender: Sender | None = None,
        metrics: DeliveryMetrics | None = None,
        root: str | Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.sender: Sender = sender if sender is not None else TransportSender()
        self.metrics = metrics
        self.root = Path(root) if root is not None else None
        self.destinations = {d.name: d for d in settings.destinations}
        if len(self.destinations) != len(settings.destinations):
            raise ValueError("destination names must be unique")
        for i, dest in enumerate(settings.destinations):
            if dest.tls.enabled and not dest.stow_url:  # fail at start, not at the first send
                client_context(dest.tls, f"delivery.destinations[{i}].tls")
        longest = max((d.timeout for d in settings.destinations), default=30.0)
        self.claim_lease = dt.timedelta(seconds=(settings.batch + 2) * longest)
        """How long claimed rows stay invisible: a batch where every file times out."""
        self._waits = longest_waits(self._delay, self.claim_lease, settings.max_attempts)
        """Attempts so far -> the longest wait a row can have been given (:func:`due`)."""

    def _delay(self, attempts: int) -> float:
        s = self.settings
        return min(s.backoff_seconds * 2 ** (attempts - 1), s.max_backoff_seconds)

    def sweep(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Deliver every due row, one claimed batch after another.

        Returns counts: ``claimed``, ``sent``, ``retried`` (back to PENDING with
        back-off) and ``dead``.
        """
        counts = {"claimed": 0, "sent": 0, "retried": 0, "dead": 0}
        while True:
            at = now or self.clock.wall()
            claimed = self._claim(at)
            counts["claimed"] += len(claimed)
            by_dest: dict[str, list[_Claimed]] = {}
            for row in claimed:
                by_dest.setdefault(row.destination, []).append(row)
            for name, rows in by_dest.items():
                self._deliver(self.destinations[name], rows, at, counts)
            if len(claimed) < self.settings.batch:
                return counts

    def _claim(self, now: dt.datetime) -> list[_Claimed]:
        """Take up to ``batch`` due rows by pushing their next attempt past the lease."""
        if not self.destinations:
            return []
        with self.db.session() as session:
            query = (
                select(Delivery)
                .where(Delivery.state == DeliveryState.PENDING,
                       Delivery.destination.in_(list(self.destinations)),
                       due(Delivery.next_attempt_at, Delivery.attempts, now, self._waits))
                .order_by(Delivery.id)
                .limit(self.settings.batch)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            for row in rows:
                row.next_attempt_at = now + self.claim_lease
            return [_Claimed(r.id, r.destination, r.path, r.sop_instance_uid, r.object_kind)
                    for r in rows]

    def _deliver(self, dest: Destination, rows: list[_Claimed], now: dt.datetime,
                 counts: dict[str, int]) -> None:
        results: list[tuple[_Claimed, Verdict, str]] = []
        to_send: list[tuple[_Claimed, Path]] = []
        for row in rows:
            path = self._resolve(row.path)
            problem = _check_file(path, row.sop_instance_uid)
            if problem:
                results.append((row, *problem))
            else:
                to_send.append((row, path))
        if to_send:
            try:
                outcomes = self.sender.send(dest, [p for _, p in to_send])
                if len(outcomes) != len(to_send):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(to_send)} files")
            except Exception as exc:  # a bug in a sender must not wedge the outbox
                LOGGER.exception("sender failed for destination %s", dest.name)
                outcomes = [SendOutcome(None, f"sender error: {exc!r}")] * len(to_send)
            for (row, _), outcome in zip(to_send, outcomes, strict=True):
                results.append((row, classify(outcome), _describe(outcome)))
        self._record(dest, results, now, counts)

    def _resolve(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() or self.root is None else self.root / path

    def _record(self, dest: Destination, results: list[tuple[_Claimed, Verdict, str]],
                now: dt.datetime, counts: dict[str, int]) -> None:
        s = self.settings
        with self.db.session() as session:
            for claimed, verdict, text in results:
                row = session.get(Delivery, claimed.id, with_for_update=True)
                if row is None or row.state != DeliveryState.PENDING:
                    continue  # finished meanwhile by another worker or an operator
                row.attempts += 1
                if verdict is Verdict.DELIVERED:
                    row.state = DeliveryState.SENT
                    row.delivered_at = now
                    row.next_attempt_at = None
                    row.last_error = text or None  # a warning status, kept for the record
                    outcome = "sent"
                elif verdict is Verdict.TRANSIENT and row.attempts < s.max_attempts:
                    delay = self._delay(row.attempts)
                    row.next_attempt_at = now + dt.timedelta(seconds=delay)
                    row.last_error = text[:2000]
                    outcome = "retried"
                    LOGGER.info("delivery of %s %s to %s failed (attempt %d), retry in %.0f s: %s",
                                row.object_kind, row.sop_instance_uid, dest.name, row.attempts,
                                delay, text)
                else:
                    if verdict is Verdict.TRANSIENT:
                        text = f"gave up after {row.attempts} attempts; last error: {text}"
                    row.state = DeliveryState.DEAD
                    row.next_attempt_at = None
                    row.last_error = text[:2000]
                    outcome = "dead"
                    self._dead_letter(session, row)
                counts[outcome] += 1
                if self.metrics is not None:
                    self.metrics.deliveries.labels(destination=dest.name, outcome=outcome).inc()
        sent = sum(1 for _, v, _ in results if v is Verdict.DELIVERED)
        LOGGER.info("delivery to %s: %d of %d sent", dest.name, sent, len(results))

    @staticmethod
    def _dead_letter(session: Session, row: Delivery) -> None:
        LOGGER.warning("delivery of %s %s to %s is dead: %s", row.object_kind,
                       row.sop_instance_uid, row.destination, row.last_error)
        insert_ignore(
            session, Alert, ["dedupe_key"],
            dedupe_key=f"delivery-dead:{row.sop_instance_uid}:{row.destination}"[:128],
            series_id=row.series_id, kind=ALERT_KIND, severity="warning",
            message=(f"{row.object_kind} {row.sop_instance_uid} could not be delivered to "
                     f"{row.destination} and was dead-lettered after {row.attempts} "
                     f"attempt(s); see the delivery's last error"),
            created_at=utcnow())


def _check_file(path: Path, sop_instance_uid: str) -> tuple[Verdict, str] | None:
    """Why ``path`` must not be sent for this row (and whether to retry), or None."""
    try:
        meta = _file_meta(path)
    except FileNotFoundError:
        return Verdict.PERMANENT, f"file not found: {path}"
    except OSError as exc:  # permissions, a flaky mount: may heal
        return Verdict.TRANSIENT, f"cannot read {path}: {exc.strerror}"
    except IngestError as exc:
        return Verdict.PERMANENT, f"{path} is not a DICOM Part 10 file: {exc}"
    found = str(meta.MediaStorageSOPInstanceUID)
    if found != sop_instance_uid:
        return Verdict.PERMANENT, (f"{path} holds SOP Instance UID {found}, not "
                                   f"{sop_instance_uid}: refusing to send a different instance")
    return None


def _describe(outcome: SendOutcome) -> str:
    """Text for ``last_error``: empty for plain success."""
    if outcome.status is None:
        return outcome.comment
    if outcome.status == 0:
        return ""
    text = f"status 0x{outcome.status:04X}"
    return f"{text}: {outcome.comment}" if outcome.comment else text
