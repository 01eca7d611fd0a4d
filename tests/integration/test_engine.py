"""The analysis engine on SQLite and PostgreSQL: atomic claims, retries, recovery, e2e."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from qcd.analyze import analyze_paths
from qcd.app import Daemon
from qcd.config import load_settings
from qcd.db.engine import Database
from qcd.db.models import Finding, Job, JobState, utcnow
from qcd.synth import SeriesSpec, make_study
from qcd.workers import queue
from tests.conftest import make_settings
from tests.integration.dcmtk import storescu
from tests.integration.test_db import header, record
from tests.toy_analyzers import CountAnalyzer, FlakyAnalyzer, write_toy_bundle

pytestmark = pytest.mark.integration



def make_jobs(db: Database, n: int, analyzer: str = "count") -> list[int]:
    ids = []
    for i in range(n):
        rec = record(db, header(f"1.2.3.{i}.1", series=f"1.2.3.{i}"))
        with db.session() as s:
            job = Job(series_id=rec.series_id, analyzer=analyzer, state=JobState.QUEUED)  # type: ignore[attr-defined]
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def test_concurrent_workers_claim_each_job_once(db: Database) -> None:
    ids = make_jobs(db, 40)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        while (job := queue.claim_next(db, f"w{i}", {"count"}, 60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids


def test_claim_returns_the_series_files_and_completion_records_provenance(
    db: Database, tmp_path: Path
) -> None:
    [job_id] = make_jobs(db, 1)
    record(db, header("1.2.3.0.2", series="1.2.3.0", instance_number=0))
    job = queue.claim_next(db, "w", {"count"}, 60)
    assert job is not None and job.id == job_id and job.attempt == 1
    assert job.relpaths == ("x/1.2.3.0.2", "x/1.2.3.0.1")  # instance-number order
    assert queue.claim_next(db, "w2", {"count"}, 60) is None  # held
    from qcd.analyzers.base import Finding as F
    from qcd.bundles import load_bundle

    write_toy_bundle(tmp_path)
    bundle = load_bundle(tmp_path, "toy")
    assert not queue.complete(db, job_id, "intruder", [F("x", 1.0)], bundle)
    assert queue.complete(db, job_id, "w", [F("x", 1.0, unit="1", payload={"a": 1})], bundle)
    assert queue.complete(db, job_id, "w", [F("x", 1.0)], bundle) is False  # already DONE
    with db.session() as s:
        [row] = s.scalars(select(Finding)).all()
        assert (row.model_name, row.model_version, row.model_sha256) == (
            "toy", "1.0", bundle.sha256)
        assert row.payload == {"a": 1}
        assert s.get(Job, job_id).state == JobState.DONE  # type: ignore[union-attr]


def test_failures_retry_with_backoff_then_fail_with_reason(db: Database) -> None:
    [job_id] = make_jobs(db, 1, "flaky")
    now = utcnow()
    for attempt, delay in ((1, 100), (2, 200)):  # back-off doubles
        job = queue.claim_next(db, "w", {"flaky"}, 60, now=now)
        assert job is not None and job.attempt == attempt
        assert queue.fail(db, job_id, "w", f"boom {attempt}", max_attempts=3,
                          backoff_seconds=100) == JobState.QUEUED
        assert queue.claim_next(db, "w", {"flaky"}, 60, now=now) is None  # backing off
        assert queue.claim_next(db, "w", {"flaky"}, 60,
                                now=utcnow() + dt.timedelta(seconds=delay - 5)) is None
        now = utcnow() + dt.timedelta(seconds=delay + 1)
    job = queue.claim_next(db, "w", {"flaky"}, 60, now=now)
    assert job is not None and job.attempt == 3
    assert queue.fail(db, job_id, "w", "final boom", max_attempts=3,
                      backoff_seconds=100) == JobState.FAILED
    assert queue.claim_next(db, "w", {"flaky"}, 60, now=now + dt.timedelta(days=1)) is None
    with db.session() as s:
        final = s.get(Job, job_id)
        assert final is not None and (final.state, final.error) == (JobState.FAILED, "final boom")


def test_expired_lease_and_dead_worker_are_requeued(db: Database) -> None:
    a, b = make_jobs(db, 2)
    assert queue.claim_next(db, "somewhere:1:0", {"count"}, 60) is not None
    assert queue.requeue_expired(db, 3) == 0
    assert queue.requeue_expired(db, 3, now=utcnow() + dt.timedelta(seconds=61)) == 1
    dead = subprocess.Popen(["true"])
    dead.wait()
    job = queue.claim_next(db, queue.worker_id(0).rsplit(":", 2)[0] + f":{dead.pid}:0",
                           {"count"}, 600)
    assert job is not None
    assert queue.release_dead_local(db) == 1
    with db.session() as s:
        states = {j.id: j.state for j in s.scalars(select(Job))}
        assert states == {a: JobState.QUEUED, b: JobState.QUEUED}


def test_unavailable_jobs_are_activated_when_the_analyzer_arrives(db: Database) -> None:
    [job_id] = make_jobs(db, 1)
    with db.session() as s:
        s.get(Job, job_id).state = JobState.UNAVAILABLE  # type: ignore[union-attr]
    assert queue.activate_available(db, {"other"}) == 0
    assert queue.activate_available(db, {"count"}) == 1


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_toy_bundle(root)
    return root


def _wait_done(db: Database, n: int, timeout: float = 30) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as s:
            jobs = list(s.scalars(select(Job)))
        if len(jobs) >= n and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"jobs not finished: {[(j.analyzer, j.state) for j in jobs]}")


def test_daemon_runs_routed_jobs_end_to_end(tmp_path: Path, models: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[routing.rules]]\nanalyzer = "count"\nmodalities = ["PT", "CT"]\n'
                     '[[routing.rules]]\nanalyzer = "flaky"\nmodalities = ["PT"]\n')
    settings = make_settings(tmp_path, QCD_CONFIG=str(rules),
                             QCD_WORKERS__MODELS_PATH=str(models),
                             QCD_WORKERS__RETRY_BACKOFF_SECONDS="0.2",
                             QCD_WORKERS__POLL_INTERVAL_SECONDS="0.1")
    flaky = FlakyAnalyzer(failures=1)
    daemon = Daemon(settings, registry={"count": CountAnalyzer(), "flaky": flaky})
    daemon.start()
    try:
        files = make_study(tmp_path / "in", [SeriesSpec("PT", 6, "PET WB"),
                                             SeriesSpec("CT", 3, "CT")], 16)
        assert len(storescu(files, daemon.scp.port).acknowledged) == 9
        jobs = _wait_done(daemon.db, 3)
        with daemon.db.session() as s:
            found = {(f.analyzer, f.name): f for f in s.scalars(select(Finding))}
    finally:
        daemon.stop()
    assert sorted((j.analyzer, j.state, j.attempts) for j in jobs) == [
        ("count", JobState.DONE, 1), ("count", JobState.DONE, 1), ("flaky", JobState.DONE, 2)]
    assert found[("count", "instances")].value_num == 6
    assert found[("count", "instances")].model_name == "toy"
    assert found[("count", "not_applicable")].value_text == "not a PET series"
    assert found[("flaky", "ok")].model_name is None


def test_offline_analyze_uses_the_same_path(tmp_path: Path, models: Path) -> None:
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 4, "PET WB")], 16)
    (tmp_path / "in" / "junk.dcm").write_bytes(b"junk")
    settings = load_settings(environ={"QCD_WORKERS__MODELS_PATH": str(models)})
    rows, skipped = analyze_paths([tmp_path / "in"], settings, {"earl": CountAnalyzer()})
    assert len(skipped) == 1 and "0xC210" in skipped[0]
    [row] = rows
    assert row.status == "done" and row.model.startswith("toy/1.0 sha256:")
    assert {f.name: f.value_num for f in row.findings}["instances"] == len(files)
    (models / "toy" / "1.0" / "weights.bin").write_bytes(b"corrupt")
    [row] = analyze_paths([tmp_path / "in"], settings, {"earl": CountAnalyzer()})[0]
    assert row.status == "failed" and "does not match" in row.error
    rows, _ = analyze_paths([tmp_path / "in"], settings, {})
    assert rows[0].status == "unavailable"
