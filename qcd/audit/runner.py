"""One audit run: query, record candidates, retrieve what is still needed, resume safely.

State lives in ``audit_candidates`` (one row per series and model version), so a rerun
or a restart resumes where the last run stopped:

    PENDING --claim--> RETRIEVING --PACS ok--> RETRIEVED (final for this model version)
                                  \\-error---> FAILED --next run, attempts < max--> RETRIEVING
    RETRIEVING older than stale_seconds (its run died) --> PENDING
    a series already analysed here with the same model version --> SKIPPED (never retrieved)

Claims are conditional UPDATEs (state must still be PENDING/FAILED), so two runs never
retrieve the same series at once. Received instances are deduplicated by the ingest
path anyway, so a repeated retrieve stores nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from qcd.audit.query import AuditFilters, Peer, SeriesCandidate, find_series
from qcd.audit.retrieve import RetrieveResult, retrieve_get, retrieve_move
from qcd.audit.window import in_window, parse_schedule
from qcd.config import Settings
from qcd.db.engine import Database
from qcd.db.models import AuditCandidate, AuditState, Finding, Job, JobState, Series, utcnow
from qcd.errors import ConfigError
from qcd.ingest.service import IngestService

LOGGER = logging.getLogger(__name__)
RETRYABLE = (AuditState.PENDING, AuditState.FAILED)
TERMINAL_JOB = (JobState.DONE, JobState.FAILED, JobState.UNAVAILABLE)

FindFn = Callable[[AuditFilters], list[SeriesCandidate]]
RetrieveFn = Callable[[SeriesCandidate], RetrieveResult]


@dataclass(frozen=True)
class ModelRef:
    """The model version the audit wants every series analysed with."""

    name: str
    version: str


@dataclass
class AuditSummary:
    """What one run found and did (series UIDs, no patient data)."""

    found: int = 0
    skipped: list[str] = field(default_factory=list)
    """Already analysed here with this model version (now or in an earlier run)."""
    already_retrieved: list[str] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)
    """Still to retrieve: outside the window, out of attempts, or a dry run."""


def resolve_model(settings: Settings) -> ModelRef:
    """The verified bundle named after the audited analyzer (pinned, else the newest)."""
    from qcd.bundles import load_bundle, models_root

    name = settings.audit.analyzer
    bundle = load_bundle(models_root(settings.workers.models_path), name,
                         settings.workers.bundle_versions.get(name))
    return ModelRef(bundle.name, bundle.version)


def peer_from(settings: Settings) -> Peer:
    a = settings.audit
    if a.method == "dicomweb":  # the DIMSE peer is not used; the URL is checked by config
        return Peer(a.pacs_host or "-", a.pacs_port, a.pacs_ae_title,
                    a.calling_ae_title or settings.node.ae_title, a.timeout)
    if not a.pacs_host:
        raise ConfigError("audit.pacs_host: no PACS configured for the audit "
                          "(set [audit] pacs_host, pacs_port, pacs_ae_title)")
    return Peer(a.pacs_host, a.pacs_port, a.pacs_ae_title,
                a.calling_ae_title or settings.node.ae_title, a.timeout, a.tls)


def default_filters(settings: Settings, date_from: dt.date | None = None,
                    date_to: dt.date | None = None) -> AuditFilters:
    a = settings.audit
    return AuditFilters(date_from, date_to, a.modality, a.stations, a.institutions)


class AuditRunner:
    """Runs audits against one PACS for one model version.

    Parameters
    ----------
    settings
        ``[audit]`` (attempts, concurrency, window, staleness).
    db
        The daemon's database (candidates, and the series/findings already analysed).
    model
        The model version series must have been analysed with to be skipped.
    find, retrieve
        The C-FIND and C-MOVE/C-GET functions (injected in tests).
    """

    def __init__(self, settings: Settings, db: Database, model: ModelRef, find: FindFn,
                 retrieve: RetrieveFn) -> None:
        self.audit = settings.audit
        self.db = db
        self.model = model
        self.find = find
        self.retrieve = retrieve
        self._lock = threading.Lock()

    # -- state ---------------------------------------------------------------------

    def recover(self, now: dt.datetime | None = None) -> int:
        """RETRIEVING rows older than ``stale_seconds`` belong to a dead run: PENDING again."""
        now = now or utcnow()
        horizon = now - dt.timedelta(seconds=self.audit.stale_seconds)
        with self.db.session() as session:
            rows = session.execute(
                update(AuditCandidate)
                .where(AuditCandidate.state == AuditState.RETRIEVING,
                       AuditCandidate.updated_at <= horizon)
                .values(state=AuditState.PENDING, updated_at=now,
                        last_error="its run stopped while retrieving")
                .returning(AuditCandidate.id)
            ).all()
        n = len(rows)
        if n:
            LOGGER.warning("audit: %d interrupted retrieve(s) queued again", n)
        return n

    def analysed_here(self, series_uids: Iterable[str]) -> dict[str, int]:
        """Series analysed here with this model version -> their local instance count."""
        uids = list(series_uids)
        out: dict[str, int] = {}
        with self.db.session() as session:
            for i in range(0, len(uids), 500):
                rows = session.execute(
                    select(Series.series_uid, Series.instance_count)
                    .join(Job, (Job.series_id == Series.id)
                          & (Job.generation == Series.generation))
                    .join(Finding, Finding.job_id == Job.id)
                    .where(Series.series_uid.in_(uids[i:i + 500]),
                           Job.state == JobState.DONE,
                           Finding.model_name == self.model.name,
                           Finding.model_version == self.model.version)
                    .distinct()
                ).all()
                out.update({uid: int(n) for uid, n in rows})
        return out

    def record(self, candidates: Sequence[SeriesCandidate], now: dt.datetime | None = None
               ) -> dict[str, AuditState]:
        """Insert new candidates, mark those analysed here SKIPPED; states by series UID."""
        now = now or utcnow()
        done = self.analysed_here(c.series_uid for c in candidates)
        states: dict[str, AuditState] = {}
        with self.db.session() as session:
            existing = {row.series_uid: row for row in session.scalars(
                select(AuditCandidate).where(
                    AuditCandidate.model_name == self.model.name,
                    AuditCandidate.model_version == self.model.version,
                    AuditCandidate.series_uid.in_([c.series_uid for c in candidates])))}
            for c in candidates:
                complete = c.series_uid in done and (
                    c.instances is None or done[c.series_uid] >= c.instances)
                row = existing.get(c.series_uid)
                if row is None:
                    row = AuditCandidate(
                        series_uid=c.series_uid, study_uid=c.study_uid, modality=c.modality,
                        study_date=c.study_date, institution_name=c.institution_name,
                        station_name=c.station_name, device_serial=c.device_serial,
                        series_description=c.series_description,
                        expected_instances=c.instances, model_name=self.model.name,
                        model_version=self.model.version, attempts=0, created_at=now,
                        updated_at=now,
                        state=AuditState.SKIPPED if complete else AuditState.PENDING)
                    session.add(row)
                elif complete and row.state in RETRYABLE:
                    row.state, row.updated_at = AuditState.SKIPPED, now
                states[c.series_uid] = row.state
        return states

    def _claim(self, series_uid: str) -> bool:
        now = utcnow()
        with self.db.session() as session:
            n = session.execute(
                update(AuditCandidate)
                .where(AuditCandidate.series_uid == series_uid,
                       AuditCandidate.model_name == self.model.name,
                       AuditCandidate.model_version == self.model.version,
                       AuditCandidate.state.in_(RETRYABLE),
                       AuditCandidate.attempts < self.audit.max_attempts)
                .values(state=AuditState.RETRIEVING, attempts=AuditCandidate.attempts + 1,
                        updated_at=now)
                .returning(AuditCandidate.id)
            ).all()
        return bool(n)

    def _finish(self, series_uid: str, result: RetrieveResult) -> None:
        now = utcnow()
        values: dict[str, object] = {"updated_at": now}
        if result.ok:
            values.update(state=AuditState.RETRIEVED, retrieved_at=now, last_error=None)
        else:
            values.update(state=AuditState.FAILED, last_error=result.error[:2000])
        with self.db.session() as session:
            session.execute(
                update(AuditCandidate)
                .where(AuditCandidate.series_uid == series_uid,
                       AuditCandidate.model_name == self.model.name,
                       AuditCandidate.model_version == self.model.version,
                       AuditCandidate.state == AuditState.RETRIEVING)
                .values(**values))

    # -- the run -------------------------------------------------------------------

    def run(self, filters: AuditFilters, *, dry_run: bool = False, respect_window: bool = False,
            clock: Callable[[], dt.datetime] = dt.datetime.now) -> AuditSummary:
        """Query, record, retrieve (bounded concurrency); returns what happened.

        A dry run queries and reports what would be retrieved and writes nothing.
        With ``respect_window`` no retrieve starts outside ``[audit] window``.
        """
        candidates = self.find(filters)
        summary = AuditSummary(found=len(candidates))
        if dry_run:
            done = self.analysed_here(c.series_uid for c in candidates)
            with self.db.session() as session:
                known = dict(session.execute(
                    select(AuditCandidate.series_uid, AuditCandidate.state).where(
                        AuditCandidate.model_name == self.model.name,
                        AuditCandidate.model_version == self.model.version)).all())
            for c in candidates:
                state = known.get(c.series_uid)
                if c.series_uid in done or state == AuditState.SKIPPED:
                    summary.skipped.append(c.series_uid)
                elif state == AuditState.RETRIEVED:
                    summary.already_retrieved.append(c.series_uid)
                else:
                    summary.deferred.append(c.series_uid)
            return summary
        self.recover()
        states = self.record(candidates)
        todo = []
        for c in candidates:
            state = states[c.series_uid]
            if state == AuditState.SKIPPED:
                summary.skipped.append(c.series_uid)
            elif state == AuditState.RETRIEVED:
                summary.already_retrieved.append(c.series_uid)
            elif state in RETRYABLE:
                todo.append(c)
            else:  # RETRIEVING by a live run
                summary.deferred.append(c.series_uid)

        def one(c: SeriesCandidate) -> None:
            if respect_window and not in_window(self.audit.window, clock()):
                with self._lock:
                    summary.deferred.append(c.series_uid)
                return
            if not self._claim(c.series_uid):
                with self._lock:
                    summary.deferred.append(c.series_uid)
                return
            try:
                result = self.retrieve(c)
            except Exception as exc:  # a retrieve bug must not leave the row RETRIEVING
                LOGGER.exception("audit: retrieve of series %s crashed", c.series_uid)
                result = RetrieveResult(False, error=f"unexpected {type(exc).__name__}: {exc}")
            self._finish(c.series_uid, result)
            with self._lock:
                if result.ok:
                    summary.retrieved.append(c.series_uid)
                else:
                    summary.failed[c.series_uid] = result.error
            LOGGER.info("audit: series %s %s (%d instance(s))%s", c.series_uid,
                        "retrieved" if result.ok else "FAILED", result.completed,
                        "" if result.ok else f": {result.error}")

        with ThreadPoolExecutor(max_workers=self.audit.max_concurrent_retrieves,
                                thread_name_prefix="qcd-audit") as pool:
            list(pool.map(one, todo))
        LOGGER.info("audit: %d found, %d skipped, %d already retrieved, %d retrieved, "
                    "%d failed, %d deferred", summary.found, len(summary.skipped),
                    len(summary.already_retrieved), len(summary.retrieved),
                    len(summary.failed), len(summary.deferred))
        return summary


def build_runner(settings: Settings, db: Database, service: IngestService | None = None,
                 model: ModelRef | None = None) -> AuditRunner:
    """A runner talking to the configured PACS (C-GET needs the ingest ``service``)."""
    peer = peer_from(settings)
    a = settings.audit
    destination = a.move_destination or settings.node.ae_title
    if a.method == "dicomweb":
        return _dicomweb_runner(settings, db, service, model)
    if a.method == "get":
        if service is None:
            raise ConfigError("audit.method: 'get' needs an ingest service on this process")
        get_service = service

        def retrieve(c: SeriesCandidate) -> RetrieveResult:
            return retrieve_get(peer, c, get_service)
    else:
        def retrieve(c: SeriesCandidate) -> RetrieveResult:
            return retrieve_move(peer, c, destination)

    return AuditRunner(settings, db, model or resolve_model(settings),
                       lambda f: find_series(peer, f), retrieve)


def _dicomweb_runner(settings: Settings, db: Database, service: IngestService | None,
                     model: ModelRef | None) -> AuditRunner:
    """QIDO-RS + WADO-RS against ``[audit] dicomweb_url`` (see :mod:`qcd.audit.dicomweb`)."""
    from qcd.audit.dicomweb import WebPeer, qido_find_series, wado_retrieve
    from qcd.secrets import read_secret

    a = settings.audit
    auth = (read_secret(a.dicomweb_auth_env, "audit.dicomweb_auth_env")
            if a.dicomweb_auth_env else None)
    peer = WebPeer(a.dicomweb_url, auth, a.timeout)
    def retrieve(c: SeriesCandidate) -> RetrieveResult:
        if service is None:  # a dry run lists candidates and never gets here
            return RetrieveResult(False, error="no ingest service in this process")
        return wado_retrieve(peer, c, service)

    return AuditRunner(settings, db, model or resolve_model(settings),
                       lambda f: qido_find_series(peer, f), retrieve)


def wait_for_analysis(db: Database, series_uids: Iterable[str], analyzer: str, timeout: float,
                      poll: float = 0.5) -> list[str]:
    """Wait until each series has a finished ``analyzer`` job; return those still waiting."""
    import time

    uids = set(series_uids)
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            finished = set(session.scalars(
                select(Series.series_uid)
                .join(Job, (Job.series_id == Series.id) & (Job.generation == Series.generation))
                .where(Series.series_uid.in_(list(uids)), Job.analyzer == analyzer,
                       Job.state.in_(TERMINAL_JOB))))
        waiting = sorted(uids - finished)
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(poll)


def add_audit_job(scheduler: object, settings: Settings, db: Database,
                  service: IngestService | None = None) -> bool:
    """Register the scheduled audit (``[audit] schedule``) on the daemon's scheduler.

    Each run audits studies dated within ``lookback_days`` and keeps to the window.
    Returns False when no schedule or no PACS is configured.
    """
    from apscheduler.schedulers.base import BaseScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    assert isinstance(scheduler, BaseScheduler)
    schedule = parse_schedule(settings.audit.schedule)
    if schedule is None or not settings.audit.pacs_host:
        return False
    state: dict[str, AuditRunner] = {}

    def job() -> None:
        try:
            if not in_window(settings.audit.window):
                return
            if "runner" not in state:
                state["runner"] = build_runner(settings, db, service)
            today = dt.date.today()
            filters = default_filters(
                settings, today - dt.timedelta(days=settings.audit.lookback_days), today)
            state["runner"].run(filters, respect_window=True)
        except Exception:
            LOGGER.exception("scheduled audit failed; it will run again")

    local = dt.datetime.now().astimezone().tzinfo
    trigger = (IntervalTrigger(seconds=schedule.interval_seconds)
               if schedule.interval_seconds is not None
               else CronTrigger.from_crontab(str(schedule.crontab), timezone=local))
    scheduler.add_job(job, trigger, id="audit", replace_existing=True)
    LOGGER.info("scheduled audit: %s, window %s", settings.audit.schedule,
                settings.audit.window or "any time")
    return True


def candidate_counts(db: Database) -> dict[str, int]:
    """Audit candidates by state (for ``qcd status`` and tests)."""
    with db.session() as session:
        rows = session.execute(select(AuditCandidate.state, func.count())
                               .group_by(AuditCandidate.state)).all()
    return {str(s.value if hasattr(s, "value") else s): n for s, n in rows}
