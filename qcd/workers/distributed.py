"""Distributed mode: ingest nodes publish jobs as Celery tasks, ``qcd worker`` runs them.

The job table stays the queue of record. The ingest node's :class:`TaskPublisher`
sends a task for every runnable QUEUED job and sends it again when the job is still
QUEUED ``celery.republish_seconds`` later, so a job created while the broker was down,
or a message lost with a broker, is picked up without anyone's help. A worker's task
body (:class:`JobRunner`) claims *that* job row atomically (``FOR UPDATE SKIP LOCKED``),
runs it through the same code as the local executor and stores the findings only while
it still holds the job. A task delivered twice (worker killed after the work, before the
ack; or a republished duplicate) therefore finds the job DONE, RUNNING elsewhere, or
re-claimable, and the effects stay exactly-once by key:

* findings: :func:`qcd.workers.queue.complete` accepts one holder and one DONE;
* alerts: dedupe key ``kind:job:finding`` (:func:`qcd.outputs.alerts.raise_from_findings`),
  re-run for a DONE job in case the first worker died between the two;
* SR/SEG: built by the ingest node's report sweep from DONE jobs, UIDs derived from
  (series, analyzer, generation), deliveries unique by (SOP instance, destination).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from qcd.analyzers.base import Analyzer
from qcd.clock import Elapsed
from qcd.config import Settings
from qcd.db.engine import Database
from qcd.db.models import Job, JobState, utcnow
from qcd.metrics import Metrics
from qcd.workers import queue
from qcd.workers.celery_app import make_celery, publish, queue_name
from qcd.workers.local import LocalExecutor
from qcd.workers.runtime import LocalRuntime

LOGGER = logging.getLogger(__name__)


# ------------------------------------------------------------------ claim by id


def claim_job(
    db: Database, job_id: int, worker: str, lease_seconds: float, max_attempts: int,
    now: dt.datetime | None = None,
) -> queue.ClaimedJob | str:
    """Claim job ``job_id`` for ``worker``, or say why not.

    Returns the claimed job, or one of ``"missing"``, ``"busy"`` (another worker is
    claiming it right now), ``"done"``, ``"held"`` (RUNNING under a live or remote
    worker: its lease decides), ``"later"`` (QUEUED with a back-off still running),
    ``"failed"`` (out of attempts, now FAILED) or the job's terminal state in lower case.
    A RUNNING job held by a dead process on this host is taken over at once.
    """
    now = now or utcnow()
    with db.session() as session:
        query = select(Job).where(Job.id == job_id)
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        job = session.scalars(query).first()
        if job is None:
            exists = session.scalar(select(Job.id).where(Job.id == job_id))
            return "busy" if exists is not None else "missing"
        if job.state == JobState.DONE:
            return "done"
        if job.state == JobState.RUNNING:
            if not queue.held_by_dead_local(job.worker):
                return "held"
            LOGGER.warning("job %d: worker %s is gone; taking it over", job.id, job.worker)
        elif job.state != JobState.QUEUED:
            return job.state.value.lower()
        elif queue.backing_off(job, now):
            return "later"
        if job.attempts >= max_attempts:
            job.state = JobState.FAILED
            job.finished_at = job.updated_at = now
            job.lease_expires_at = None
            job.error = (job.error or "")[:1900] + f" (gave up after {job.attempts} attempts)"
            return "failed"
        return queue.take(session, job, worker, now, lease_seconds)


# ------------------------------------------------------------------ ingest side


class TaskPublisher:
    """The ingest node's executor in distributed mode: publishes, never runs, jobs.

    Same interface as :class:`~qcd.workers.local.LocalExecutor` (``start``, ``stop``,
    ``recover``) so the composition root swaps one for the other.
    """

    def __init__(self, settings: Settings, db: Database, analyzers: Collection[str],
                 app: Any | None = None) -> None:
        self.settings = settings
        self.db = db
        self.analyzers = sorted(analyzers)
        self.app = app if app is not None else make_celery(settings.celery, self.analyzers)
        self._leases = Elapsed()
        self._published: dict[int, tuple[int, float]] = {}
        """job id -> (attempts when published, monotonic time)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published_total = 0

    def start(self) -> None:
        queue.activate_available(self.db, self.analyzers)
        self._thread = threading.Thread(target=self._loop, name="qcd-publisher", daemon=True)
        self._thread.start()
        LOGGER.info("distributed mode: publishing jobs to %s",
                    ", ".join(queue_name(self.settings.celery, a) for a in self.analyzers))

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.app.close()
        except Exception:  # closing a pool whose broker is gone
            LOGGER.debug("closing the Celery app failed", exc_info=True)

    def recover(self) -> None:
        """Scheduler job: re-queue jobs whose worker died (lease expired or pid gone)."""
        queue.requeue_expired(self.db, self.settings.workers.max_attempts,
                              elapsed=self._leases)
        queue.release_dead_local(self.db)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_due()
            except Exception:
                LOGGER.exception("cannot publish jobs")
            self._stop.wait(self.settings.celery.publish_interval_seconds)

    def publish_due(self) -> int:
        """Publish every runnable QUEUED job not published since ``republish_seconds``."""
        now = utcnow()
        with self.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.analyzer, Job.attempts)
                .where(Job.state == JobState.QUEUED, Job.analyzer.in_(self.analyzers),
                       queue.runnable(now))
                .order_by(Job.id)
            ).all()
        queued = {r[0] for r in rows}
        for stale in set(self._published) - queued:
            del self._published[stale]
        sent = 0
        clock = time.monotonic()
        for job_id, analyzer, attempts in rows:
            last = self._published.get(job_id)
            if (last is not None and last[0] == attempts
                    and clock - last[1] < self.settings.celery.republish_seconds):
                continue
            try:
                publish(self.app, self.settings.celery, job_id, analyzer)
            except Exception as exc:
                LOGGER.error("cannot publish job %d to the broker (will retry): %s",
                             job_id, exc)
                break
            self._published[job_id] = (attempts, clock)
            sent += 1
        self.published_total += sent
        if sent:
            LOGGER.info("published %d job(s)", sent)
        return sent


