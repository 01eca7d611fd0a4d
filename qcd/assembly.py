"""Series completion (quiet period) and routing of complete series to jobs.

Completion is derived from the database (``last_received_at``), so it survives
restarts and several nodes may sweep the same database: each series is completed in its
own transaction under a row lock, and jobs are unique per (series, analyzer,
generation). The quiet period itself is measured on the monotonic clock
(:class:`~qcd.clock.Elapsed`): a wall-clock jump forward must not complete a series whose
instances are still arriving, nor one backward hold every series for the length of the
jump. The ingest path notes each new instance's timestamp here (:attr:`activity`), so
even a jump right after an instance cannot age it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcd.clock import SYSTEM_CLOCK, Clock, Elapsed
from qcd.config import Settings
from qcd.db.engine import Database
from qcd.db.models import Job, JobState, Series, SeriesState
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
    clock
        Where time is read (tests jump its wall clock).
    activity
        Series id -> ``last_received_at``, shared with the ingest path that notes each
        new instance; by default the sweeper's own.
    """

    def __init__(
        self, settings: Settings, db: Database, metrics: Metrics, available: Collection[str],
        clock: Clock = SYSTEM_CLOCK, activity: Elapsed | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.available = frozenset(available)
        self.clock = clock
        self.activity = activity if activity is not None else Elapsed(clock)

    def sweep(self) -> int:
        """Complete every series that has been quiet long enough; return how many."""
        with self.db.session() as session:
            candidates = session.execute(
                select(Series.id, Series.modality, Series.last_received_at).where(
                    Series.state == SeriesState.RECEIVED)
            ).all()
        self.activity.keep(series_id for series_id, _, _ in candidates)
        done = 0
        for series_id, modality, last in candidates:
            quiet = self.settings.quiet_seconds_for(modality)
            if self.activity.seconds(series_id, last) >= quiet:
                with self.db.session() as session:
                    done += self._complete(session, series_id, last, self.clock.wall())
        return done

    def _complete(self, session: Session, series_id: int, last: dt.datetime,
                  now: dt.datetime) -> int:
        series = session.scalars(
            select(Series).where(Series.id == series_id).with_for_update()
        ).one()
        if series.state != SeriesState.RECEIVED or series.last_received_at != last:
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
