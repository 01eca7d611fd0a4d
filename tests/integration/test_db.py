"""Database layer on SQLite and PostgreSQL: migrations, recording, completion, jobs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
import threading

import pytest
from sqlalchemy import func, inspect, select

from qcd.assembly import CompletionSweeper
from qcd.config import Settings, load_settings
from qcd.db.engine import Database
from qcd.db.instances import InstanceRecorder
from qcd.db.models import Instance, Job, JobState, Series, SeriesState
from qcd.db.queries import status_summary
from qcd.errors import DatabaseError
from qcd.ingest.header import InstanceHeader
from qcd.metrics import Metrics
from tests.clocks import ManualClock

pytestmark = pytest.mark.integration

TABLES = {"studies", "series", "instances", "jobs", "findings", "deliveries", "alerts", "users",
          "web_sessions", "audit_candidates"}


def header(sop: str, series: str = "1.2.3.4", modality: str = "PT", **kw: object) -> InstanceHeader:
    values: dict[str, object] = dict(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.128", sop_uid=sop, study_uid="1.2.3",
        series_uid=series, transfer_syntax="1.2.840.10008.1.2.1", modality=modality,
        body_part="WHOLEBODY", manufacturer="Vendor", model_name="M", station_name="ST1",
        device_serial="1", institution_name="Site", series_description="PET WB",
        series_number=1, instance_number=1, accession_number="A1", study_date="20261126")
    values.update(kw)
    return InstanceHeader(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Stored:
    relpath: str
    size: int = 10
    sha256: str = "0" * 64
    version: int = 1


def record(db: Database, h: InstanceHeader, version: int = 1, reopen: bool = True,
           now: dt.datetime | None = None) -> object:
    return InstanceRecorder(db).record(h, Stored(f"x/{h.sop_uid}", version=version),
                                       calling_ae="CT1", reopen_completed=reopen, now=now)



def settings(**env: str) -> Settings:
    return load_settings(environ={"QCD_ASSEMBLY__QUIET_SECONDS": "10", **env})


def test_migrations_create_schema_and_are_idempotent(db: Database) -> None:
    assert TABLES <= set(inspect(db.engine).get_table_names())
    db.upgrade()
    db.check()
    assert db.current_revision() == db.head_revision() == "0006"


def test_migrations_match_the_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from qcd.db.models import Base

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_check_refuses_unmigrated_database(tmp_path: object) -> None:
    empty = Database(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(DatabaseError, match="qcd db upgrade"):
        empty.check()
    empty.dispose()


def test_recording_is_idempotent_and_versioned(db: Database) -> None:
    first = record(db, header("1.2.3.4.1"))
    again = record(db, header("1.2.3.4.1"))
    v2 = record(db, header("1.2.3.4.1"), version=2)
    assert first.new_instance and not again.new_instance and v2.new_instance  # type: ignore[attr-defined]
    with db.session() as s:
        series = s.scalars(select(Series)).one()
        assert series.instance_count == 2 and series.state == SeriesState.RECEIVED
        assert series.station_name == "ST1" and series.modality == "PT"
        assert s.scalar(select(func.count()).select_from(Instance)) == 2


def test_concurrent_associations_record_one_series(db: Database) -> None:
    errors: list[BaseException] = []

    def push(lane: int) -> None:
        try:
            for i in range(15):
                record(db, header(f"1.2.3.4.{lane}.{i}", series="1.2.3.9"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(lane,)) for lane in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session() as s:
        assert s.scalar(select(Series.instance_count)) == 60
        assert s.scalar(select(func.count()).select_from(Instance)) == 60


def test_series_completes_after_quiet_period_and_routes(db: Database) -> None:
    clock = ManualClock()
    sweeper = CompletionSweeper(settings(), db, Metrics(), available={"earl"}, clock=clock)
    record(db, header("1.2.3.4.1"), now=clock.wall())
    record(db, header("1.2.3.5.1", series="1.2.3.5", modality="MR",
                      series_description="cardiac LA"), now=clock.wall())
    record(db, header("1.2.3.6.1", series="1.2.3.6", modality="OT"), now=clock.wall())
    assert sweeper.sweep() == 0  # not quiet yet
    clock.advance(11)
    assert sweeper.sweep() == 3
    clock.advance(1)
    assert sweeper.sweep() == 0  # no double completion
    with db.session() as s:
        jobs = {(j.series.series_uid, j.analyzer): j for j in s.scalars(select(Job))}
        assert set(jobs) == {("1.2.3.4", "earl"), ("1.2.3.5", "atrium")}
        assert jobs[("1.2.3.4", "earl")].state == JobState.QUEUED
        unavailable = jobs[("1.2.3.5", "atrium")]
        assert unavailable.state == JobState.UNAVAILABLE
        assert "'atrium' is not implemented" in (unavailable.error or "")
        assert all(sr.state == SeriesState.COMPLETE for sr in s.scalars(select(Series)))
    summary = status_summary(db)
    assert summary["series"] == {"COMPLETE": 3}
    assert summary["jobs"] == {"QUEUED": 1, "UNAVAILABLE": 1}


def test_per_modality_quiet_period(db: Database) -> None:
    s = settings(QCD_ASSEMBLY__QUIET_SECONDS_BY_MODALITY="PT=60")
    clock = ManualClock()
    sweeper = CompletionSweeper(s, db, Metrics(), available=(), clock=clock)
    record(db, header("1.2.3.4.1"), now=clock.wall())
    record(db, header("1.2.3.5.1", series="1.2.3.5", modality="CT"), now=clock.wall())
    clock.advance(11)
    assert sweeper.sweep() == 1  # CT only
    clock.advance(50)
    assert sweeper.sweep() == 1  # then PT


def test_late_instance_reopens_for_reanalysis(db: Database) -> None:
    clock = ManualClock()
    sweeper = CompletionSweeper(settings(), db, Metrics(), available={"earl"}, clock=clock)
    record(db, header("1.2.3.4.1"), now=clock.wall())
    clock.advance(11)
    assert sweeper.sweep() == 1
    late = record(db, header("1.2.3.4.2"), now=clock.wall())
    assert late.reopened  # type: ignore[attr-defined]
    with db.session() as s:
        series = s.scalars(select(Series)).one()
        assert (series.state, series.generation) == (SeriesState.RECEIVED, 2)
    assert sweeper.sweep() == 0  # quiet again from the late instance on
    clock.advance(11)
    assert sweeper.sweep() == 1
    with db.session() as s:
        gens = sorted(j.generation for j in s.scalars(select(Job)))
        assert gens == [1, 2]


def test_late_instance_kept_without_reopen_when_disabled(db: Database) -> None:
    clock = ManualClock()
    sweeper = CompletionSweeper(settings(), db, Metrics(), available={"earl"}, clock=clock)
    record(db, header("1.2.3.4.1"), now=clock.wall())
    clock.advance(11)
    sweeper.sweep()
    late = record(db, header("1.2.3.4.2"), reopen=False)
    assert late.new_instance and not late.reopened  # type: ignore[attr-defined]
    with db.session() as s:
        series = s.scalars(select(Series)).one()
        assert (series.state, series.generation, series.instance_count) == (
            SeriesState.COMPLETE, 1, 2)


def test_two_sweepers_racing_create_each_job_once(db: Database) -> None:
    clock = ManualClock()
    for n in range(10):
        record(db, header(f"1.2.3.{n}.1", series=f"1.2.3.{n}"), now=clock.wall())
    sweepers = [CompletionSweeper(settings(), db, Metrics(), available={"earl"}, clock=clock)
                for _ in range(2)]
    clock.advance(11)
    done: list[int] = []
    threads = [threading.Thread(target=lambda sw=sw: done.append(sw.sweep()))
               for sw in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(done) == 10
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 10

