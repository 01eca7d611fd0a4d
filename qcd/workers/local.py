"""The local executor: worker threads that claim jobs from the DB and run them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from qcd.analyzers.base import Analyzer, SeriesInput
from qcd.bundles import models_root
from qcd.clock import SYSTEM_CLOCK, Clock, Elapsed
from qcd.config import WorkerSettings
from qcd.db.engine import Database
from qcd.errors import DatabaseError, InferenceError
from qcd.metrics import Metrics
from qcd.workers import queue
from qcd.workers.run import BundleCache, run_analyzer
from qcd.workers.runtime import LocalRuntime

LOGGER = logging.getLogger(__name__)


class LocalExecutor:
    """``settings.threads`` threads, each claiming and running one job at a time.

    Parameters
    ----------
    settings
        Thread count, polling, retries, leases, bundle root.
    db, metrics
        Collaborators.
    registry
        The analyzers this installation runs (name -> instance).
    spool_root
        Where the instance files of a job live.
    runtime
        Shared batching predictors (owned by the composition root).
    on_done
        Called with the job id after its findings are stored (raises operator alerts);
        its errors are logged, never lost into the job's state.
    clock
        Where time is read; leases are counted down on its monotonic clock.
    """

    def __init__(
        self, settings: WorkerSettings, db: Database, metrics: Metrics,
        registry: Mapping[str, Analyzer], spool_root: Path, runtime: LocalRuntime,
        on_done: Callable[[int], object] | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.registry = dict(registry)
        self.spool_root = spool_root
        self.bundles = BundleCache(models_root(settings.models_path),
                                   settings.bundle_versions)
        self.runtime = runtime
        self.on_done = on_done
        self.clock = clock
        self.leases = Elapsed(clock)
        """Job id -> lease, on the monotonic clock (see :func:`queue.requeue_expired`)."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if not self.registry or self.settings.threads == 0:
            LOGGER.info("no analysis workers on this node (%d analyzer(s), %d thread(s))",
                        len(self.registry), self.settings.threads)
            return
        queue.release_dead_local(self.db)
        queue.activate_available(self.db, self.registry.keys())
        for i in range(self.settings.threads):
            t = threading.Thread(target=self._loop, args=(i,), name=f"qcd-worker-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs in hand, then stop (unfinished ones are re-queued at restart)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))

    def recover(self) -> None:
        """Scheduler job: re-queue jobs whose worker died (lease expired or pid gone)."""
        queue.requeue_expired(self.db, self.settings.max_attempts, self.clock.wall(),
                              self.leases)
        queue.release_dead_local(self.db)

    def _loop(self, index: int) -> None:
        worker = queue.worker_id(index)
        while not self._stop.is_set():
            try:
                job = queue.claim_next(self.db, worker, self.registry.keys(),
                                       self.settings.lease_seconds, self.clock.wall())
            except DatabaseError as exc:
                LOGGER.error("cannot claim jobs: %s", exc)
                job = None
            except Exception:
                LOGGER.exception("cannot claim jobs")
                job = None
            if job is None:
                self._stop.wait(self.settings.poll_interval_seconds)
                continue
            if job.lease_expires_at is not None:  # its lease starts now, on our clock
                self.leases.note(job.id, job.lease_expires_at, -self.settings.lease_seconds)
            self.run(job, worker)

    def run(self, job: queue.ClaimedJob, worker: str) -> None:
        """Run one claimed job and record its outcome (never raises)."""
        analyzer = self.registry[job.analyzer]
        series = SeriesInput(job.series_uid, job.modality,
                             queue.resolve(self.spool_root, job.relpaths))
        started = time.perf_counter()
        try:
            outcome = run_analyzer(analyzer, series, self.bundles, self.runtime)
        except InferenceError as exc:
            self._failed(job, worker, str(exc))
            return
        except Exception as exc:  # an analyzer bug must not kill the worker thread
            LOGGER.exception("analyzer %s crashed on series %s", job.analyzer, job.series_uid)
            self._failed(job, worker, f"unexpected {type(exc).__name__}: {exc}")
            return
        finally:
            self.metrics.job_seconds.labels(analyzer=job.analyzer).observe(
                time.perf_counter() - started)
        if queue.complete(self.db, job.id, worker, outcome.findings, outcome.bundle,
                          self.clock.wall()):
            self.metrics.jobs_finished.labels(analyzer=job.analyzer, state="DONE").inc()
            LOGGER.info("job %d %s on series %s: %d finding(s)", job.id, job.analyzer,
                        job.series_uid, len(outcome.findings))
            if self.on_done is not None:
                try:
                    self.on_done(job.id)
                except Exception:
                    LOGGER.exception("post-processing of job %d failed", job.id)

    def _failed(self, job: queue.ClaimedJob, worker: str, error: str) -> None:
        state = queue.fail(self.db, job.id, worker, error,
                           max_attempts=self.settings.max_attempts,
                           backoff_seconds=self.settings.retry_backoff_seconds,
                           now=self.clock.wall())
        if state is not None:
            self.metrics.jobs_finished.labels(analyzer=job.analyzer, state=state.value).inc()
        LOGGER.warning("job %d %s on series %s failed (attempt %d, now %s): %s", job.id,
                       job.analyzer, job.series_uid, job.attempt,
                       state.value if state else "not ours", error)
