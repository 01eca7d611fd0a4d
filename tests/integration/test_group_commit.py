"""Group commit (InstanceRecorder): no caller returns before the transaction holding its
row has committed; a failed batch fails nobody it should not; re-open and counts hold.

Each test stalls the first commit on a gate, queues more callers behind it, and only
then lets the commit go, so the queued callers are recorded as one batch. Runs on
SQLite and PostgreSQL (the ``db`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.exc import OperationalError

from qcd.db.engine import Database
from qcd.db.instances import InstanceRecorder, Recorded
from qcd.db.models import Instance, Series, SeriesState
from qcd.errors import DatabaseError
from tests.integration.test_db import Stored, header

pytestmark = pytest.mark.integration

WAIT = 10.0


class CommitGate:
    """Counts commits; holds the first one until :meth:`release` (and, with ``hold_second``,
    the second one until :meth:`release_second`); can make them fail."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.commits = 0
        self.first_waiting = threading.Event()
        self.second_waiting = threading.Event()
        self._open = threading.Event()
        self._second_open = threading.Event()
        self._second_open.set()
        self.fail = False
        event.listen(db.engine, "commit", self._on_commit)

    def _on_commit(self, conn: Any) -> None:
        self.commits += 1
        if self.commits == 1:
            self.first_waiting.set()
            assert self._open.wait(WAIT), "the test never released the first commit"
        elif self.commits == 2:
            self.second_waiting.set()
            assert self._second_open.wait(WAIT), "the test never released the second commit"
        if self.fail:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    def hold_second(self) -> None:
        self._second_open.clear()

    def release(self) -> None:
        self._open.set()

    def release_second(self) -> None:
        self._second_open.set()

    def remove(self) -> None:
        event.remove(self.db.engine, "commit", self._on_commit)


@pytest.fixture
def gate(db: Database) -> Iterator[CommitGate]:
    g = CommitGate(db)
    yield g
    g.release()
    g.release_second()
    g.remove()


class Caller(threading.Thread):
    """One association's thread: records one instance, notes what it saw on return."""

    def __init__(self, recorder: InstanceRecorder, sop: str, series: str = "1.2.3.4",
                 on_return: Callable[[str], object] | None = None) -> None:
        super().__init__(daemon=True)
        self.recorder, self.sop, self.series = recorder, sop, series
        self.on_return = on_return
        self.result: Recorded | None = None
        self.error: BaseException | None = None
        self.seen_on_return: object = None

    def run(self) -> None:
        try:
            self.result = self.recorder.record(
                header(self.sop, series=self.series), Stored(f"x/{self.sop}"),
                calling_ae="CT1", reopen_completed=True)
        except BaseException as exc:  # checked by the test
            self.error = exc
        if self.on_return is not None:
            self.seen_on_return = self.on_return(self.sop)


def committed(db: Database, sop: str) -> bool:
    """Whether another connection sees the instance row (i.e. it is committed).

    A plain engine of its own: qcd's SQLite engine begins every transaction with
    BEGIN IMMEDIATE, which would wait for the writer instead of reading past it.
    """
    engine = create_engine(db.url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Instance)
                               .where(Instance.sop_uid == sop)) == 1
    finally:
        engine.dispose()


def queue_behind_first(recorder: InstanceRecorder, gate: CommitGate, sops: list[str],
                       **kw: Any) -> tuple[Caller, list[Caller]]:
    """Start a first caller whose commit stalls, then ``sops`` queued behind it."""
    first = Caller(recorder, "1.2.3.4.100", **kw)
    first.start()
    assert gate.first_waiting.wait(WAIT)
    queued = [Caller(recorder, sop, **kw) for sop in sops]
    for caller in queued:
        caller.start()
    deadline = time.monotonic() + WAIT
    while len(recorder._queue) < len(sops):  # all queued behind the stalled commit
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return first, queued


def join(callers: list[Caller]) -> None:
    for caller in callers:
        caller.join(WAIT)
        assert not caller.is_alive()


