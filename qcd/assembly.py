"""Series completion (quiet period) and routing of complete series to jobs.

Completion is derived from the database alone (``last_received_at``), so it
survives restarts and several nodes may sweep the same database: each series is
completed in its own transaction under a row lock, and jobs are unique per
(series, analyzer, generation).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcd.config import Settings
from qcd.db.engine import Database
from qcd.db.models import Job, JobState, Series, SeriesState, utcnow
from qcd.metrics import Metrics
from qcd.routing import SeriesFacts, route

LOGGER = logging.getLogger(__name__)


class CompletionSweeper:
    """Declares quiet series complete and creates their jobs.

    Parameters
    ----------
    settings
        Quiet periods and routing rules.
    db, metrics
        Collaborators.
    available
        Names of the analyzers this installation implements.
    """

    def __init__(
        self, settings: Settings, db: Database, metrics: Metrics, available: Collection[str]
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.available = frozenset(available)
        overrides = settings.assembly.quiet_seconds_by_modality.values()
        self._min_quiet = min([settings.assembly.quiet_seconds, *overrides])

    def sweep(self, now: dt.datetime | None = None) -> int:
        """Complete every series that has been quiet long enough; return how many."""
        now = now or utcnow()
        horizon = now - dt.timedelta(seconds=self._min_quiet)
        with self.db.session() as session:
            candidates = session.execute(
                select(Series.id, Series.modality, Series.last_received_at).where(
                    Series.state == SeriesState.RECEIVED, Series.last_received_at <= horizon
                )
            ).all()
        done = 0
        for series_id, modality, last in candidates:
            if last <= now - dt.timedelta(seconds=self.settings.quiet_seconds_for(modality)):
                with self.db.session() as session:
                    done += self._complete(session, series_id, now)
        return done

    def _complete(self, session: Session, series_id: int, now: dt.datetime) -> int:
        series = session.scalars(
            select(Series).where(Series.id == series_id).with_for_update()
        ).one()
        quiet = dt.timedelta(seconds=self.settings.quiet_seconds_for(series.modality))
        if series.state != SeriesState.RECEIVED or series.last_received_at > now - quiet:
            return 0  # another node got there first, or an instance just arrived
        series.state = SeriesState.COMPLETE
        series.completed_at = now
        facts = SeriesFacts(series.modality, series.body_part, series.manufacturer,
                            series.series_description)
        analyzers = route(self.settings.routing.rules, facts)
        existing = set(session.scalars(
            select(Job.analyzer).where(Job.series_id == series.id,
                                       Job.generation == series.generation)
        ))
        for name in analyzers:
            if name in existing:
                continue
            if name in self.available:
                job = Job(series_id=series.id, analyzer=name, generation=series.generation,
                          state=JobState.QUEUED, created_at=now, updated_at=now)
            else:
                job = Job(series_id=series.id, analyzer=name, generation=series.generation,
                          state=JobState.UNAVAILABLE, created_at=now, updated_at=now,
                          error=f"analyzer '{name}' is not implemented in this installation")
            session.add(job)
            self.metrics.jobs_created.labels(analyzer=name, state=job.state.value).inc()
        self.metrics.series_completed.labels(modality=series.modality or "-").inc()
        LOGGER.info("series %s complete: %d instance(s), generation %d, analyzers %s",
                    series.series_uid, series.instance_count, series.generation,
                    ",".join(analyzers) or "none")
        return 1
