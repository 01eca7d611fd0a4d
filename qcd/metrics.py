"""Prometheus metrics, created once on a registry the composition root owns.

Labels carry AE titles, modalities, analyzers, states and status codes only; never
patient names, IDs, birth dates or accession numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    """All of qcd's metrics; pass one instance down to whoever records."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.associations = Counter(
            "qcd_associations", "DICOM associations by outcome", ["calling_ae", "result"],
            registry=r)
        self.active_associations = Gauge(
            "qcd_active_associations", "DICOM associations open now", registry=r)
        self.instances_received = Counter(
            "qcd_instances_received", "Instances acknowledged with Success",
            ["calling_ae", "modality"], registry=r)
        self.bytes_received = Counter(
            "qcd_bytes_received", "Dataset bytes acknowledged", ["calling_ae", "modality"],
            registry=r)
        self.store_failures = Counter(
            "qcd_store_failures", "C-STORE requests answered with a failure", ["status"],
            registry=r)
        self.store_seconds = Histogram(
            "qcd_store_handler_seconds", "Time to check, spool and record one instance",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        self.series_completed = Counter(
            "qcd_series_completed", "Series declared complete", ["modality"], registry=r)
        self.series_reopened = Counter(
            "qcd_series_reopened", "Completed series re-opened by a late instance", registry=r)
        self.jobs_created = Counter(
            "qcd_jobs_created", "Analysis jobs created by routing", ["analyzer", "state"],
            registry=r)
        self.jobs_finished = Counter(
            "qcd_jobs_finished", "Analysis job attempts by outcome (DONE, QUEUED = retry, "
            "FAILED)", ["analyzer", "state"], registry=r)
        self.job_seconds = Histogram(
            "qcd_job_seconds", "Wall time of one analysis job", ["analyzer"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.deliveries = Counter(
            "qcd_deliveries", "Outbox rows by destination and outcome (sent, retried, dead)",
            ["destination", "outcome"], registry=r)
        self.reports_built = Counter(
            "qcd_reports_built", "DICOM SR reports built from findings", registry=r)
        self.receiving_processes = Gauge(
            "qcd_receiving_processes", "Processes listening for DICOM now (the daemon's own "
            "listener and the extra receivers of ingest.processes)", registry=r)
        self.receiver_restarts = Counter(
            "qcd_receiver_restarts", "Extra DICOM receiving processes restarted after they "
            "died", registry=r)
        self.spool_free_bytes = Gauge(
            "qcd_spool_free_bytes", "Free bytes on the spool filesystem", registry=r)

    def watch_spool(self, free_bytes: Callable[[], float]) -> None:
        """Read the spool's free space at scrape time."""
        self.spool_free_bytes.set_function(free_bytes)

    def watch_queue(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Export job counts by state, read from the database at scrape time."""
        self.registry.register(_QueueCollector(counts))

    def watch_quality(
        self, rows: Callable[[], Iterable[tuple[str, Mapping[str, str], float]]]
    ) -> None:
        """Export QC rates per site/scanner (``qcd_qc_*``), open alerts and the outbox,
        computed by ``rows`` at scrape time (see :func:`qcd.web.aggregates.metric_rows`).

        Labels are InstitutionName, StationName, finding names and values: no patient data.
        """
        self.registry.register(_QualityCollector(rows))


class _QualityCollector(Collector):
    """Per site and scanner QC counts over rolling windows, read from the DB at scrape time.

    Rows are ``(family, labels, value)``; ``family`` is ``series`` (series analysed),
    ``findings`` (categorical findings by value), ``open_alerts`` or ``outbox``.
    """

    FAMILIES = {
        "series": ("qcd_qc_series", "Series analysed (DONE) per site and scanner in the "
                   "window", ["site", "station", "window"]),
        "findings": ("qcd_qc_findings", "Categorical findings (earl_class, "
                     "rescan_recommended, urgent, ...) by value per site and scanner in the "
                     "window", ["site", "station", "finding", "value", "window"]),
        "open_alerts": ("qcd_open_alerts", "Alerts not yet acknowledged", ["kind"]),
        "outbox": ("qcd_outbox", "Delivery outbox rows by state", ["state"]),
    }

    def __init__(self, rows: Callable[[], Iterable[tuple[str, Mapping[str, str], float]]]
                 ) -> None:
        self._rows = rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {key: GaugeMetricFamily(name, doc, labels=labels)
                    for key, (name, doc, labels) in self.FAMILIES.items()}
        try:
            rows = list(self._rows())
        except Exception:  # a scrape must not fail because the DB blinked
            rows = []
        for key, labels, value in rows:
            names = self.FAMILIES[key][2]
            families[key].add_metric([str(labels.get(n, "")) for n in names], value)
        yield from families.values()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class _QueueCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("qcd_jobs", "Analysis jobs by state", labels=["state"])
        try:
            counts = self._counts()
        except Exception:  # a scrape must not fail because the DB blinked
            counts = {}
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
