"""Off-hours windows and audit schedules: parsing and checks (pure, no I/O).

A window ``HH:MM-HH:MM`` is in local wall-clock time, start inclusive, end exclusive;
one that ends before it starts wraps midnight (``20:00-06:00``). The schedule is
``interval:SECONDS`` or a 5-field crontab in local time.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    start: dt.time
    end: dt.time

    def contains(self, now: dt.datetime | dt.time) -> bool:
        t = now.time() if isinstance(now, dt.datetime) else now
        t = t.replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


def _hhmm(text: str) -> dt.time:
    m = _HHMM.match(text.strip())
    if not m:
        raise ValueError(f"{text.strip()!r} is not HH:MM")
    return dt.time(int(m.group(1)), int(m.group(2)))


def parse_window(text: str) -> Window | None:
    """``HH:MM-HH:MM`` -> :class:`Window`; empty -> None (any time).

    Raises
    ------
    ValueError
        Not two HH:MM times separated by '-', or an empty (start == end) window.
    """
    if not text.strip():
        return None
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM")
    window = Window(_hhmm(parts[0]), _hhmm(parts[1]))
    if window.start == window.end:
        raise ValueError(f"{text!r} is an empty window")
    return window


def in_window(window: str, now: dt.datetime | None = None) -> bool:
    """True when ``now`` (local time) lies in ``window`` (always true for an empty one)."""
    parsed = parse_window(window)
    return parsed is None or parsed.contains(now or dt.datetime.now())


@dataclass(frozen=True)
class Schedule:
    interval_seconds: float | None = None
    crontab: str | None = None


def parse_schedule(text: str) -> Schedule | None:
    """``interval:SECONDS`` or a 5-field crontab; empty -> None (no scheduled audit).

    Raises
    ------
    ValueError
        Anything else (the crontab is checked by APScheduler's own parser).
    """
    text = text.strip()
    if not text:
        return None
    if text.startswith("interval:"):
        try:
            seconds = float(text.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"{text!r}: interval needs a number of seconds") from None
        if not seconds >= 60:
            raise ValueError(f"{text!r}: interval must be >= 60 seconds")
        return Schedule(interval_seconds=seconds)
    if len(text.split()) != 5:
        raise ValueError(f"{text!r} is neither interval:SECONDS nor a 5-field crontab")
    from apscheduler.triggers.cron import CronTrigger

    CronTrigger.from_crontab(text)  # raises ValueError on a bad field
    return Schedule(crontab=text)
