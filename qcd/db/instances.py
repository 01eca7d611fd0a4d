"""Recording received instances: study/series upsert, instance row, late re-open.

Recording runs once per received instance, so it uses SQLAlchemy Core statements
built once at import (the ORM unit of work cost ~3 ms of CPU an instance), and
:class:`InstanceRecorder` commits the rows of concurrent associations together
(group commit): one transaction and one log flush for all instances waiting.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Protocol, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from qcd.db.engine import Database
from qcd.db.models import Instance, Series, SeriesState, Study, utcnow
from qcd.errors import DatabaseError
from qcd.ingest.header import InstanceHeader

LOGGER = logging.getLogger(__name__)
_RETRIES = 3
MAX_BATCH = 64
"""The most instances one group commit records."""


@dataclass(frozen=True)
class Recorded:
    """What recording an instance did to its series."""

    series_id: int
    new_instance: bool
    reopened: bool
    received_at: dt.datetime | None = None
    """The series' ``last_received_at`` as written (None: nothing written)."""


class StoredFile(Protocol):
    """Where the spool put the instance (satisfied by :class:`qcd.spool.SpooledFile`)."""

    @property
    def relpath(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def version(self) -> int: ...


@dataclass(frozen=True)
class _Request:
    """One instance to record, with everything :func:`_record` needs."""

    header: InstanceHeader
    stored: StoredFile
    calling_ae: str | None
    reopen_completed: bool
    now: dt.datetime


class InstanceRecorder:
    """Records instances for concurrent callers with group commit.

    A caller that finds no commit running records its own instance at once (no
    added latency for a single association). Callers arriving while a commit runs
    queue; when it ends, one of them records the whole queue in one transaction and
    wakes the others. Every caller returns only after the transaction holding its
    row has committed, or raises :class:`DatabaseError` (the caller must not answer
    Success).

    Parameters
    ----------
    db
        The database.
    max_batch
        The most instances one transaction records.
    """

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.db = db
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Waiter] = []
        self._busy = False

    def record(
        self,
        header: InstanceHeader,
        stored: StoredFile,
        *,
        calling_ae: str | None,
        reopen_completed: bool,
        now: dt.datetime | None = None,
    ) -> Recorded:
        """Insert (idempotently) the instance row and touch its study and series,
        batched with the callers waiting beside it.

        ``now`` (default: the wall clock) becomes the instance's ``received_at`` and the
        series' ``last_received_at``. Concurrent associations may create the same study
        or series at once; the loser of the unique-constraint race retries and finds the
        winner's row.

        Raises
        ------
        DatabaseError
            The row could not be committed (the caller must not answer Success).
        """
        me = _Waiter(_Request(header, stored, calling_ae, reopen_completed, now or utcnow()))
        with self._cond:
            self._queue.append(me)
        while True:
            with self._cond:
                while not me.done and self._busy:
                    self._cond.wait()
                if me.done:
                    return me.outcome()
                self._busy = True
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
            try:
                _commit_batch(self.db, batch)
            finally:
                with self._cond:
                    for waiter in batch:
                        if not waiter.done:  # only if _commit_batch itself broke
                            waiter.fail(DatabaseError("group commit aborted"))
                    self._busy = False
                    self._cond.notify_all()


class _Waiter:
    """A queued request and, once its transaction has ended, its result or error."""

    __slots__ = ("request", "done", "result", "error")

    def __init__(self, request: _Request) -> None:
        self.request = request
        self.done = False
        self.result: Recorded | None = None
        self.error: BaseException | None = None

    def succeed(self, result: Recorded) -> None:
        self.result, self.done = result, True

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True

    def outcome(self) -> Recorded:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _commit_batch(db: Database, batch: list[_Waiter]) -> None:
    """Record ``batch`` in one transaction; results are set only after the commit.

    If the shared transaction fails for any reason, each request is recorded again
    in a transaction of its own, so one bad request cannot fail the others and each
    gets the error it would have had alone.
    """
    if len(batch) > 1:
        try:
            with db.engine.begin() as conn:
                results = [_record(conn, waiter.request) for waiter in batch]
        except Exception as exc:  # retried one by one below
            LOGGER.debug("group commit of %d instances failed (%s); recording them one "
                         "by one", len(batch), type(exc).__name__)
        else:
            for waiter, result in zip(batch, results):
                waiter.succeed(result)
            return
    for waiter in batch:
        try:
            waiter.succeed(_record_alone(db, waiter.request))
        except Exception as exc:  # handed to the waiting caller, raised in its thread
            waiter.fail(exc)


