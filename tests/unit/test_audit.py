"""Audit pieces without a PACS: windows, report maths, the candidate state machine."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest

from qcd.audit import query
from qcd.audit.query import AuditFilters, SeriesCandidate
from qcd.audit.report import effective_fwhm, extra_to_band
from qcd.audit.resolution import REFERENCES, band_range, extra_fwhm, phantom_class
from qcd.audit.retrieve import RetrieveResult
from qcd.audit.runner import AuditRunner, ModelRef
from qcd.audit.window import in_window, parse_schedule, parse_window
from qcd.config import load_settings
from qcd.db.engine import Database
from qcd.db.models import (
    AuditCandidate,
    AuditState,
    Finding,
    Job,
    JobState,
    Series,
    SeriesState,
    Study,
    utcnow,
)
from qcd.errors import ConfigError, ExportError


def test_window_wraps_midnight() -> None:
    assert in_window("20:00-06:00", dt.datetime(2026, 1, 1, 23, 0))
    assert in_window("20:00-06:00", dt.datetime(2026, 1, 1, 5, 59))
    assert not in_window("20:00-06:00", dt.datetime(2026, 1, 1, 6, 0))
    assert in_window("08:00-17:00", dt.datetime(2026, 1, 1, 8, 0))
    assert in_window("", dt.datetime(2026, 1, 1, 12, 0))
    for bad in ("20-06", "25:00-06:00", "10:00-10:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_schedule_forms() -> None:
    assert parse_schedule("") is None
    assert parse_schedule("interval:3600").interval_seconds == 3600  # type: ignore[union-attr]
    assert parse_schedule("0 21 * * *").crontab == "0 21 * * *"  # type: ignore[union-attr]
    for bad in ("interval:5", "hourly", "61 * * * *"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_audit_settings_are_validated() -> None:
    s = load_settings(environ={"QCD_AUDIT__WINDOW": "20:00-06:00",
                               "QCD_AUDIT__SCHEDULE": "interval:600",
                               "QCD_AUDIT__STATIONS": "PET*,SCAN2"})
    assert s.audit.stations == ("PET*", "SCAN2") and s.audit.method == "move"
    for key, value in (("QCD_AUDIT__METHOD", "ftp"), ("QCD_AUDIT__WINDOW", "late"),
                       ("QCD_AUDIT__MAX_CONCURRENT_RETRIEVES", "0"),
                       ("QCD_AUDIT__MOVE_DESTINATION", "X" * 17)):
        with pytest.raises(ConfigError, match=key.split("__")[1].lower()):
            load_settings(environ={key: value})


def test_extra_fwhm_adds_in_quadrature() -> None:
    assert extra_fwhm(5.0, 8.0) == pytest.approx(math.sqrt(39.0))
    assert extra_fwhm(8.0, 8.0) == 0.0
    assert extra_fwhm(9.0, 8.0) is None  # smoothing cannot sharpen
    # and the result really lands on the target: sqrt(f^2 + e^2) == t
    e = extra_fwhm(4.2, 7.7)
    assert e is not None and math.hypot(4.2, e) == pytest.approx(7.7)


def test_effective_fwhm_from_header_evidence() -> None:
    f, how = effective_fwhm({"filter_fwhm_mm": 6.0, "psf": None})
    assert f == pytest.approx(math.hypot(4.5, 6.0)) and "non-PSF" in how
    f, _ = effective_fwhm({"filter_fwhm_mm": 2.0, "psf": True})
    assert f == pytest.approx(math.hypot(3.5, 2.0))
    assert effective_fwhm({"filter_fwhm_mm": None}) == (None, "no post-filter FWHM in the header")


def test_extra_to_band_for_a_known_resolution() -> None:
    lo, hi = band_range("EARL1", 2.0)  # type: ignore[misc]
    assert (lo, hi) == (7.5, 9.0)  # SCIENCE.md 1d: EARL1 at 2 mm voxels, 7.5-9.0 mm
    extra = extra_to_band("EARL1", 5.0, 2.0)
    assert extra.minimum == pytest.approx(math.sqrt(7.5**2 - 25))
    assert extra.maximum == pytest.approx(math.sqrt(9.0**2 - 25))
    assert extra.recommended == pytest.approx(math.sqrt(8.25**2 - 25))
    inside = extra_to_band("EARL1", 8.0, 2.0)
    assert inside.minimum == 0.0 and inside.recommended == pytest.approx(math.sqrt(8.25**2 - 64))
    too_smooth = extra_to_band("EARL2", 8.0, 2.0)
    assert too_smooth.recommended is None and "smoother" in too_smooth.note
    assert band_range("EARL1", 3.9) == band_range("EARL1", 4.0)  # nearest tabulated voxel


def test_band_table_agrees_with_the_phantom_model() -> None:
    """Spot-check the shipped table against the phantom that labels the training data."""
    lo, hi = band_range("EARL1", 4.0)  # type: ignore[misc]
    assert phantom_class(4.0, (lo + hi) / 2, REFERENCES["EARL1"]) == "EARL1"
    assert phantom_class(4.0, 4.0, REFERENCES["EARL1"]) == "clinical"
    lo2, hi2 = band_range("EARL2", 4.0)  # type: ignore[misc]
    assert phantom_class(4.0, (lo2 + hi2) / 2, REFERENCES["EARL2"]) == "EARL2"


def test_filters_match_client_side() -> None:
    f = AuditFilters(dt.date(2024, 1, 1), dt.date(2024, 1, 31), "PT", ("pet*",), ())
    c = SeriesCandidate("1", "1.1", "PT", "20240115", "Site A", "PET1", None, None, 40)
    assert f.accepts(c)
    assert not f.accepts(SeriesCandidate("1", "1.1", "PT", "20240201", "A", "PET1", None, None, 1))
    assert not f.accepts(SeriesCandidate("1", "1.1", "CT", "20240115", "A", "PET1", None, None, 1))
    assert not f.accepts(SeriesCandidate("1", "1.1", "PT", "20240115", "A", "CT2", None, None, 1))
    assert f.date_range() == "20240101-20240131"


# -- state machine ---------------------------------------------------------------------

MODEL = ModelRef("earl", "1.0.0")


def _cands(n: int) -> list[SeriesCandidate]:
    return [SeriesCandidate("1.2.3", f"1.2.3.{i}", "PT", "20240115", "Site", "PET1", "SN1",
                            "PET WB", 40) for i in range(n)]


class FakePacs:
    def __init__(self, candidates: list[SeriesCandidate]) -> None:
        self.candidates = candidates
        self.calls: list[str] = []
        self.fail: set[str] = set()

    def find(self, filters: AuditFilters) -> list[SeriesCandidate]:
        return list(self.candidates)

    def retrieve(self, c: SeriesCandidate) -> RetrieveResult:
        self.calls.append(c.series_uid)
        if c.series_uid in self.fail:
            return RetrieveResult(False, error="status 0xA702, 0 done, 40 failed")
        return RetrieveResult(True, completed=40)


def _runner(db: Database, pacs: FakePacs, **env: str) -> AuditRunner:
    settings = load_settings(environ={"QCD_AUDIT__MAX_ATTEMPTS": "2", **env})
    return AuditRunner(settings, db, MODEL, pacs.find, pacs.retrieve)


def test_second_run_retrieves_nothing_new(sqlite_db: Database) -> None:
    pacs = FakePacs(_cands(4))
    first = _runner(sqlite_db, pacs).run(AuditFilters())
    assert sorted(first.retrieved) == sorted(c.series_uid for c in pacs.candidates)
    second = _runner(sqlite_db, pacs).run(AuditFilters())
    assert second.retrieved == [] and len(second.already_retrieved) == 4
    assert sorted(pacs.calls) == sorted(c.series_uid for c in pacs.candidates)  # once each


def test_failures_are_retried_up_to_max_attempts(sqlite_db: Database) -> None:
    pacs = FakePacs(_cands(2))
    pacs.fail = {"1.2.3.0"}
    runner = _runner(sqlite_db, pacs)
    assert list(runner.run(AuditFilters()).failed) == ["1.2.3.0"]
    assert list(runner.run(AuditFilters()).failed) == ["1.2.3.0"]
    third = runner.run(AuditFilters())  # out of attempts: left alone
    assert third.failed == {} and third.deferred == ["1.2.3.0"]
    assert pacs.calls.count("1.2.3.0") == 2 and pacs.calls.count("1.2.3.1") == 1
    with sqlite_db.session() as s:
        row = s.query(AuditCandidate).filter_by(series_uid="1.2.3.0").one()
        assert (row.state, row.attempts) == (AuditState.FAILED, 2) and "0xA702" in row.last_error


def test_interrupted_retrieve_resumes_after_stale_period(sqlite_db: Database) -> None:
    pacs = FakePacs(_cands(1))
    runner = _runner(sqlite_db, pacs, QCD_AUDIT__STALE_SECONDS="60")
    runner.record(pacs.candidates)
    assert runner._claim("1.2.3.0")  # a run claims it, then dies
    assert runner.run(AuditFilters()).deferred == ["1.2.3.0"]  # a live run may still own it
    with sqlite_db.session() as s:
        s.query(AuditCandidate).update({"updated_at": utcnow() - dt.timedelta(seconds=120)})
    assert runner.run(AuditFilters()).retrieved == ["1.2.3.0"]


def test_series_analysed_with_the_same_model_version_is_never_retrieved(
        sqlite_db: Database) -> None:
    pacs = FakePacs(_cands(2))
    with sqlite_db.session() as s:
        study = Study(study_uid="1.2.3")
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_uid="1.2.3.0", modality="PT",
                        state=SeriesState.COMPLETE, instance_count=40)
        s.add(series)
        s.flush()
        job = Job(series_id=series.id, analyzer="earl", state=JobState.DONE)
        s.add(job)
        s.flush()
        s.add(Finding(job_id=job.id, series_id=series.id, analyzer="earl", name="earl_class",
                      value_text="EARL1", model_name="earl", model_version="1.0.0"))
    summary = _runner(sqlite_db, pacs).run(AuditFilters())
    assert summary.skipped == ["1.2.3.0"] and summary.retrieved == ["1.2.3.1"]
    newer = AuditRunner(load_settings(environ={}), sqlite_db, ModelRef("earl", "2.0.0"),
                        pacs.find, pacs.retrieve)
    assert "1.2.3.0" in newer.run(AuditFilters(), dry_run=True).deferred


def test_dry_run_changes_nothing(sqlite_db: Database) -> None:
    pacs = FakePacs(_cands(3))
    summary = _runner(sqlite_db, pacs).run(AuditFilters(), dry_run=True)
    assert len(summary.deferred) == 3 and pacs.calls == []
    with sqlite_db.session() as s:
        assert s.query(AuditCandidate).count() == 0


def test_window_defers_retrieves_when_respected(sqlite_db: Database) -> None:
    pacs = FakePacs(_cands(2))
    runner = _runner(sqlite_db, pacs, QCD_AUDIT__WINDOW="20:00-06:00")
    noon = lambda: dt.datetime(2026, 1, 1, 12, 0)  # noqa: E731
    held = runner.run(AuditFilters(), respect_window=True, clock=noon)
    assert len(held.deferred) == 2 and pacs.calls == []
    assert len(runner.run(AuditFilters(), clock=noon).retrieved) == 2  # an explicit run


def test_scheduled_audit_is_registered_only_when_configured(sqlite_db: Database) -> None:
    from qcd.audit.runner import add_audit_job
    from qcd.scheduler import build_scheduler

    scheduler = build_scheduler()
    assert not add_audit_job(scheduler, load_settings(environ={}), sqlite_db)
    on = load_settings(environ={"QCD_AUDIT__SCHEDULE": "0 21 * * *",
                                "QCD_AUDIT__PACS_HOST": "pacs.example"})
    assert add_audit_job(scheduler, on, sqlite_db)
    assert scheduler.get_job("audit") is not None


class _RacyPacs:
    """An association whose C-FIND responses pynetdicom's reactor sometimes drops: the
    first series query of a study loses its Pending response and logs what pynetdicom
    logs when that happens."""

    is_established = True

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.sent: list[str] = []

    def send_c_find(self, query: Any, model: Any) -> Iterator[tuple[Any, Any]]:
        from pydicom.dataset import Dataset

        self.sent.append(query.QueryRetrieveLevel)
        pending, success = Dataset(), Dataset()
        pending.Status, success.Status = 0xFF00, 0x0000
        found = Dataset()
        found.StudyInstanceUID = "1.2.3"
        if query.QueryRetrieveLevel == "SERIES":
            found.SeriesInstanceUID, found.Modality = "1.2.3.4", "PT"
            if self.drops:
                self.drops -= 1
                logging.getLogger("pynetdicom.association").warning(
                    "Received unexpected C-FIND service message")
                yield success, None
                return
        yield pending, found
        yield success, None

    def release(self) -> None:
        self.is_established = False


@pytest.mark.parametrize(("drops", "found"), [(0, 1), (2, 1)])
def test_a_dropped_c_find_response_is_asked_again_not_lost(
        monkeypatch: pytest.MonkeyPatch, drops: int, found: int) -> None:
    pacs = _RacyPacs(drops)
    monkeypatch.setattr(query, "_associate", lambda peer: pacs)
    got = query.find_series(query.Peer("pacs", 104, "PACS", "QCD"), AuditFilters())
    assert [c.series_uid for c in got] == ["1.2.3.4"] * found
    assert pacs.sent == ["STUDY"] + ["SERIES"] * (drops + 1)


def test_c_find_responses_dropped_every_time_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    pacs = _RacyPacs(drops=query.QUERY_ATTEMPTS)
    monkeypatch.setattr(query, "_associate", lambda peer: pacs)
    with pytest.raises(ExportError, match="responses dropped by pynetdicom in 3 attempts"):
        query.find_series(query.Peer("pacs", 104, "PACS", "QCD"), AuditFilters())
    assert not pacs.is_established  # released all the same
