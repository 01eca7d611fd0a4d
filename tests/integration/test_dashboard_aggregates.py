"""Dashboard aggregates on SQLite and PostgreSQL: exact numbers on hand-made data, and a
brute-force recount of seeded data."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from qcd.db.engine import Database
from qcd.db.models import Alert, AlertState, Finding, Job, JobState, Series, Study
from qcd.web import aggregates, records, seed
from qcd.web.aggregates import Period

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 20, 12, 0, 0)
_n = iter(range(1, 10**6))


def add_series(db: Database, site: str | None, station: str | None,
               findings: list[tuple[str, float | None, str | None]],
               days_ago: float = 1.0, state: JobState = JobState.DONE, analyzer: str = "x",
               generation: int = 1, serial: str | None = None) -> int:
    """One study with one series and one job of ``generation`` holding ``findings``."""
    k = next(_n)
    at = NOW - dt.timedelta(days=days_ago)
    with db.session() as session:
        study = Study(study_uid=f"1.2.3.{k}", first_received_at=at, last_received_at=at)
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid=f"1.2.3.{k}.1", institution_name=site,
                        station_name=station, device_serial=serial, modality="OT",
                        first_received_at=at, last_received_at=at, generation=generation)
        session.add(series)
        session.flush()
        job = Job(series_id=series.id, analyzer=analyzer, generation=generation, state=state)
        session.add(job)
        session.flush()
        for name, num, txt in findings:
            session.add(Finding(job_id=job.id, series_id=series.id, analyzer=analyzer,
                                name=name, value_num=num, value_text=txt))
        return series.id


def test_exact_rates_per_site_and_scanner(db: Database) -> None:
    for cls in ["clinical", "EARL1", "EARL1", "EARL2", "indeterminate"]:
        add_series(db, "North", "PET1", [("earl_class", None, cls), ("p_earl", 0.7, None)])
    add_series(db, "North", "PET2", [("earl_class", None, "EARL2")])
    add_series(db, "North", "PET2", [], state=JobState.FAILED)
    add_series(db, "North", "PET1", [("earl_class", None, "EARL1")], days_ago=40)  # outside
    for rescan in ["true", "false", "false", "yes"]:
        add_series(db, "South", "XCT", [("rescan_recommended", None, rescan),
                                        ("motion_grade", 4.0 if rescan != "false" else 2.0,
                                         None)])
    add_series(db, "South", None, [("urgent", 1.0, None), ("normal", None, "false"),
                                   ("chest_effusion", 0.9, None), ("chest_nodule", 0.2, None)],
               serial="SN9")
    add_series(db, "South", None, [("urgent", None, "false"), ("normal", None, "true"),
                                   ("chest_effusion", 0.1, None), ("chest_nodule", 0.5, None)],
               serial="SN9")
    for v in [50.0, 60.0, 70.0, 130.0]:
        add_series(db, None, "MR1", [("la_volume", v, None), ("lavi_band", None, "normal")])

    table = {s["site"]: s for s in aggregates.site_table(db, Period.last_days(30, NOW))}
    assert set(table) == {"North", "South", "unknown"}
    north = table["North"]
    assert north["series_analysed"] == 6 and north["failures"] == 1
    assert north["studies_analysed"] == 6
    assert north["earl"]["counts"] == {"clinical": 1, "EARL1": 2, "EARL2": 2,
                                       "indeterminate": 1}
    assert north["earl"]["compliant_rate"] == pytest.approx(4 / 6, abs=1e-4)
    pet1 = next(s for s in north["stations"] if s["station"] == "PET1")
    assert pet1["earl"]["rates"]["EARL1"] == 0.4
    assert pet1["earl"]["compliant_rate"] == 0.6
    south = table["South"]
    xct = next(s for s in south["stations"] if s["station"] == "XCT")
    assert xct["motion"] == {"total": 4, "rescan": 2, "rescan_rate": 0.5,
                             "grades": {"2": 2, "4": 2}}
    sn9 = next(s for s in south["stations"] if s["station"] == "SN SN9")
    assert sn9["chest"]["urgent_rate"] == 0.5 and sn9["chest"]["normal_rate"] == 0.5
    assert sn9["chest"]["labels"] == {
        "effusion": {"total": 2, "flagged": 1, "rate": 0.5},
        "nodule": {"total": 2, "flagged": 1, "rate": 0.5}}
    la = table["unknown"]["la_volume"]
    assert (la["n"], la["min"], la["median"], la["max"]) == (4, 50.0, 65.0, 130.0)
    assert la["histogram"][aggregates.LA_BINS_ML.index(120)] == 1
    assert table["unknown"]["lavi_band"] == {"normal": 4}


def test_only_current_generation_counts(db: Database) -> None:
    sid = add_series(db, "A", "S", [("earl_class", None, "clinical")], generation=1)
    with db.session() as session:
        series = session.get(Series, sid)
        assert series is not None
        series.generation = 2
        session.add(Job(series_id=sid, analyzer="x", generation=2, state=JobState.DONE))
        session.flush()
        job2 = session.scalars(select(Job).where(Job.generation == 2)).one()
        session.add(Finding(job_id=job2.id, series_id=sid, analyzer="x", name="earl_class",
                            value_text="EARL2"))
    (site,) = aggregates.site_table(db, Period.last_days(30, NOW))
    assert site["earl"]["counts"]["EARL2"] == 1 and site["earl"]["total"] == 1
    assert site["series_analysed"] == 1


def test_trends_by_day(db: Database) -> None:
    add_series(db, "A", "S", [("earl_class", None, "EARL1")], days_ago=1)
    add_series(db, "A", "S", [("earl_class", None, "clinical")], days_ago=1)
    add_series(db, "A", "S", [("earl_class", None, "EARL2")], days_ago=3)
    days = aggregates.trends(db, Period.last_days(30, NOW))
    assert [(d["day"], d["series_analysed"], d["earl_compliant_rate"]) for d in days] == [
        ("2026-11-17", 1, 1.0), ("2026-11-19", 2, 0.5)]
    assert aggregates.trends(db, Period.last_days(30, NOW), site="B") == []


def _recount(db: Database, period: Period) -> dict[tuple[str, str], Counter[str]]:
    """The same numbers the slow way, row by row through the ORM."""
    out: dict[tuple[str, str], Counter[str]] = {}
    with db.session() as session:
        for f, s, j in session.execute(
                select(Finding, Series, Job).join(Series, Series.id == Finding.series_id)
                .join(Job, Job.id == Finding.job_id)):
            if not period.start <= s.first_received_at < period.end:
                continue
            key = (s.institution_name or "unknown", s.station_name or "unknown")
            c = out.setdefault(key, Counter())
            if f.name == "earl_class":
                c[f"earl:{f.value_text}"] += 1
            if f.name == "rescan_recommended":
                c["motion"] += 1
                c["rescan"] += f.value_text == "true"
            if f.name == "la_volume":
                c["la"] += 1
    return out


def test_seeded_numbers_match_a_recount(db: Database) -> None:
    written = seed.seed(db, n_series=300, days=20, seed=3, now=NOW)
    assert written["findings"] > 600
    period = Period.last_days(10, NOW)
    expected = _recount(db, period)
    got: dict[tuple[str, str], dict[str, Any]] = {
        (r["site"], r["station"]): r for s in aggregates.site_table(db, period)
        for r in s["stations"]}
    assert set(got) == set(expected)
    for key, c in expected.items():
        row = got[key]
        for cls in aggregates.EARL_CLASSES:
            assert row["earl"]["counts"][cls] == c[f"earl:{cls}"], key
        assert row["motion"]["total"] == c["motion"]
        assert row["motion"]["rescan"] == c["rescan"]
        assert row["la_volume"]["n"] == c["la"]
    rows = aggregates.metric_rows(db, NOW)
    assert any(r[0] == "findings" and r[1]["finding"] == "earl_class" for r in rows)
    assert ("open_alerts", {"kind": "rescan"}) in [(r[0], r[1]) for r in rows]


def test_acknowledge_persists_and_refuses_twice(db: Database) -> None:
    seed.seed(db, n_series=60, days=5, seed=1, now=NOW)
    (first, *_) = records.alerts(db, "OPEN")
    row = records.acknowledge(db, first["id"], "  Dr Who ", "repeated the scan")
    assert row["state"] == "ACKNOWLEDGED" and row["acknowledged_by"] == "Dr Who"
    with db.session() as session:
        alert = session.get(Alert, first["id"])
        assert alert is not None and alert.state == AlertState.ACKNOWLEDGED
        assert alert.comment == "repeated the scan" and alert.acknowledged_at is not None
    with pytest.raises(records.AckError) as exc:
        records.acknowledge(db, first["id"], "x", "")
    assert exc.value.status == 409
    with pytest.raises(records.AckError) as exc:
        records.acknowledge(db, 10**6, "x", "")
    assert exc.value.status == 404
    assert first["id"] not in [a["id"] for a in records.alerts(db, "OPEN")]
    station = first["station"]
    assert all(a["station"] == station for a in records.alerts(db, None, station))


def test_weekly_trends_merge_days(db: Database) -> None:
    add_series(db, "A", "S", [("earl_class", None, "EARL1")], days_ago=1)  # Thu 19th
    add_series(db, "A", "S", [("earl_class", None, "clinical")], days_ago=3)  # Tue 17th
    add_series(db, "A", "S", [("earl_class", None, "EARL2")], days_ago=8)  # Thu 12th
    weeks = aggregates.trends(db, Period.last_days(30, NOW), bucket="week")
    assert [(w["day"], w["series_analysed"], w["earl_compliant_rate"]) for w in weeks] == [
        ("2026-11-09", 1, 1.0), ("2026-11-16", 2, 0.5)]
    with pytest.raises(ValueError):
        aggregates.trends(db, Period.last_days(30, NOW), bucket="month")
