"""The job queue in the database: atomic claim, lease, completion, bounded retries.

Claims are atomic on both backends: PostgreSQL uses ``FOR UPDATE SKIP LOCKED`` so
several worker processes never take the same job; SQLite serialises writers with
``BEGIN IMMEDIATE``. A RUNNING job carries a lease; when a worker dies its lease
expires and :func:`requeue_expired` queues the job again. Results are accepted only
from the worker that still holds the job, so a job run twice stores findings once.

Leases and retry back-offs are stored as wall-clock times but judged so that a jump of
the wall clock neither expires a lease that is held (the job would run twice) nor holds
a retry back for the length of the jump (:mod:`qcd.clock`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.orm import Session

from qcd.analyzers.base import Finding
from qcd.bundles import Bundle
from qcd.clock import SLACK, Elapsed
from qcd.db.engine import Database
from qcd.db.models import Finding as FindingRow
from qcd.db.models import Instance, Job, JobState, Series, utcnow

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now holds, with what is needed to run it."""

    id: int
    analyzer: str
    attempt: int
    series_id: int
    series_uid: str
    modality: str | None
    relpaths: tuple[str, ...]
    """Spool-relative paths, newest version of each SOP instance, instance order."""
    lease_expires_at: dt.datetime | None = None
    """The lease as stored (the worker notes it on its monotonic clock)."""


def runnable(now: dt.datetime) -> ColumnElement[bool]:
    """SQL: a QUEUED job may run at ``now``: no back-off, back-off over — or the back-off
    was set in the wall clock's future (``updated_at`` ahead: the clock went back since),
    where waiting for ``not_before`` would add the jump to the back-off."""
    return or_(Job.not_before.is_(None), Job.not_before <= now, Job.updated_at > now + SLACK)


def backing_off(job: Job, now: dt.datetime) -> bool:
    """The Python side of :func:`runnable`: ``job`` must still wait."""
    return (job.not_before is not None and job.not_before > now
            and not (job.updated_at is not None and job.updated_at > now + SLACK))


