"""The Celery application of the distributed mode (``workers.mode = "distributed"``).

One task, :data:`TASK_NAME`, carries a job id; its body (in :mod:`qcd.workers.distributed`)
claims that job row in the shared database, runs the analyzer and stores the findings.
The database stays the source of truth: a message is only a wake-up call, so a message
that is lost, duplicated or redelivered after a crash changes nothing but latency.

Delivery guarantees asked of RabbitMQ: durable queues on a durable direct exchange,
persistent messages, publisher confirms, late acknowledgement (after the job is
recorded), prefetch 1 (a busy worker holds no queued job hostage) and requeue when a
worker process dies mid-task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from qcd.config import CelerySettings

LOGGER = logging.getLogger(__name__)

TASK_NAME = "qcd.run_job"


def queue_name(settings: CelerySettings, analyzer: str) -> str:
    """``<prefix>.<analyzer>``, with ``.gpu`` for analyzers routed to GPU workers."""
    suffix = ".gpu" if analyzer in settings.gpu_analyzers else ""
    return f"{settings.queue_prefix}.{analyzer}{suffix}"


def make_celery(settings: CelerySettings, analyzers: Iterable[str], *, workers: Any = None) -> Any:
    """A Celery app declaring one durable queue per analyzer.

    Parameters
    ----------
    settings
        The ``[celery]`` section.
    analyzers
        Analyzer names whose queues are declared (the publisher: all it may route to;
        a worker: those it consumes).
    workers
        Optional callable ``(job_id, analyzer, task) -> str`` registered as the task
        body (worker side); the publisher leaves it out and only sends by name.
    """
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("qcd", broker=settings.broker_url, set_as_current=False)
    exchange = Exchange(settings.queue_prefix, type="direct", durable=True)
    queues = [Queue(queue_name(settings, a), exchange, routing_key=queue_name(settings, a),
                    durable=True)
              for a in sorted(set(analyzers))]
    app.conf.update(
        task_queues=queues,
        task_default_exchange=settings.queue_prefix,
        task_default_exchange_type="direct",
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_default_delivery_mode="persistent",
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5.0,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    if workers is not None:
        from sqlalchemy.exc import OperationalError

        from qcd.errors import DatabaseError

        body = workers

        @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
                  autoretry_for=(DatabaseError, OperationalError),
                  max_retries=settings.max_retries,
                  retry_backoff=settings.retry_backoff_seconds,
                  retry_backoff_max=settings.retry_backoff_max_seconds, retry_jitter=True)
        def run_job(task: Any, job_id: int, analyzer: str) -> str:
            return str(body(int(job_id), str(analyzer), task))

    return app


def publish(app: Any, settings: CelerySettings, job_id: int, analyzer: str) -> None:
    """Send one task for ``job_id`` to its analyzer's queue (confirmed by the broker).

    Raises whatever kombu raises when the broker cannot be reached; the caller keeps
    the job unpublished and tries again at its next sweep.
    """
    name = queue_name(settings, analyzer)
    app.send_task(TASK_NAME, args=[job_id, analyzer], queue=name, retry=True,
                  retry_policy={"max_retries": 2, "interval_start": 0.2,
                                "interval_step": 0.5, "interval_max": 1.0})
