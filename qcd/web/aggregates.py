"""Site and scanner aggregates of the dashboard: EARL compliance, rescans, chest flags, LA volume.

Only the *current* findings count: those of jobs of the series' current generation
(a late instance that re-opens a series makes its older findings history). A series
belongs to the period in which qcd first received it. Groups are InstitutionName and
StationName (falling back to DeviceSerialNumber); no patient data is read.

Counting and grouping happen in SQL (portable between SQLite and PostgreSQL); only
the LA volumes themselves are fetched, for their quantiles and histogram.
"""

from __future__ import annotations

import bisect
import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement

from qcd.db.engine import Database
from qcd.db.models import Alert, AlertState, Delivery, Finding, Job, JobState, Series

EARL_CLASSES = ("clinical", "EARL1", "EARL2", "indeterminate")
"""Values of the ``earl_class`` finding, in display order."""
CATEGORICAL = ("earl_class", "rescan_recommended", "urgent", "normal", "lavi_band",
               "motion_grade")
"""Findings counted by value."""
CHEST_PREFIX = "chest_"
CHEST_FLAG = 0.5
"""A ``chest_<label>`` probability at or above this counts as flagged on the overview."""
LA_BINS_ML = (0, 40, 60, 80, 100, 120, 150, 200)
"""Edges of the LA volume histogram (ml); the last bin is open-ended."""
UNKNOWN = "unknown"
TRUE_TEXT = ("true", "yes", "1")


@dataclass(frozen=True)
class Period:
    """A half-open interval [start, end) of naive UTC times."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def last_days(cls, days: int, now: dt.datetime | None = None) -> Period:
        end = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return cls(end - dt.timedelta(days=days), end)

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(timespec="seconds"),
                "end": self.end.isoformat(timespec="seconds")}


@dataclass
class Bucket:
    """Raw counts of one scanner (or, merged, one site) in a period."""

    site: str
    station: str
    series_analysed: int = 0
    studies_analysed: int = 0
    failures: int = 0
    values: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    """finding name -> value (lower-case text, or the EARL class) -> count."""
    chest: dict[str, list[int]] = field(default_factory=dict)
    """chest label -> [findings, flagged]."""
    la_volumes: list[float] = field(default_factory=list)

    def add_value(self, name: str, value: str, n: int) -> None:
        self.values[name][value] = self.values[name].get(value, 0) + n

    def merge(self, other: Bucket) -> None:
        self.series_analysed += other.series_analysed
        self.studies_analysed += other.studies_analysed
        self.failures += other.failures
        for name, counts in other.values.items():
            for value, n in counts.items():
                self.add_value(name, value, n)
        for label, (n, flagged) in other.chest.items():
            mine = self.chest.setdefault(label, [0, 0])
            mine[0] += n
            mine[1] += flagged
        self.la_volumes.extend(other.la_volumes)

    def to_dict(self) -> dict[str, Any]:
        """The row the pages, the API and the CSV show (rates are None without data)."""
        earl = {c: self.values.get("earl_class", {}).get(c.lower(), 0) for c in EARL_CLASSES}
        earl_total = sum(self.values.get("earl_class", {}).values())
        rescan = self.values.get("rescan_recommended", {})
        urgent = self.values.get("urgent", {})
        normal = self.values.get("normal", {})
        return {
            "site": self.site,
            "station": self.station,
            "series_analysed": self.series_analysed,
            "studies_analysed": self.studies_analysed,
            "failures": self.failures,
            "earl": {"total": earl_total, "counts": earl,
                     "rates": {c: _rate(n, earl_total) for c, n in earl.items()},
                     "compliant_rate": _rate(earl["EARL1"] + earl["EARL2"], earl_total)},
            "motion": {"total": sum(rescan.values()), "rescan": rescan.get("true", 0),
                       "rescan_rate": _rate(rescan.get("true", 0), sum(rescan.values())),
                       "grades": dict(sorted(self.values.get("motion_grade", {}).items()))},
            "chest": {"total": sum(urgent.values()), "urgent": urgent.get("true", 0),
                      "urgent_rate": _rate(urgent.get("true", 0), sum(urgent.values())),
                      "normal_rate": _rate(normal.get("true", 0), sum(normal.values())),
                      "labels": {label: {"total": n, "flagged": f, "rate": _rate(f, n)}
                                 for label, (n, f) in sorted(self.chest.items())}},
            "la_volume": la_summary(self.la_volumes),
            "lavi_band": dict(sorted(self.values.get("lavi_band", {}).items())),
        }


def _rate(n: int, total: int) -> float | None:
    return round(n / total, 4) if total else None


def la_summary(volumes: Iterable[float]) -> dict[str, Any]:
    """Count, quartiles and a histogram (``LA_BINS_ML``) of LA volumes in ml."""
    values = sorted(volumes)
    hist = [0] * len(LA_BINS_ML)
    for v in values:
        hist[max(bisect.bisect_right(LA_BINS_ML, v) - 1, 0)] += 1
    out: dict[str, Any] = {"n": len(values), "bins_ml": list(LA_BINS_ML), "histogram": hist}
    if values:
        q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else \
            [values[0]] * 3
        out.update(min=round(values[0], 1), p25=round(q[0], 1), median=round(q[1], 1),
                   p75=round(q[2], 1), max=round(values[-1], 1))
    return out


def _truthy() -> ColumnElement[bool]:
    return or_(func.lower(Finding.value_text).in_(TRUE_TEXT),
               and_(Finding.value_text.is_(None), Finding.value_num >= 0.5))


def _value_key() -> ColumnElement[Any]:
    """EARL classes and grades by their text; yes/no findings as "true"/"false"."""
    flag_names = ("rescan_recommended", "urgent", "normal")
    return case(
        (Finding.name.in_(flag_names), case((_truthy(), literal("true")), else_=literal("false"))),
        (Finding.value_text.is_not(None), func.lower(Finding.value_text)),
        else_=cast(cast(Finding.value_num, Integer), String),
    )


INDEX_MAX_DAYS = 90
"""SQLite walks ``ix_series_first_received`` for any period, which is 2-3 times slower
than scanning when the period holds most rows (tests/bench/bench_dashboard.py);
longer periods compare through a unary ``+``, SQLite's way of not using an index."""


