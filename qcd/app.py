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

from sqlalchemy import text

from qcd.analyzers.base import Analyzer
from qcd.assembly import CompletionSweeper
from qcd.clock import SYSTEM_CLOCK, Clock, Elapsed
from qcd.config import Settings
from qcd.db.queries import job_counts
from qcd.ingest.events import MetricsEvents
from qcd.ingest.receivers import ReceiverPool
from qcd.ingest.scp import StorageSCP, configure_pynetdicom
from qcd.ingest.service import build_ingest
from qcd.metrics import Metrics
from qcd.outputs.alerts import AlertDispatcher, raise_from_findings
from qcd.outputs.delivery import DeliveryWorker
from qcd.outputs.reports import ReportBuilder
from qcd.scheduler import IntervalJobs, build_scheduler
from qcd.web.aggregates import metric_rows
from qcd.web.app import Dashboard
from qcd.web.http import HealthServer
from qcd.workers.local import LocalExecutor
from qcd.workers.runtime import LocalRuntime

if TYPE_CHECKING:
    from qcd.workers.distributed import TaskPublisher

LOGGER = logging.getLogger(__name__)


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
        events = MetricsEvents(self.metrics, activity, clock)
        self.db, self.spool, self.service = build_ingest(settings, events, clock)
        receivers = settings.ingest.processes - 1
        self.scp = StorageSCP(settings.node.ae_title, settings.ingest, self.service, events,
                              shared_port=receivers > 0)
        self.receivers = ReceiverPool(settings, events, self.metrics, receivers)
        self.metrics.active_associations.set_function(
            lambda: self.scp.active() + self.receivers.active())
        self.metrics.receiving_processes.set_function(
            lambda: int(self.scp.server is not None) + self.receivers.alive())
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
                    "dicom_receivers": lambda: (self.receivers.alive()
                                                == len(self.receivers.slots)),
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
        self.spool.cleanup_temp()  # before any receiver has a temp file of its own
        self.scp.start()
        if self.receivers.slots:
            try:
                self.receivers.start(self.scp.port)
            except BaseException:
                self.scp.stop(0.0)
                raise
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
        self.receivers.terminate()  # they drain beside our own listener
        aborted = self.scp.stop()
        killed = self.receivers.join(self.settings.ingest.drain_timeout + 10.0)
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
        LOGGER.info("qcd stopped (%d association(s) aborted after drain timeout%s)", aborted,
                    f"; {killed} receiving process(es) killed" if killed else "")

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        """Start, wait for SIGTERM/SIGINT, then stop cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        self._stop.wait()
        self.stop()