def claim_next(
    db: Database, worker: str, analyzers: Collection[str], lease_seconds: float,
    now: dt.datetime | None = None,
) -> ClaimedJob | None:
    """Take the oldest runnable QUEUED job for one of ``analyzers``, or None."""
    if not analyzers:
        return None
    now = now or utcnow()
    with db.session() as session:
        query = (
            select(Job)
            .where(Job.state == JobState.QUEUED, Job.analyzer.in_(list(analyzers)),
                   runnable(now))
            .order_by(Job.id)
            .limit(1)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        job = session.scalars(query).first()
        if job is None:
            return None
        return take(session, job, worker, now, lease_seconds)


def take(session: Session, job: Job, worker: str, now: dt.datetime,
         lease_seconds: float) -> ClaimedJob:
    """Mark a job this session holds locked as RUNNING for ``worker``; what it needs to run.

    Shared by :func:`claim_next` and the distributed worker's claim by id.
    """
    job.state = JobState.RUNNING
    job.attempts += 1
    job.worker = worker
    job.started_at = job.updated_at = now
    job.not_before = None
    job.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
    series = session.get(Series, job.series_id)
    assert series is not None  # foreign key
    rows = session.execute(
        select(Instance.sop_uid, Instance.version, Instance.instance_number, Instance.path)
        .where(Instance.series_id == series.id)
    ).all()
    newest: dict[str, tuple[int, int, str]] = {}
    for sop, version, number, path in rows:
        if sop not in newest or version > newest[sop][0]:
            newest[sop] = (version, number if number is not None else 0, path)
    ordered = sorted(newest.items(), key=lambda kv: (kv[1][1], kv[0]))
    return ClaimedJob(job.id, job.analyzer, job.attempts, series.id, series.series_uid,
                      series.modality, tuple(v[2] for _, v in ordered), job.lease_expires_at)


def complete(
    db: Database, job_id: int, worker: str, findings: Sequence[Finding], bundle: Bundle | None,
    now: dt.datetime | None = None,
) -> bool:
    """Store findings and mark DONE; False (nothing stored) if the job is no longer ours."""
    now = now or utcnow()
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != JobState.RUNNING or job.worker != worker:
            LOGGER.warning("job %d finished on %s but is no longer held by it; result dropped",
                           job_id, worker)
            return False
        session.execute(delete(FindingRow).where(FindingRow.job_id == job_id))
        for f in findings:
            session.add(FindingRow(
                job_id=job_id, series_id=job.series_id, analyzer=job.analyzer, name=f.name,
                value_num=f.value_num, value_text=f.value_text, unit=f.unit,
                payload=dict(f.payload) or None,
                model_name=bundle.name if bundle else None,
                model_version=bundle.version if bundle else None,
                model_sha256=bundle.sha256 if bundle else None, created_at=now))
        job.state = JobState.DONE
        job.finished_at = job.updated_at = now
        job.lease_expires_at = None
        job.error = None
    return True


def retry_delay(backoff_seconds: float, attempt: int) -> float:
    """Exponential back-off: attempt 1 waits ``backoff``, attempt 2 twice that, ..."""
    return backoff_seconds * 2 ** max(attempt - 1, 0)


def fail(
    db: Database, job_id: int, worker: str, error: str, *, max_attempts: int,
    backoff_seconds: float, permanent: bool = False, now: dt.datetime | None = None,
) -> JobState | None:
    """Record a failure; queue a retry with back-off or give up after ``max_attempts``.

    Returns the job's new state, or None if the job is no longer held by ``worker``.
    """
    now = now or utcnow()
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != JobState.RUNNING or job.worker != worker:
            return None
        job.error = error[:2000]
        job.updated_at = now
        job.lease_expires_at = None
        if permanent or job.attempts >= max_attempts:
            job.state = JobState.FAILED
            job.finished_at = now
        else:
            job.state = JobState.QUEUED
            job.not_before = now + dt.timedelta(
                seconds=retry_delay(backoff_seconds, job.attempts))
        return job.state


def requeue_expired(db: Database, max_attempts: int, now: dt.datetime | None = None,
                    elapsed: Elapsed | None = None) -> int:
    """Queue again (or fail, when out of attempts) RUNNING jobs whose lease expired.

    With ``elapsed`` (a long-lived caller: the executors' recovery job) each lease is
    read from the wall clock once, when first seen (and never as more than its own
    length ahead), then counted down on the monotonic clock: a wall-clock jump forward
    cannot expire a lease whose worker is still running the job. Without it, the wall
    clock ``now`` decides.
    """
    now = now or utcnow()
    with db.session() as session:
        query = select(Job).where(Job.state == JobState.RUNNING)
        if elapsed is None:
            query = query.where(Job.lease_expires_at < now)
        running = session.scalars(query).all()
        if elapsed is not None:
            elapsed.keep(job.id for job in running)
            running = [job for job in running if _lease_over(job, elapsed)]
        for job in running:
            LOGGER.warning("job %d (%s) lost its worker %s; %s", job.id, job.analyzer,
                           job.worker, "giving up" if job.attempts >= max_attempts else "re-queued")
            job.error = f"worker {job.worker} stopped before finishing (lease expired)"
            job.lease_expires_at = None
            job.updated_at = now
            if job.attempts >= max_attempts:
                job.state = JobState.FAILED
                job.finished_at = now
            else:
                job.state = JobState.QUEUED
                job.not_before = None
        return len(running)


def _lease_over(job: Job, elapsed: Elapsed) -> bool:
    if job.lease_expires_at is None:
        return False
    length = ((job.lease_expires_at - job.started_at).total_seconds()
              if job.started_at is not None else 0.0)  # both stamped at the claim
    return elapsed.seconds(job.id, job.lease_expires_at, floor=-max(length, 0.0)) > 0


def worker_id(thread: int) -> str:
    """``host:pid:thread``: who holds a job, and enough to tell if it is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{thread}"


def release_dead_local(db: Database) -> int:
    """Queue again the jobs held by processes on this host that no longer exist.

    After a crash and restart this picks the interrupted jobs up at once instead of
    waiting for their lease; jobs of live processes (other workers) are left alone.
    """
    host = socket.gethostname()
    released = 0
    with db.session() as session:
        jobs = session.scalars(select(Job).where(
            Job.state == JobState.RUNNING, Job.worker.like(f"{host}:%"))).all()
        for job in jobs:
            if not held_by_dead_local(job.worker):
                continue
            job.state = JobState.QUEUED
            job.lease_expires_at = None
            job.not_before = None
            job.error = f"interrupted: worker {job.worker} is gone"
            released += 1
    if released:
        LOGGER.warning("re-queued %d job(s) interrupted by a crash", released)
    return released


def held_by_dead_local(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid:thread``) names a process of this host that is gone.

    Another host, this process, a live process or an unreadable id: False.
    """
    parts = (worker or "").split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    return pid != os.getpid() and not alive(pid)


def alive(pid: int) -> bool:
    """Whether process ``pid`` on this host can still hold a job.

    A zombie (killed, not yet reaped because its parent died with it) holds nothing.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return not stat[stat.rindex(")") + 2:].startswith(("Z", "X"))
    except (OSError, ValueError):  # no /proc (not Linux): kill(0) said it exists
        return True


def activate_available(db: Database, available: Collection[str]) -> int:
    """UNAVAILABLE jobs whose analyzer is now installed are queued (e.g. after upgrade)."""
    if not available:
        return 0
    with db.session() as session:
        jobs = session.scalars(select(Job).where(
            Job.state == JobState.UNAVAILABLE, Job.analyzer.in_(list(available)))).all()
        for job in jobs:
            job.state = JobState.QUEUED
            job.error = None
        return len(jobs)


def resolve(spool_root: Path, relpaths: Sequence[str]) -> tuple[Path, ...]:
    return tuple(spool_root / p for p in relpaths)