def _in_period(db: Database, period: Period) -> list[ColumnElement[bool]]:
    column: Any = Series.first_received_at
    if db.is_sqlite and period.end - period.start > dt.timedelta(days=INDEX_MAX_DAYS):
        column = type_coerce(literal_column("+series.first_received_at"), DateTime())
    return [column >= period.start, column < period.end]


def _current(db: Database, period: Period) -> list[ColumnElement[bool]]:
    return [Job.id == Finding.job_id, Job.generation == Series.generation,
            Series.id == Finding.series_id, *_in_period(db, period)]


def _station(station: str | None, serial: str | None) -> str:
    if station:
        return station
    return f"SN {serial}" if serial else UNKNOWN


def scanner_buckets(db: Database, period: Period) -> list[Bucket]:
    """One :class:`Bucket` per (site, scanner) with any series in ``period``."""
    buckets: dict[tuple[str, str], Bucket] = {}

    def bucket(site: str | None, station: str | None, serial: str | None) -> Bucket:
        key = (site or UNKNOWN, _station(station, serial))
        if key not in buckets:
            buckets[key] = Bucket(*key)
        return buckets[key]

    group = (Series.institution_name, Series.station_name, Series.device_serial)
    in_period = and_(*_in_period(db, period))
    with db.session() as session:
        for site, station, serial, studies, series in session.execute(
            select(*group, func.count(func.distinct(Series.study_id)),
                   func.count(func.distinct(Series.id)))
            .join(Job, and_(Job.series_id == Series.id, Job.generation == Series.generation))
            .where(in_period, Job.state == JobState.DONE).group_by(*group)
        ):
            b = bucket(site, station, serial)
            b.studies_analysed += studies
            b.series_analysed += series
        for site, station, serial, n in session.execute(
            select(*group, func.count(Job.id))
            .join(Job, and_(Job.series_id == Series.id, Job.generation == Series.generation))
            .where(in_period, Job.state == JobState.FAILED).group_by(*group)
        ):
            bucket(site, station, serial).failures += n
        value = _value_key().label("v")
        for site, station, serial, name, v, n in session.execute(
            select(*group, Finding.name, value, func.count())
            .select_from(Finding).join(Series, Series.id == Finding.series_id)
            .join(Job, Job.id == Finding.job_id)
            .where(*_current(db, period), Finding.name.in_(CATEGORICAL))
            .group_by(*group, Finding.name, value)
        ):
            if v is not None:
                bucket(site, station, serial).add_value(name, str(v), n)
        flagged = func.sum(case((Finding.value_num >= CHEST_FLAG, 1), else_=0))
        for site, station, serial, name, n, f in session.execute(
            select(*group, Finding.name, func.count(), flagged)
            .select_from(Finding).join(Series, Series.id == Finding.series_id)
            .join(Job, Job.id == Finding.job_id)
            .where(*_current(db, period), Finding.name.like(CHEST_PREFIX + "%"),
                   Finding.value_num.is_not(None))
            .group_by(*group, Finding.name)
        ):
            label = name[len(CHEST_PREFIX):]
            counts = bucket(site, station, serial).chest.setdefault(label, [0, 0])
            counts[0] += n
            counts[1] += int(f or 0)
        for site, station, serial, v in session.execute(
            select(*group, Finding.value_num)
            .select_from(Finding).join(Series, Series.id == Finding.series_id)
            .join(Job, Job.id == Finding.job_id)
            .where(*_current(db, period), Finding.name == "la_volume",
                   Finding.value_num.is_not(None))
        ):
            if v is not None:
                bucket(site, station, serial).la_volumes.append(float(v))
    return [buckets[k] for k in sorted(buckets)]


