"""What ingest reports about itself, and where those reports go.

The Storage SCP and :class:`~qcd.ingest.service.IngestService` describe what happened
(an instance stored or refused, an association accepted or refused) to an
:class:`IngestEvents`; they do not know whether that ends in this process's Prometheus
registry and completion clock (:class:`MetricsEvents`) or in a pipe to the daemon,
when they run in an extra receiving process (:mod:`qcd.ingest.receivers`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from qcd.clock import SYSTEM_CLOCK, Clock, Elapsed
from qcd.ingest import status
from qcd.metrics import Metrics


@dataclass(frozen=True)
class StoreReport:
    """The outcome of one C-STORE (or import / STOW-RS part), with no patient data.

    ``mono`` is the monotonic clock reading when the row was recorded: on Linux
    ``CLOCK_MONOTONIC`` is shared by every process, so the daemon can pin the quiet
    period of a series to the moment a receiving process recorded its last instance.
    """

    status: int
    seconds: float
    calling_ae: str = "-"
    modality: str = "-"
    nbytes: int = 0
    series_id: int | None = None
    received_at: dt.datetime | None = None
    mono: float = 0.0
    reopened: bool = False


class IngestEvents(Protocol):
    """Where ingest reports go."""

    def stored(self, report: StoreReport) -> None:
        """One instance was answered (Success or a failure status)."""

    def association(self, calling_ae: str, result: str) -> None:
        """An association was accepted, rejected or refused by the network allow-list."""


class MetricsEvents:
    """Reports into this process's metrics and the completion sweep's quiet clock.

    Parameters
    ----------
    metrics
        The daemon's metrics.
    activity
        Told (series id, ``last_received_at``) of every stored instance, so the
        completion sweep measures the quiet period on the monotonic clock; None where
        nothing completes series (``qcd import`` run on its own).
    clock
        The clock ``StoreReport.mono`` was read from.
    """

    def __init__(self, metrics: Metrics, activity: Elapsed | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.metrics = metrics
        self.activity = activity
        self.clock = clock

    def stored(self, report: StoreReport) -> None:
        m = self.metrics
        m.store_seconds.observe(report.seconds)
        if report.status != status.SUCCESS:
            m.store_failures.labels(status=f"0x{report.status:04X}").inc()
            return
        m.instances_received.labels(calling_ae=report.calling_ae, modality=report.modality).inc()
        m.bytes_received.labels(calling_ae=report.calling_ae,
                                modality=report.modality).inc(report.nbytes)
        if report.reopened:
            m.series_reopened.inc()
        if (self.activity is not None and report.series_id is not None
                and report.received_at is not None):
            age = max(0.0, self.clock.mono() - report.mono)
            self.activity.note(report.series_id, report.received_at, age)

    def association(self, calling_ae: str, result: str) -> None:
        self.metrics.associations.labels(calling_ae=calling_ae, result=result).inc()
