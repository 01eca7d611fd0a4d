"""Ingest reports: into the daemon's metrics and quiet clock, or through a receiver's pipe."""

from __future__ import annotations

import datetime as dt
import multiprocessing

from prometheus_client import generate_latest

from qcd.clock import Elapsed
from qcd.ingest import status
from qcd.ingest.events import MetricsEvents, StoreReport
from qcd.ingest.receivers import PipeEvents
from qcd.metrics import Metrics
from tests.clocks import ManualClock


def samples(metrics: Metrics) -> dict[str, float]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in lines
                                     if ln and not ln.startswith("#"))}


def test_a_stored_instance_counts_and_starts_its_quiet_period_when_recorded() -> None:
    clock = ManualClock()
    activity = Elapsed(clock)
    metrics = Metrics()
    events = MetricsEvents(metrics, activity, clock)
    stamp = clock.wall()
    recorded_at = clock.mono()
    clock.advance(2)  # the report crossed the pipe from a receiver two seconds later
    clock.jump(3600)  # and the wall clock stepped forward meanwhile
    events.stored(StoreReport(status.SUCCESS, 0.004, "CT1", "CT", 1000, series_id=7,
                              received_at=stamp, mono=recorded_at, reopened=True))
    assert activity.seconds(7, stamp) == 2.0  # from the recording, not the jumped wall clock
    got = samples(metrics)
    assert got['qcd_instances_received_total{calling_ae="CT1",modality="CT"}'] == 1
    assert got['qcd_bytes_received_total{calling_ae="CT1",modality="CT"}'] == 1000
    assert got["qcd_series_reopened_total"] == 1
    assert got["qcd_store_handler_seconds_count"] == 1


def test_a_refused_instance_counts_as_a_failure_only() -> None:
    metrics = Metrics()
    activity = Elapsed(ManualClock())
    MetricsEvents(metrics, activity).stored(StoreReport(status.OUT_OF_RESOURCES, 0.001))
    got = samples(metrics)
    assert got['qcd_store_failures_total{status="0xA700"}'] == 1
    assert got["qcd_store_handler_seconds_count"] == 1
    assert not any(k.startswith("qcd_instances_received_total") for k in got)


def test_pipe_events_arrive_in_order_and_close_when_the_daemon_is_gone() -> None:
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    events = PipeEvents(writer)
    report = StoreReport(status.SUCCESS, 0.002, "CT1", "CT", 10, 3,
                         dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc), 5.0)
    events.stored(report)
    events.association("CT1", "accepted")
    events.active(2)
    assert [reader.recv() for _ in range(3)] == [
        ("stored", report), ("association", "CT1", "accepted"), ("active", 2)]
    reader.close()
    events.active(1)  # the broken pipe is noticed, not raised into an association thread
    assert not events.open
    events.active(0)  # and later sends are dropped quietly
