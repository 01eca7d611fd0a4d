"""Clocks for tests: time that passes by hand, and a wall clock that jumps (qcd.clock.Clock)."""

from __future__ import annotations

import datetime as dt
import threading
import time

from qcd.db.models import utcnow


class ManualClock:
    """Both clocks move only when told: :meth:`advance` is time passing, :meth:`jump`
    moves the wall clock alone (an NTP step, a resumed VM)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._wall = start or utcnow()
        self._mono = 1000.0
        self._lock = threading.Lock()

    def wall(self) -> dt.datetime:
        with self._lock:
            return self._wall

    def mono(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall += dt.timedelta(seconds=seconds)
            self._mono += seconds

    def jump(self, seconds: float) -> None:
        with self._lock:
            self._wall += dt.timedelta(seconds=seconds)


class ShiftedClock:
    """The real clocks, the wall clock shifted by :meth:`jump` while a daemon runs."""

    def __init__(self) -> None:
        self._offset = dt.timedelta(0)
        self._lock = threading.Lock()

    def wall(self) -> dt.datetime:
        with self._lock:
            return utcnow() + self._offset

    def mono(self) -> float:
        return time.monotonic()

    def jump(self, seconds: float) -> None:
        with self._lock:
            self._offset += dt.timedelta(seconds=seconds)
