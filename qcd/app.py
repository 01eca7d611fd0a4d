"""The composition root: builds every part of the daemon from one Settings object.

Nothing else constructs collaborators or touches pynetdicom's globals; tests build
a :class:`Daemon` the same way ``qcd serve`` does.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from pynetdicom import _config as pynetdicom_config
from sqlalchemy import text

from qcd.analyzers.base import Analyzer
from qcd.assembly import CompletionSweeper
from qcd.clock import SYSTEM_CLOCK, Clock, Elapsed
from qcd.config import Settings
from qcd.db.engine import Database
from qcd.db.queries import job_counts
from qcd.ingest.scp import StorageSCP
from qcd.ingest.service import IngestService
from qcd.metrics import Metrics
from qcd.outputs.alerts import AlertDispatcher, raise_from_findings
from qcd.outputs.delivery import DeliveryWorker
from qcd.outputs.reports import ReportBuilder
from qcd.scheduler import IntervalJobs, build_scheduler
from qcd.spool import Spool
from qcd.web.aggregates import metric_rows
from qcd.web.app import Dashboard
from qcd.web.http import HealthServer
from qcd.workers.local import LocalExecutor
from qcd.workers.runtime import LocalRuntime

if TYPE_CHECKING:
    from qcd.workers.distributed import TaskPublisher

LOGGER = logging.getLogger(__name__)


def configure_pynetdicom() -> None:
    """pynetdicom's module globals, set once: no identifiers (PHI) in its logs.

    Received datasets stay in memory (the handler checks free space before writing
    them); files we send are streamed as stored, never decoded and re-encoded.
    """
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = False
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


def build_ingest(settings: Settings, metrics: Metrics, clock: Clock = SYSTEM_CLOCK,
                 activity: Elapsed | None = None) -> tuple[Database, Spool, IngestService]:
    """The pieces every ingest path needs (the SCP and ``qcd import``)."""
    db = Database(settings.database.url, echo=settings.database.echo)
    if settings.database.auto_upgrade:
        db.upgrade()
    else:
        db.check()
    spool = Spool(settings.spool.path, settings.spool.min_free_bytes, settings.spool.fsync)
    service = IngestService(spool, db, metrics, settings.assembly.reopen_on_late_instance,
                            clock, activity, max_inflated=settings.ingest.max_inflated_bytes)
    return db, spool, service


class Daemon:
    """``qcd serve``: listener, spool, database, scheduler and health endpoints.

    ``clock`` is the time source of every part (tests pass one whose wall clock jumps).
    """

    def __init__(self, settings: Settings, registry: Mapping[str, Analyzer] | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        configure_pynetdicom()
        self.settings = settings
        self.clock = clock
        if registry is None:
            from qcd.analyzers.registry import REGISTRY  # loads torch: only when serving

            registry = REGISTRY
        self.registry = dict(registry)
        self.metrics = Metrics()
        activity = Elapsed(clock)  # series -> last instance, shared by ingest and completion
        self.db, self.spool, self.service = build_ingest(settings, self.metrics, clock, activity)
        self.scp = StorageSCP(settings.node.ae_title, settings.ingest, self.service, self.metrics)
        self.sweeper = CompletionSweeper(settings, self.db, self.metrics, self.registry.keys(),
                                         clock, activity)
        self.runtime = LocalRuntime(settings.inference)
        self.executor: LocalExecutor | TaskPublisher
        if settings.workers.mode == "distributed":  # jobs run in `qcd worker` processes
            from qcd.workers.distributed import TaskPublisher

            self.executor = TaskPublisher(settings, self.db, self.registry.keys())
        else:
            self.executor = LocalExecutor(
                settings.workers, self.db, self.metrics, self.registry, self.spool.root,
                self.runtime,
                on_done=lambda job_id: raise_from_findings(self.db, job_id,
                                                           settings.alerts.rules),
                clock=clock)
        self.alerts = AlertDispatcher(self.db, settings.alerts, clock=clock)
        self.reports = ReportBuilder(self.db, self.spool.root, Path(settings.outputs.path),
                                     settings.delivery.destinations, self.metrics,
                                     harmonise_to=(settings.audit.harmonise_to
                                                   if settings.audit.write_back_harmonised
                                                   else None),
                                     harmonise_analyzer=settings.audit.analyzer)
        self.delivery = DeliveryWorker(self.db, settings.delivery, metrics=self.metrics,
                                       root=settings.outputs.path, clock=clock)
        self.intervals = IntervalJobs()  # monotonic: see qcd/scheduler.py
        self.scheduler = build_scheduler()  # wall-clock schedules (the audit's crontab)
        self.metrics.watch_spool(lambda: float(self.spool.free_bytes()))
        self.metrics.watch_queue(lambda: job_counts(self.db))
        self.http: HealthServer | None = None
        self.dashboard: Dashboard | None = None
        if settings.http.enabled:
            dashboard = (Dashboard(self.db, self.spool.root, settings.http, self.service)
                         if settings.http.dashboard else None)
            self.dashboard = dashboard
            self.metrics.watch_quality(
                lambda: metric_rows(dashboard.read if dashboard is not None else self.db))
            self.http = HealthServer(
                settings.http.host, settings.http.port, self.metrics.registry,
                liveness={"scheduler": lambda: self.intervals.running
                          and bool(self.scheduler.running)},
                readiness={
                    "dicom_listener": lambda: self.scp.server is not None,
                    "database": self._db_ok,
                    "spool_floor": lambda: self.spool.free_bytes() >= self.spool.min_free_bytes,
                },
                app=dashboard.handle if dashboard is not None else None,
                body_limit=dashboard.body_limit if dashboard is not None else None,
            )
        self._stop = threading.Event()

    def _db_ok(self) -> bool:
        with self.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def start(self) -> None:
        self.spool.cleanup_temp()
        self.scp.start()
        jobs = self.intervals
        jobs.add("completion-sweep", self.sweeper.sweep,
                 self.settings.assembly.sweep_interval_seconds)
        jobs.add("job-recovery", self.executor.recover,
                 min(30.0, self.settings.workers.lease_seconds / 4))
        if self.settings.outputs.enabled:
            jobs.add("report-build", self.reports.sweep,
                     self.settings.outputs.sweep_interval_seconds)
        if self.settings.alerts.webhooks or self.settings.alerts.emails:
            jobs.add("alert-dispatch", self.alerts.sweep,
                     self.settings.alerts.sweep_interval_seconds)
        if self.settings.delivery.destinations:
            jobs.add("delivery-sweep", self.delivery.sweep,
                     self.settings.delivery.sweep_interval_seconds)
        if self.settings.audit.schedule:
            from qcd.audit.runner import add_audit_job

            add_audit_job(self.scheduler, self.settings, self.db, self.service)
        self.intervals.start()
        self.scheduler.start()
        self.executor.start()
        if self.http is not None:
            self.http.start()
        LOGGER.info("qcd ready: AE %s, spool %s, database %s", self.settings.node.ae_title,
                    self.spool.root, self.db.safe_url)

    def stop(self) -> None:
        """Drain associations, stop the scheduler, close everything."""
        LOGGER.info("shutting down: draining associations")
        aborted = self.scp.stop()
        self.intervals.shutdown()
        self.scheduler.shutdown(wait=True)
        self.executor.stop()
        self.runtime.close()
        if self.http is not None:
            self.http.stop()
        if self.dashboard is not None:
            self.dashboard.close()
        self.service.close()  # after every ingest path (DICOM, STOW-RS) has stopped
        self.db.dispose()
        LOGGER.info("qcd stopped (%d association(s) aborted after drain timeout)", aborted)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        """Start, wait for SIGTERM/SIGINT, then stop cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        self._stop.wait()
        self.stop()
