"""The latency benchmark's split of the time by the daemon's own timestamps."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from qcd.db.engine import Database
from qcd.db.models import Delivery, Job, Series, Study
from tests.bench.bench_latency import STAGES, stage_seconds


def test_stage_seconds_splits_the_series_job_and_report_marks(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/qcd.db")
    db.upgrade()
    t0 = dt.datetime(2026, 12, 7, 23, 0, 0)

    def at(seconds: float) -> dt.datetime:
        return t0 + dt.timedelta(seconds=seconds)

    with db.session() as session:
        study = Study(study_uid="1.2.3")
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid="1.2.3.4", last_received_at=at(0),
                        completed_at=at(2.1))
        session.add(series)
        session.flush()
        session.add(Job(series_id=series.id, analyzer="earl", created_at=at(2.15),
                        started_at=at(2.2), finished_at=at(7.7)))
        for kind, created in (("SEG", 8.0), ("SR", 8.5)):  # only the SR's row counts
            session.add(Delivery(series_id=series.id, object_kind=kind,
                                 sop_instance_uid=f"1.2.3.4.{kind}", destination="pacs",
                                 path=f"{kind}.dcm", created_at=at(created)))
    db.engine.dispose()

    got = stage_seconds(tmp_path / "qcd.db")
    want = {"complete": 2.1, "queued": 0.05, "claimed": 0.05, "analysed": 5.5, "reported": 0.8}
    assert list(got) == [key for _, key in STAGES]
    assert all(abs(got[k] - v) < 1e-6 for k, v in want.items()), got


def test_stage_seconds_is_empty_before_an_sr_is_queued(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/qcd.db")
    db.upgrade()
    db.engine.dispose()
    assert stage_seconds(tmp_path / "qcd.db") == {}