def site_table(db: Database, period: Period) -> list[dict[str, Any]]:
    """Per site: the merged row plus its scanners' rows (``stations``)."""
    sites: dict[str, list[Bucket]] = defaultdict(list)
    for b in scanner_buckets(db, period):
        sites[b.site].append(b)
    out = []
    for site, stations in sorted(sites.items()):
        total = Bucket(site, "all")
        for b in stations:
            total.merge(b)
        row = total.to_dict()
        row["stations"] = [b.to_dict() for b in stations]
        out.append(row)
    return out


def trends(db: Database, period: Period, site: str | None = None, bucket: str = "day"
           ) -> list[dict[str, Any]]:
    """Per day (or ISO week) and site: series analysed, EARL-compliant share, rescan and
    urgent rates. Days are UTC dates of first receipt; weeks are named by their Monday;
    buckets without data are absent.
    """
    if bucket not in ("day", "week"):
        raise ValueError(f"bucket {bucket!r} is not allowed; allowed: day, week")
    day = func.date(Series.first_received_at).label("day")
    site_col = func.coalesce(Series.institution_name, literal(UNKNOWN)).label("site")
    value = _value_key().label("v")
    where = _current(db, period) + [Finding.name.in_(("earl_class", "rescan_recommended",
                                                  "urgent"))]
    if site is not None:
        where.append(site_col == site)
    rows: dict[tuple[str, str], Bucket] = {}
    with db.session() as session:
        for d, s, name, v, n in session.execute(
            select(day, site_col, Finding.name, value, func.count())
            .select_from(Finding).join(Series, Series.id == Finding.series_id)
            .join(Job, Job.id == Finding.job_id)
            .where(*where).group_by(day, site_col, Finding.name, value)
        ):
            key = (str(d)[:10], s)
            b = rows.setdefault(key, Bucket(s, "all"))
            if v is not None:
                b.add_value(name, str(v), n)
        series_where = [*_in_period(db, period), Job.state == JobState.DONE]
        if site is not None:
            series_where.append(site_col == site)
        for d, s, n in session.execute(
            select(day, site_col, func.count(func.distinct(Series.id)))
            .join(Job, and_(Job.series_id == Series.id, Job.generation == Series.generation))
            .where(*series_where).group_by(day, site_col)
        ):
            rows.setdefault((str(d)[:10], s), Bucket(s, "all")).series_analysed += n
    if bucket == "week":
        weeks: dict[tuple[str, str], Bucket] = {}
        for (d, s), b in rows.items():
            day_ = dt.date.fromisoformat(d)
            monday = (day_ - dt.timedelta(days=day_.weekday())).isoformat()
            weeks.setdefault((monday, s), Bucket(s, "all")).merge(b)
        rows = weeks
    out = []
    for (d, s), b in sorted(rows.items()):
        row = b.to_dict()
        out.append({"day": d, "site": s, "series_analysed": b.series_analysed,
                    "earl_total": row["earl"]["total"],
                    "earl_compliant_rate": row["earl"]["compliant_rate"],
                    "rescan_rate": row["motion"]["rescan_rate"],
                    "urgent_rate": row["chest"]["urgent_rate"]})
    return out