# ------------------------------------------------------------------ worker side


class JobRunner:
    """One per worker process (created after fork): database, runtime and the executor."""

    def __init__(self, settings: Settings, registry: Mapping[str, Analyzer],
                 on_done: Callable[[Database, int], object] | None = None) -> None:
        self.settings = settings
        self.registry = dict(registry)
        self.db = Database(settings.database.url)
        self.metrics = Metrics()
        self.runtime = LocalRuntime(settings.inference)
        self.spool_root = Path(settings.spool.path)
        self._on_done = on_done or _raise_alerts(settings)
        self.executor = LocalExecutor(settings.workers, self.db, self.metrics, self.registry,
                                      self.spool_root, self.runtime,
                                      on_done=lambda job_id: self._on_done(self.db, job_id))
        self._local = threading.local()
        self._count = 0
        self._lock = threading.Lock()
        queue.release_dead_local(self.db)

    def worker(self) -> str:
        index = getattr(self._local, "index", None)
        if index is None:
            with self._lock:
                index = self._local.index = self._count
                self._count += 1
        return queue.worker_id(index)

    def __call__(self, job_id: int, analyzer: str, task: Any = None) -> str:
        """The task body; returns what happened (for the log), never re-runs a DONE job."""
        if analyzer not in self.registry:
            LOGGER.error("job %d: analyzer %s is not installed on this worker", job_id, analyzer)
            return "not-installed"
        worker = self.worker()
        claimed = claim_job(self.db, job_id, worker, self.settings.workers.lease_seconds,
                            self.settings.workers.max_attempts)
        if isinstance(claimed, str):
            if claimed == "done":  # crash between findings and alerts: finish the effects
                self._on_done(self.db, job_id)
            LOGGER.info("job %d (%s): nothing to do (%s)", job_id, analyzer, claimed)
            return claimed
        self.executor.run(claimed, worker)
        return "ran"

    def close(self) -> None:
        self.runtime.close()
        self.db.dispose()


def _raise_alerts(settings: Settings) -> Callable[[Database, int], object]:
    from qcd.outputs.alerts import raise_from_findings

    def on_done(db: Database, job_id: int) -> object:
        return raise_from_findings(db, job_id, settings.alerts.rules)

    return on_done


_RUNNERS: dict[int, JobRunner] = {}
_RUNNER_LOCK = threading.Lock()


def build_worker_app(settings: Settings, registry: Mapping[str, Analyzer],
                     analyzers: Collection[str]) -> Any:
    """The Celery app of a ``qcd worker`` process; one :class:`JobRunner` per pid."""

    def body(job_id: int, analyzer: str, task: Any) -> str:
        pid = os.getpid()
        with _RUNNER_LOCK:
            runner = _RUNNERS.get(pid)
            if runner is None:
                runner = _RUNNERS[pid] = JobRunner(settings, registry)
        return runner(job_id, analyzer, task)

    return make_celery(settings.celery, analyzers, workers=body)


def run_worker(settings: Settings, registry: Mapping[str, Analyzer],
               analyzers: Collection[str] | None = None, *, concurrency: int | None = None,
               pool: str | None = None, hostname: str | None = None,
               loglevel: str = "INFO") -> int:
    """``qcd worker``: consume the queues of ``analyzers`` until SIGTERM (warm shutdown).

    Requirements: ``database.url`` is the PostgreSQL every node uses, and ``spool.path``
    is the same shared directory on every node (NFS mounted ``sync``, or any POSIX file
    system whose renames and fsyncs are visible to other hosts once they return).
    """
    names = sorted(analyzers or registry.keys())
    missing = [a for a in names if a not in registry]
    if missing:
        from qcd.errors import ConfigError

        raise ConfigError(f"unknown analyzer(s) {', '.join(missing)}; "
                          f"installed: {', '.join(sorted(registry))}")
    if not Path(settings.spool.path).is_dir():
        from qcd.errors import ConfigError

        raise ConfigError(f"spool.path {settings.spool.path} is not a directory on this node "
                          "(mount the shared spool at the same path as on the ingest nodes)")
    app = build_worker_app(settings, registry, names)
    workers = concurrency or settings.celery.concurrency or settings.workers.threads or 1
    argv = ["worker", "--loglevel", loglevel, "--pool", pool or settings.celery.pool,
            "--concurrency", str(workers), "--queues",
            ",".join(queue_name(settings.celery, a) for a in names),
            "--hostname", hostname or f"qcd-{socket.gethostname()}-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    LOGGER.info("qcd worker: %s", " ".join(argv))
    app.worker_main(argv=argv)
    return 0
