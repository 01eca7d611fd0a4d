"""Periodic work: interval jobs on the monotonic clock; APScheduler for wall-clock schedules.

APScheduler's interval trigger computes each next run from the previous one on the wall
clock, so after the clock goes back by an hour every interval job waits an hour: no
series completes, no result is delivered, no lease is checked
(``tests/unit/test_clock.py`` shows it). qcd's own interval jobs (completion
sweep, job recovery, reports, alerts, delivery) therefore run in :class:`IntervalJobs`,
which waits on the monotonic clock. APScheduler keeps what is wall-clock by nature: the
scheduled audit's crontab (local time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

LOGGER = logging.getLogger(__name__)


def build_scheduler() -> BackgroundScheduler:
    """APScheduler for wall-clock schedules (stable ids, no pile-up, bounded misfires)."""
    return BackgroundScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})


class IntervalJobs:
    """Each job in its own thread: run, then wait ``seconds`` on the monotonic clock.

    A slow run delays the next one instead of piling up (at most one run per job at a
    time); an exception is logged and the schedule goes on.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[Callable[[], Any], float]] = {}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stop = threading.Event()

    def add(self, job_id: str, func: Callable[[], Any], seconds: float) -> None:
        """Register ``func`` to run every ``seconds`` once started (replaces ``job_id``)."""
        if seconds <= 0:
            raise ValueError(f"interval of {job_id} must be > 0 seconds, got {seconds}")
        if self._started:
            raise RuntimeError("add interval jobs before start()")
        self._jobs[job_id] = (func, seconds)

    @property
    def running(self) -> bool:
        """Started, not stopped, and every job thread alive (the liveness check)."""
        return (self._started and not self._stop.is_set()
                and all(t.is_alive() for t in self._threads))

    def start(self) -> None:
        self._started = True
        for job_id, (func, seconds) in self._jobs.items():
            t = threading.Thread(target=self._loop, args=(job_id, func, seconds),
                                 name=f"qcd-{job_id}", daemon=True)
            t.start()
            self._threads.append(t)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop: a run in progress finishes (up to ``timeout`` seconds in all)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))

    def _loop(self, job_id: str, func: Callable[[], Any], seconds: float) -> None:
        while not self._stop.wait(seconds):  # Event.wait measures on the monotonic clock
            try:
                func()
            except Exception:
                LOGGER.exception("scheduled job %s failed; it will run again", job_id)