CSV_COLUMNS = ("site", "station", "period_start", "period_end", "series_analysed",
               "studies_analysed", "failures", "earl_total", "clinical", "EARL1", "EARL2",
               "indeterminate", "earl_compliant_rate", "motion_total", "rescan_rate",
               "chest_total", "urgent_rate", "la_volume_n", "la_volume_median_ml")


def csv_rows(table: list[dict[str, Any]], period: Period) -> list[list[Any]]:
    """The compliance table flattened for accreditation reports: one line per scanner
    followed by the site's total line (station ``all``)."""
    out: list[list[Any]] = []
    for site in table:
        for row in [*site["stations"], site]:
            earl = row["earl"]
            out.append([
                row["site"], row["station"], period.start.isoformat(timespec="seconds"),
                period.end.isoformat(timespec="seconds"), row["series_analysed"],
                row["studies_analysed"], row["failures"], earl["total"],
                *[earl["counts"][c] for c in EARL_CLASSES], _blank(earl["compliant_rate"]),
                row["motion"]["total"], _blank(row["motion"]["rescan_rate"]),
                row["chest"]["total"], _blank(row["chest"]["urgent_rate"]),
                row["la_volume"]["n"], _blank(row["la_volume"].get("median")),
            ])
    return out


def _blank(value: float | None) -> Any:
    return "" if value is None else value


METRIC_WINDOWS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24)}
METRIC_FINDINGS = ("earl_class", "rescan_recommended", "urgent", "normal")


def metric_rows(db: Database, now: dt.datetime | None = None
                ) -> list[tuple[str, dict[str, str], float]]:
    """Rows for :meth:`qcd.metrics.Metrics.watch_quality`: QC counts per site and scanner
    over the last hour and day, open alerts by kind, outbox rows by state."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    out: list[tuple[str, dict[str, str], float]] = []
    for window, length in METRIC_WINDOWS.items():
        for b in scanner_buckets(db, Period(now - length, now)):
            where = {"site": b.site, "station": b.station, "window": window}
            out.append(("series", where, float(b.series_analysed)))
            for name in METRIC_FINDINGS:
                for value, n in b.values.get(name, {}).items():
                    out.append(("findings", {**where, "finding": name, "value": value},
                                float(n)))
    with db.session() as session:
        for kind, n in session.execute(select(Alert.kind, func.count())
                                       .where(Alert.state == AlertState.OPEN)
                                       .group_by(Alert.kind)):
            out.append(("open_alerts", {"kind": kind}, float(n)))
        for state, n in session.execute(select(Delivery.state, func.count())
                                        .group_by(Delivery.state)):
            out.append(("outbox", {"state": getattr(state, "value", str(state))}, float(n)))
    return out