def _record_alone(db: Database, request: _Request) -> Recorded:
    last_exc: Exception | None = None
    for _ in range(_RETRIES):
        try:
            with db.engine.begin() as conn:
                return _record(conn, request)
        except IntegrityError as exc:
            last_exc = exc
            continue
        except OperationalError as exc:
            raise DatabaseError(f"cannot record instance: {exc.orig}") from exc
    raise DatabaseError(f"cannot record instance after {_RETRIES} tries: {last_exc}")


_STUDIES = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)

_TOUCH_STUDY = (update(_STUDIES).where(_STUDIES.c.study_uid == bindparam("uid"))
                .values(last_received_at=bindparam("now")))
_STUDY_ID = select(_STUDIES.c.id).where(_STUDIES.c.study_uid == bindparam("uid"))
_INSERT_STUDY = insert(_STUDIES)
_SERIES_ROW = (select(_SERIES.c.id, _SERIES.c.state, _SERIES.c.generation)
               .where(_SERIES.c.series_uid == bindparam("uid")).with_for_update())
_INSERT_SERIES = insert(_SERIES).returning(_SERIES.c.id)
# "insert unless (sop_uid, version) is there": one statement instead of a look-up and
# an insert, and no unique-constraint race between concurrent transactions
# (RETURNING says whether the row went in, on both backends; rowcount is -1 on psycopg)
_INSERT_NEW_INSTANCE = {
    "sqlite": sqlite.insert(_INSTANCES).on_conflict_do_nothing(
        index_elements=["sop_uid", "version"]).returning(_INSTANCES.c.id),
    "postgresql": postgresql.insert(_INSTANCES).on_conflict_do_nothing(
        index_elements=["sop_uid", "version"]).returning(_INSTANCES.c.id),
}
_COUNT_INSTANCE = (update(_SERIES).where(_SERIES.c.id == bindparam("sid"))
                   .values(instance_count=_SERIES.c.instance_count + 1,
                           last_received_at=bindparam("now")))
_REOPEN = (update(_SERIES).where(_SERIES.c.id == bindparam("sid"))
           .values(instance_count=_SERIES.c.instance_count + 1,
                   last_received_at=bindparam("now"), state=SeriesState.RECEIVED,
                   generation=_SERIES.c.generation + 1, completed_at=None))


def _record(conn: Connection, request: _Request) -> Recorded:
    """The statements for one instance, inside the caller's transaction."""
    h, stored, now = request.header, request.stored, request.now
    if conn.execute(_TOUCH_STUDY, {"uid": h.study_uid, "now": now}).rowcount == 0:
        conn.execute(_INSERT_STUDY, {
            "study_uid": h.study_uid, "accession_number": h.accession_number,
            "study_date": h.study_date, "first_received_at": now, "last_received_at": now})

    row = conn.execute(_SERIES_ROW, {"uid": h.series_uid}).first()
    if row is None:
        study_id = conn.execute(_STUDY_ID, {"uid": h.study_uid}).scalar_one()
        series_id = conn.execute(_INSERT_SERIES, {
            "study_id": study_id, "series_uid": h.series_uid, "modality": h.modality,
            "body_part": h.body_part, "manufacturer": h.manufacturer,
            "model_name": h.model_name, "station_name": h.station_name,
            "device_serial": h.device_serial, "institution_name": h.institution_name,
            "series_description": h.series_description, "series_number": h.series_number,
            "state": SeriesState.RECEIVED, "generation": 1, "instance_count": 0,
            "first_received_at": now, "last_received_at": now,
        }).scalar_one()
        state, generation = SeriesState.RECEIVED, 1
    else:
        series_id, state, generation = row

    inserted = conn.execute(_INSERT_NEW_INSTANCE[conn.dialect.name], {
        "series_id": series_id, "sop_uid": h.sop_uid, "version": stored.version,
        "sop_class_uid": h.sop_class_uid, "transfer_syntax": h.transfer_syntax,
        "instance_number": h.instance_number, "path": stored.relpath, "size": stored.size,
        "sha256": stored.sha256, "calling_ae": request.calling_ae, "received_at": now,
    }).first()
    if inserted is None:
        # An idempotent resend: the row is already there; nothing changes.
        return Recorded(series_id, new_instance=False, reopened=False)
    reopened = False
    if state == SeriesState.COMPLETE and request.reopen_completed:
        conn.execute(_REOPEN, {"sid": series_id, "now": now})
        reopened = True
        LOGGER.info("late instance re-opened series %s (generation %d)",
                    h.series_uid, generation + 1)
    else:
        conn.execute(_COUNT_INSTANCE, {"sid": series_id, "now": now})
        if state == SeriesState.COMPLETE:
            LOGGER.info("late instance kept for completed series %s (re-open disabled)",
                        h.series_uid)
    return Recorded(series_id, new_instance=True, reopened=reopened, received_at=now)
