"""qcd.clock and the interval scheduler under wall-clock jumps (no database)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from apscheduler.schedulers import base as aps_base

from qcd.clock import Elapsed
from qcd.scheduler import IntervalJobs, build_scheduler
from tests.clocks import ManualClock

HOUR = 3600.0


def test_elapsed_reads_the_wall_clock_once_then_the_monotonic_clock() -> None:
    clock = ManualClock()
    elapsed = Elapsed(clock)
    stamp = clock.wall() - dt.timedelta(seconds=4)
    assert elapsed.seconds("s", stamp) == pytest.approx(4)
    clock.jump(+HOUR)  # NTP steps forward: the stamp is not an hour older
    assert elapsed.seconds("s", stamp) == pytest.approx(4)
    clock.advance(3)
    clock.jump(-2 * HOUR)  # and back: not an hour younger either
    assert elapsed.seconds("s", stamp) == pytest.approx(7)
    newer = clock.wall() - dt.timedelta(seconds=2)  # a new stamp for the key: read afresh
    assert elapsed.seconds("s", newer) == pytest.approx(2)


def test_a_stamp_from_the_future_counts_from_first_sight() -> None:
    clock = ManualClock()
    elapsed = Elapsed(clock)
    written = clock.wall()
    clock.jump(-HOUR)  # the clock went back after the stamp was written
    assert elapsed.seconds("s", written) == 0.0  # not -3600: never "more than fresh"
    clock.advance(10)
    assert elapsed.seconds("s", written) == pytest.approx(10)
    deadline = clock.wall() + dt.timedelta(hours=5)  # a lease "5 h ahead" of a 60 s lease
    assert elapsed.seconds("lease", deadline, floor=-60) == -60


def test_note_needs_no_wall_clock_and_keep_forgets() -> None:
    clock = ManualClock()
    elapsed = Elapsed(clock)
    stamp = clock.wall()
    clock.jump(+HOUR)  # the jump lands between writing and the first look
    elapsed.note("s", stamp)
    assert elapsed.seconds("s", stamp) == 0.0
    elapsed.note("lease", stamp, age=-60)
    clock.advance(61)
    assert elapsed.seconds("lease", stamp) == pytest.approx(1)
    elapsed.keep(["lease"])
    assert elapsed.seconds("s", stamp) == pytest.approx(HOUR + 61)  # forgotten: wall again


class _Shifted(dt.datetime):
    """``datetime`` for APScheduler's module: ``now()`` is off by ``offset`` seconds."""

    offset = 0.0

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return dt.datetime.now(tz) + dt.timedelta(seconds=cls.offset)


def _runs_after_backward_jump(start: Any, stop: Any, add: Any,
                              monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Runs of a 50 ms job in 0.5 s before and 0.5 s after the wall clock goes back 1 h."""
    monkeypatch.setattr(aps_base, "datetime", _Shifted)
    monkeypatch.setattr(_Shifted, "offset", 0.0)
    real_time = time.time
    runs: list[float] = []
    lock = threading.Lock()

    def job() -> None:
        with lock:
            runs.append(time.monotonic())

    add(job)
    start()
    try:
        time.sleep(0.5)
        before = len(runs)
        monkeypatch.setattr(_Shifted, "offset", -HOUR)
        monkeypatch.setattr(time, "time", lambda: real_time() - HOUR)
        time.sleep(0.1)
        settled = len(runs)
        time.sleep(0.5)
        after = len(runs) - settled
    finally:
        monkeypatch.setattr(time, "time", real_time)
        stop()
    return before, after


def test_apscheduler_interval_jobs_stall_after_a_backward_jump(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Why qcd's interval jobs are not APScheduler jobs: the next run is computed on the
    wall clock, so an hour back means an hour without completion sweeps or deliveries."""
    scheduler = build_scheduler()
    before, after = _runs_after_backward_jump(
        scheduler.start, lambda: scheduler.shutdown(wait=False),
        lambda job: scheduler.add_job(job, "interval", seconds=0.05, id="j"), monkeypatch)
    assert before >= 3
    assert after == 0  # stalled (for the next hour)


def test_interval_jobs_run_on_after_a_backward_jump(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = IntervalJobs()
    before, after = _runs_after_backward_jump(
        jobs.start, jobs.shutdown, lambda job: jobs.add("j", job, 0.05), monkeypatch)
    assert before >= 3
    assert after >= 3


def test_interval_jobs_survive_errors_and_report_liveness() -> None:
    jobs = IntervalJobs()
    calls: list[int] = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    jobs.add("boom", boom, 0.02)
    assert not jobs.running
    jobs.start()
    time.sleep(0.2)
    assert jobs.running and len(calls) >= 3
    with pytest.raises(RuntimeError):
        jobs.add("late", boom, 1)
    jobs.shutdown()
    assert not jobs.running
    with pytest.raises(ValueError):
        IntervalJobs().add("zero", boom, 0)
