"""APScheduler owns time: the completion sweep now; retries and retention later.

Every job has a stable id, ``replace_existing=True``, ``coalesce=True`` and
``max_instances=1`` so a slow sweep never piles up and a restart never duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

LOGGER = logging.getLogger(__name__)


def build_scheduler() -> BackgroundScheduler:
    return BackgroundScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})


def add_interval(
    scheduler: BackgroundScheduler, job_id: str, func: Callable[[], Any], seconds: float
) -> None:
    """Run ``func`` every ``seconds``; exceptions are logged, the schedule goes on."""

    def guarded() -> None:
        try:
            func()
        except Exception:
            LOGGER.exception("scheduled job %s failed; it will run again", job_id)

    scheduler.add_job(guarded, "interval", seconds=seconds, id=job_id, replace_existing=True)
