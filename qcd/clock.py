"""Time in qcd: wall clock for stored timestamps, monotonic clock for waiting.

The wall clock jumps: an NTP step, a VM resumed from a snapshot, an operator setting the
date. The monotonic clock never does, but it means nothing outside this process.
Timestamps that are stored (and read by other nodes and after a restart) are wall-clock;
every in-process decision "has X passed since that timestamp" is made here, so a jump of
the wall clock cannot complete a series that is still arriving, expire a lease that is
still held, or stall a retry for the length of the jump (docs/RELIABILITY.md, "Clock
jumps"):

* :class:`Elapsed` reads the wall clock once per stored timestamp, when it first sees it
  (or is told "written just now"), and measures on the monotonic clock from then on;
* :func:`due` is the SQL test for "the next attempt is due", which also treats an
  attempt scheduled further ahead than it can have been scheduled as due: the wall clock
  went back since it was set.

:class:`Clock` is the seam: tests pass a clock whose wall time they jump.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Protocol

from sqlalchemy import ColumnElement, case, or_

from qcd.db.models import utcnow

__all__ = ["SLACK", "SYSTEM_CLOCK", "Clock", "Elapsed", "SystemClock", "due", "longest_waits"]

SLACK = dt.timedelta(seconds=5)
"""Wall-clock differences smaller than this (between nodes, or a small NTP slew) are not
taken for a jump."""


class Clock(Protocol):
    """Where qcd reads the time."""

    def wall(self) -> dt.datetime:
        """Naive UTC now: for timestamps that are stored."""
        ...

    def mono(self) -> float:
        """Seconds on a clock that never jumps: for intervals inside this process."""
        ...


class SystemClock:
    """The real clocks."""

    def wall(self) -> dt.datetime:
        return utcnow()

    def mono(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class Elapsed:
    """Seconds since stored wall-clock timestamps, immune to later wall-clock jumps.

    The first time a (key, timestamp) pair is seen its age is read from the wall clock
    (at least ``floor``) and pinned to the monotonic clock; later readings of the same
    pair are monotonic. A new timestamp for the key is a new pair. Thread-safe.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._origin: dict[Hashable, tuple[dt.datetime, float]] = {}
        self._lock = threading.Lock()

    def note(self, key: Hashable, stamp: dt.datetime, age: float = 0.0) -> None:
        """``stamp`` was written just now by this process and is ``age`` seconds old
        (negative for a deadline ahead): no wall-clock reading needed."""
        with self._lock:
            self._origin[key] = (stamp, self.clock.mono() - age)

    def seconds(self, key: Hashable, stamp: dt.datetime, floor: float = 0.0) -> float:
        """How long ago ``stamp`` was (negative: still ahead), never less than ``floor``
        at first sight (a timestamp "in the future" means the clock went back)."""
        with self._lock:
            now = self.clock.mono()
            seen = self._origin.get(key)
            if seen is None or seen[0] != stamp:
                age = max((self.clock.wall() - stamp).total_seconds(), floor)
                self._origin[key] = (stamp, now - age)
                return age
            return now - seen[1]

    def keep(self, keys: Iterable[Hashable]) -> None:
        """Forget every key not in ``keys`` (rows that finished)."""
        wanted = set(keys)
        with self._lock:
            for key in [k for k in self._origin if k not in wanted]:
                del self._origin[key]


def due(column: Any, attempts: Any, now: dt.datetime,
        waits: Mapping[int, float]) -> ColumnElement[bool]:
    """SQL: the row's next attempt (``column``) is due at ``now``.

    Due when ``column`` is NULL or not after ``now`` — or when it lies further ahead
    than any wait the row can have been given after ``attempts`` attempts (``waits``:
    attempts -> longest wait in seconds, back-off or claim lease; others: the longest
    of all): the wall clock then went back since the wait was set, and the row would
    otherwise stall for the length of the jump. It is then retried at once, at most its
    own wait early.
    """
    longest = max(waits.values(), default=0.0)
    ahead = case(
        {k: now + dt.timedelta(seconds=w) + SLACK for k, w in waits.items()},
        value=attempts, else_=now + dt.timedelta(seconds=longest) + SLACK,
    ) if waits else now + SLACK
    return or_(column.is_(None), column <= now, column > ahead)


def longest_waits(delay: Callable[[int], float], lease: dt.timedelta,
                  max_attempts: int) -> dict[int, float]:
    """The ``waits`` of :func:`due` for rows retried with back-off ``delay(attempts)``
    and claimed under ``lease``: attempts so far -> the longest a row can have been
    told to wait (a row waiting longer was scheduled before the clock went back)."""
    seconds = lease.total_seconds()
    return {k: max(delay(k) if k else 0.0, seconds) for k in range(max_attempts)}