def test_no_caller_returns_before_its_row_is_committed(db: Database, gate: CommitGate) -> None:
    recorder = InstanceRecorder(db)
    sops = ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    gate.hold_second()
    first, queued = queue_behind_first(recorder, gate, sops,
                                       on_return=lambda sop: committed(db, sop))
    time.sleep(0.2)
    assert all(c.is_alive() for c in [first, *queued])  # nobody answered yet
    assert not any(committed(db, sop) for sop in ["1.2.3.4.100", *sops])
    gate.release()
    first.join(WAIT)
    assert gate.second_waiting.wait(WAIT)  # the batch of three is committing now
    time.sleep(0.2)
    assert all(c.is_alive() for c in queued)  # and none of the three has answered
    assert not any(committed(db, sop) for sop in sops)
    gate.release_second()
    join([first, *queued])
    for caller in [first, *queued]:
        assert caller.error is None and caller.result is not None
        assert caller.result.new_instance
        assert caller.seen_on_return is True  # the row was visible when it returned
    assert gate.commits == 2  # the first alone, then the three queued ones together
    with db.session() as s:
        assert s.scalar(select(Series.instance_count)) == 4


def test_failed_commit_answers_every_caller_in_the_batch_with_an_error(
        db: Database, gate: CommitGate) -> None:
    recorder = InstanceRecorder(db)
    first, queued = queue_behind_first(recorder, gate, ["1.2.3.4.1", "1.2.3.4.2"])
    gate.fail = True  # every commit from now on fails, the retries one by one too
    gate.release()
    join([first, *queued])
    for caller in [first, *queued]:
        assert caller.result is None and isinstance(caller.error, DatabaseError)
    gate.fail = False
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0


def test_one_bad_request_does_not_fail_the_rest_of_its_batch(
        db: Database, gate: CommitGate) -> None:
    bad = "1.2.3.4.666"

    def refuse_bad(conn: Any, cursor: Any, statement: str, parameters: Any,
                   context: Any, executemany: bool) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters
        if bad in tuple(values):
            raise OperationalError(statement, parameters, Exception("value refused"))

    event.listen(db.engine, "before_cursor_execute", refuse_bad)
    try:
        recorder = InstanceRecorder(db)
        first, queued = queue_behind_first(recorder, gate, ["1.2.3.4.1", bad, "1.2.3.4.2"])
        gate.release()
        join([first, *queued])
    finally:
        event.remove(db.engine, "before_cursor_execute", refuse_bad)
    outcome = {c.sop: c.error for c in [first, *queued]}
    assert isinstance(outcome.pop(bad), DatabaseError)
    assert outcome == {"1.2.3.4.100": None, "1.2.3.4.1": None, "1.2.3.4.2": None}
    with db.session() as s:
        assert set(s.scalars(select(Instance.sop_uid))) == set(outcome)
        assert s.scalar(select(Series.instance_count)) == 3


def test_batch_reopens_a_completed_series_once(db: Database, gate: CommitGate) -> None:
    recorder = InstanceRecorder(db)
    gate.release()  # no stall for the set-up
    recorder.record(header("1.2.3.4.1"), Stored("x/1"), calling_ae="CT1", reopen_completed=True)
    with db.session() as s:
        s.scalars(select(Series)).one().state = SeriesState.COMPLETE
    gate.commits = 0
    gate._open.clear()
    first, queued = queue_behind_first(recorder, gate, ["1.2.3.4.2", "1.2.3.4.3"],
                                       series="1.2.3.4")
    gate.release()
    join([first, *queued])
    assert first.result is not None and first.result.reopened  # the first late instance
    assert [c.result.reopened for c in queued if c.result] == [False, False]
    with db.session() as s:
        series = s.scalars(select(Series)).one()
        assert (series.state, series.generation, series.instance_count) == (
            SeriesState.RECEIVED, 2, 4)


def test_many_concurrent_callers_record_every_instance_once(db: Database) -> None:
    recorder = InstanceRecorder(db, max_batch=3)
    callers = [Caller(recorder, f"1.2.3.{lane}.{i}", series=f"1.2.3.{lane % 3}")
               for lane in range(8) for i in range(1, 11)]
    callers += [Caller(recorder, "1.2.3.0.1", series="1.2.3.0")]  # a resend, raced
    for caller in callers:
        caller.start()
    join(callers)
    assert [c.error for c in callers if c.error is not None] == []
    assert sum(1 for c in callers if c.result and c.result.new_instance) == 80
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 80
        assert sum(s.scalars(select(Series.instance_count))) == 80


def test_max_batch_must_be_positive(db: Database) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        InstanceRecorder(db, max_batch=0)
