"""Wall-clock jumps (issue 10 fault injection): NTP steps of +-1 h while qcd runs.

The wall clock is jumped through the :class:`qcd.clock.Clock` seam (the machine's clock is
never touched): :class:`~tests.clocks.ManualClock` for the parts, driven step by step,
and :class:`~tests.clocks.ShiftedClock` for a running daemon fed by a real association.
What must hold: no acknowledged instance is lost, no series completes while its instances
are still arriving, no job runs twice, and a jump back holds nothing up for longer than
its own quiet period or back-off plus a bounded amount (docs/RELIABILITY.md).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from apscheduler.schedulers import base as aps_base
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import func, select

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.app import Daemon
from qcd.assembly import CompletionSweeper
from qcd.bundles import Bundle
from qcd.clock import Elapsed
from qcd.config import load_settings
from qcd.db.engine import Database
from qcd.db.models import Delivery, DeliveryState, Instance, Job, JobState, Series, SeriesState
from qcd.metrics import Metrics
from qcd.outputs.delivery import (
    DeliverySettings,
    DeliveryWorker,
    Destination,
    SendOutcome,
    enqueue,
)
from qcd.synth import SeriesSpec, make_study
from qcd.workers import queue
from tests.clocks import ManualClock, ShiftedClock
from tests.conftest import make_settings
from tests.integration.test_db import header, record
from tests.integration.test_delivery import FakeSender, make_files, make_series
from tests.integration.test_engine import make_jobs

pytestmark = pytest.mark.integration

HOUR = 3600.0
QUIET = 10.0


def _sweeper(db: Database, clock: ManualClock) -> CompletionSweeper:
    settings = load_settings(environ={"QCD_ASSEMBLY__QUIET_SECONDS": str(QUIET)})
    return CompletionSweeper(settings, db, Metrics(), available={"earl"}, clock=clock)


def _arrive(db: Database, sweeper: CompletionSweeper, clock: ManualClock, n: int) -> None:
    """Instance ``n`` of series 1.2.3.4 arrives, recorded as the ingest path does it."""
    rec: Any = record(db, header(f"1.2.3.4.{n}"), now=clock.wall())
    sweeper.activity.note(rec.series_id, rec.received_at)


def _state(db: Database) -> tuple[SeriesState, int, int]:
    with db.session() as s:
        series = s.scalars(select(Series)).one()
        return series.state, series.generation, series.instance_count


# --------------------------------------------------------------------------- completion


def test_forward_jump_does_not_complete_a_series_still_arriving(db: Database) -> None:
    clock = ManualClock()
    sweeper = _sweeper(db, clock)
    _arrive(db, sweeper, clock, 1)
    clock.advance(4)
    clock.jump(+HOUR)  # the last instance now looks an hour old on the wall clock
    assert sweeper.sweep() == 0
    clock.advance(4)
    _arrive(db, sweeper, clock, 2)  # the scanner is still sending
    clock.jump(+HOUR)  # a jump right after an instance, before any sweep saw it
    clock.advance(QUIET - 1)
    assert sweeper.sweep() == 0
    assert _state(db) == (SeriesState.RECEIVED, 1, 2)
    clock.advance(1)  # quiet for QUIET seconds of real time since instance 2
    assert sweeper.sweep() == 1
    assert _state(db) == (SeriesState.COMPLETE, 1, 2)  # once, never re-opened


def test_forward_jump_after_an_instance_from_another_node(db: Database) -> None:
    """Instances recorded by another ingest node are first seen by a sweep: from then on
    a jump cannot age them either."""
    clock = ManualClock()
    sweeper = _sweeper(db, clock)
    record(db, header("1.2.3.4.1"), now=clock.wall())  # nobody notes it here
    assert sweeper.sweep() == 0  # seen: 0 s old
    clock.jump(+HOUR)
    clock.advance(QUIET - 1)
    assert sweeper.sweep() == 0
    clock.advance(1)
    assert sweeper.sweep() == 1


@pytest.mark.parametrize("seen_before_jump", [True, False])
def test_backward_jump_holds_a_series_no_longer_than_its_quiet_period(
        db: Database, seen_before_jump: bool) -> None:
    clock = ManualClock()
    sweeper = _sweeper(db, clock)
    if seen_before_jump:
        _arrive(db, sweeper, clock, 1)
    else:  # restart after the jump: the stamp is in the wall clock's future
        record(db, header("1.2.3.4.1"), now=clock.wall())
    clock.advance(2)
    clock.jump(-HOUR)
    assert sweeper.sweep() == 0
    clock.advance(QUIET)  # quiet period since the jump at the latest (not an hour)
    assert sweeper.sweep() == 1
    assert _state(db) == (SeriesState.COMPLETE, 1, 1)


# --------------------------------------------------------------------------- job leases


@pytest.mark.parametrize("noted", [True, False])
def test_forward_jump_does_not_expire_a_held_lease(db: Database, noted: bool) -> None:
    """``noted``: the job is this process's (noted at claim); else another node's, seen by
    the recovery sweep. Either way only real time expires the lease (a hung worker)."""
    [job_id] = make_jobs(db, 1)
    clock = ManualClock()
    leases = Elapsed(clock)
    job = queue.claim_next(db, "elsewhere:1:0", {"count"}, 60, now=clock.wall())
    assert job is not None and job.lease_expires_at is not None
    if noted:
        leases.note(job.id, job.lease_expires_at, -60)
    else:
        assert queue.requeue_expired(db, 3, clock.wall(), leases) == 0
    clock.jump(+HOUR)
    assert queue.requeue_expired(db, 3, clock.wall(), leases) == 0
    clock.advance(59)
    assert queue.requeue_expired(db, 3, clock.wall(), leases) == 0
    with db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None and (row.state, row.attempts) == (JobState.RUNNING, 1)
    clock.advance(2)
    assert queue.requeue_expired(db, 3, clock.wall(), leases) == 1  # really lost


def test_backward_jump_before_first_sight_extends_a_lease_by_at_most_its_length(
        db: Database) -> None:
    make_jobs(db, 1)
    clock = ManualClock()
    leases = Elapsed(clock)
    assert queue.claim_next(db, "elsewhere:1:0", {"count"}, 60, now=clock.wall()) is not None
    clock.jump(-HOUR)
    assert queue.requeue_expired(db, 3, clock.wall(), leases) == 0
    clock.advance(61)
    assert queue.requeue_expired(db, 3, clock.wall(), leases) == 1


def test_backward_jump_does_not_hold_a_job_retry(db: Database) -> None:
    [job_id] = make_jobs(db, 1, "flaky")
    clock = ManualClock()
    assert queue.claim_next(db, "w", {"flaky"}, 60, now=clock.wall()) is not None
    assert queue.fail(db, job_id, "w", "boom", max_attempts=3, backoff_seconds=30,
                      now=clock.wall()) == JobState.QUEUED
    clock.advance(10)
    assert queue.claim_next(db, "w", {"flaky"}, 60, now=clock.wall()) is None  # backing off
    clock.jump(-HOUR)
    job = queue.claim_next(db, "w", {"flaky"}, 60, now=clock.wall())
    assert job is not None and job.attempt == 2  # at most its back-off early, not 1 h late


# --------------------------------------------------------------------------- delivery


def test_backward_jump_does_not_hold_a_delivery_retry(sqlite_db: Database,
                                                      tmp_path: Path) -> None:
    clock = ManualClock()
    [(path, uid)] = make_files(tmp_path, 1)
    dest = Destination("pacs", "127.0.0.1", 104, "PACS")
    enqueue(sqlite_db, make_series(sqlite_db), "SR", uid, path, [dest])
    sender = FakeSender([SendOutcome(None, "PACS down"), SendOutcome(0)])
    worker = DeliveryWorker(sqlite_db, DeliverySettings(destinations=(dest,),
                                                        backoff_seconds=30), sender, clock=clock)
    assert worker.sweep()["retried"] == 1
    clock.advance(10)
    assert worker.sweep()["claimed"] == 0  # backing off
    clock.jump(-HOUR)
    assert worker.sweep()["sent"] == 1  # not an hour later
    with sqlite_db.session() as s:
        assert [(r.state, r.attempts) for r in s.scalars(select(Delivery))] == [
            (DeliveryState.SENT, 2)]


def test_a_claimed_delivery_is_not_taken_again_after_a_forward_jump_smaller_than_its_lease(
        sqlite_db: Database, tmp_path: Path) -> None:
    """In flight on one worker (its claim lease runs), a second worker must not send it."""
    clock = ManualClock()
    [(path, uid)] = make_files(tmp_path, 1)
    dest = Destination("pacs", "127.0.0.1", 104, "PACS")
    enqueue(sqlite_db, make_series(sqlite_db), "SR", uid, path, [dest])
    settings = DeliverySettings(destinations=(dest,))
    first = DeliveryWorker(sqlite_db, settings, FakeSender(), clock=clock)
    assert len(first._claim(clock.wall())) == 1  # claimed, now sending
    second = DeliveryWorker(sqlite_db, settings, FakeSender(), clock=clock)
    clock.jump(+60)
    assert second.sweep()["claimed"] == 0


# --------------------------------------------------------------------------- a running daemon


class GateAnalyzer:
    """Accepts every series, holds its job until released, and counts its runs."""

    name: ClassVar[str] = "gate"
    bundle: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        self.calls += 1
        self.started.set()
        assert self.release.wait(60)
        return [Finding("instances", value_num=len(series.paths), unit="1")]


def _wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_daemon_through_forward_and_backward_jumps(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A PET series sent over one association while the wall clock steps +1 h and then
    -2 h: every instance kept, the series completed once after its last instance
    (not early, not an hour late), its job run once although its lease looked an hour
    expired."""
    clock = ShiftedClock()

    class ShiftedDatetime(dt.datetime):  # APScheduler, if it ever runs interval jobs again
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return dt.datetime.now(tz) + (clock.wall() - dt.datetime.now(dt.UTC).replace(
                tzinfo=None))

    monkeypatch.setattr(aps_base, "datetime", ShiftedDatetime)
    rules = tmp_path / "rules.toml"
    rules.write_text('[[routing.rules]]\nanalyzer = "gate"\nmodalities = ["PT"]\n')
    quiet = 2.0
    settings = make_settings(tmp_path, QCD_CONFIG=str(rules),
                             QCD_ASSEMBLY__QUIET_SECONDS=str(quiet),
                             QCD_WORKERS__LEASE_SECONDS="60",
                             QCD_WORKERS__POLL_INTERVAL_SECONDS="0.1")
    gate = GateAnalyzer()
    daemon = Daemon(settings, registry={"gate": gate}, clock=clock)
    daemon.start()
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 9, "PET WB")], 16)
    try:
        ae = AE(ae_title="SCANNER1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", daemon.scp.port, ae_title="QCD")
        assert assoc.is_established
        statuses = []
        for i, path in enumerate(files):
            if i == 3:
                clock.jump(+HOUR)  # every received instance now looks an hour old
            if i == 6:
                clock.jump(-2 * HOUR)  # and now an hour in the future
            if i in (3, 6):
                time.sleep(quiet / 2)  # several sweeps run meanwhile
                with daemon.db.session() as s:
                    assert s.scalar(select(Series.state)) == SeriesState.RECEIVED
            statuses.append(int(assoc.send_c_store(path).Status))
        assoc.release()
        waited = _wait(lambda: _series_state(daemon) == SeriesState.COMPLETE, 30,
                       "completion")
        assert waited < quiet + 3.0  # bounded: the quiet period plus sweep slack, not 1 h
        assert gate.started.wait(10)
        clock.jump(+HOUR)  # the running job's lease now looks an hour expired
        daemon.executor.recover()
        time.sleep(0.5)  # a second worker thread would have claimed it by now
        with daemon.db.session() as s:
            job = s.scalars(select(Job)).one()
            assert (job.state, job.attempts) == (JobState.RUNNING, 1)
        gate.release.set()
        _wait(lambda: _job_state(daemon) == JobState.DONE, 10, "the job")
    finally:
        gate.release.set()
        daemon.stop()
    assert statuses == [0] * 9
    with daemon.db.session() as s:
        series = s.scalars(select(Series)).one()
        assert (series.generation, series.instance_count) == (1, 9)  # completed once
        assert s.scalar(select(func.count()).select_from(Instance)) == 9  # none lost
    assert gate.calls == 1  # run once


def _series_state(daemon: Daemon) -> SeriesState | None:
    with daemon.db.session() as s:
        return s.scalar(select(Series.state))


def _job_state(daemon: Daemon) -> JobState | None:
    with daemon.db.session() as s:
        return s.scalar(select(Job.state))
