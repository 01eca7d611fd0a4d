"""From findings to a stored SR and its deliveries (a scheduler job, one direction only).

For every DONE job without a report: read its findings and the source headers, build
the SR, write it durably under the outputs folder, enqueue one delivery per
destination, then mark the job reported. The SR's UIDs are derived from (series,
analyzer, generation), so a rebuild after a crash makes the same instance again and
the PACS never receives two SRs for one analysis.

When a finding carries a mask (:mod:`qcd.outputs.maskcodec`), a binary SEG of it is
built first, with UIDs derived the same way (:func:`seg_uids`), written beside the
SR and queued *before* it (the outbox sends in queue order), and the SR references
it. A mask that no longer matches the stored instances is logged and skipped: the SR
still goes out with the volume.

With ``harmonise_to`` set (``[audit] write_back_harmonised``), a finished job of the
audit analyzer whose series is outside that EARL band gets a harmonised copy
(:mod:`qcd.audit.harmonise`): written beside the SR and queued after it, with UIDs
derived from (series, generation, target, FWHM) so a rebuild makes the same instances.
A series that is itself a copy (by its header, or because its Series Instance UID is a
folder qcd wrote under outputs) is never harmonised again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from qcd.db.engine import Database
from qcd.db.models import Finding, Instance, Job, JobState, Series
from qcd.errors import InferenceError
from qcd.metrics import Metrics
from qcd.outputs.delivery import Destination, enqueue
from qcd.outputs.maskcodec import is_mask_payload
from qcd.outputs.seg import build_mask_seg
from qcd.outputs.sr import FindingData, ModelInfo, build_sr
from qcd.outputs.write import write_part10

LOGGER = logging.getLogger(__name__)


def report_uids(series_uid: str, analyzer: str, generation: int) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR, stable across rebuilds."""
    key = [series_uid, analyzer, str(generation)]
    return (str(generate_uid(entropy_srcs=[*key, "qcd-sr-series"])),
            str(generate_uid(entropy_srcs=[*key, "qcd-sr"])))


def seg_uids(series_uid: str, analyzer: str, generation: int) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG, stable across rebuilds."""
    key = [series_uid, analyzer, str(generation)]
    return (str(generate_uid(entropy_srcs=[*key, "qcd-seg-series"])),
            str(generate_uid(entropy_srcs=[*key, "qcd-seg"])))


class ReportBuilder:
    """Builds SRs for finished jobs and queues them for delivery.

    Parameters
    ----------
    db
        The database.
    spool_root
        Where the source instances are (paths in ``instances`` are relative to it).
    outputs_root
        Where SR files are written: ``<root>/<study>/<sr series>/<sop>.dcm``.
    destinations
        PACS to deliver to (none: SRs are only stored).
    metrics
        Counts reports built.
    harmonise_to
        ``EARL1``/``EARL2``: write back a harmonised copy of non-compliant series analysed
        by ``harmonise_analyzer``; None (default): never.
    """

    def __init__(self, db: Database, spool_root: Path, outputs_root: Path,
                 destinations: Sequence[Destination], metrics: Metrics | None = None,
                 harmonise_to: str | None = None, harmonise_analyzer: str = "earl") -> None:
        self.db = db
        self.harmonise_to = harmonise_to
        self.harmonise_analyzer = harmonise_analyzer
        self.metrics = metrics
        self.spool_root = spool_root
        self.outputs_root = outputs_root
        self.destinations = tuple(destinations)

    def sweep(self, limit: int = 20) -> int:
        """Report every finished job that has none yet; returns how many were made."""
        with self.db.session() as session:
            ids = list(session.scalars(
                select(Job.id).where(Job.state == JobState.DONE, Job.report_sop_uid.is_(None))
                .order_by(Job.id).limit(limit)))
        made = 0
        for job_id in ids:
            try:
                made += self.build(job_id)
            except Exception:  # one bad report must not block the others; retried next sweep
                LOGGER.exception("cannot build the report of job %d", job_id)
        return made

    def build(self, job_id: int) -> int:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.report_sop_uid is not None:
                return 0
            series = session.get(Series, job.series_id)
            assert series is not None
            study_uid = series.study.study_uid
            rows = session.scalars(select(Finding).where(Finding.job_id == job_id)
                                   .order_by(Finding.id)).all()
            findings = [FindingData(r.name, r.value_num, r.value_text, r.unit,
                                    dict(r.payload or {})) for r in rows]
            model = next((ModelInfo(r.model_name, r.model_version or "", r.model_sha256 or "")
                          for r in rows if r.model_name), None)
            newest: dict[str, tuple[int, str]] = {}
            for sop, version, relpath in session.execute(
                    select(Instance.sop_uid, Instance.version, Instance.path)
                    .where(Instance.series_id == series.id)):
                if sop not in newest or version > newest[sop][0]:
                    newest[sop] = (version, relpath)
            analyzer, generation, series_uid = job.analyzer, job.generation, series.series_uid
            series_id = job.series_id
        sources = [pydicom.dcmread(self.spool_root / relpath, stop_before_pixels=True)
                   for _, relpath in sorted(newest.values(), key=lambda v: v[1])]
        segmentation = self._segmentation(sources, findings, model, study_uid, series_id,
                                          series_uid, analyzer, generation)
        sr_series, sr_sop = report_uids(series_uid, analyzer, generation)
        dataset = build_sr(sources, findings, analyzer=analyzer, model=model,
                           series_instance_uid=sr_series, sop_instance_uid=sr_sop,
                           segmentation=segmentation)
        path = self.outputs_root / study_uid / sr_series / f"{sr_sop}.dcm"
        write_part10(dataset, path)
        relpath = path.relative_to(self.outputs_root).as_posix()  # the worker resolves it
        enqueue(self.db, series_id, "SR", sr_sop, relpath, self.destinations)
        if self.harmonise_to is not None and analyzer == self.harmonise_analyzer:
            self._harmonised_copy(
                {r.name: (r.value_text, r.payload) for r in findings},
                [self.spool_root / rel for _, rel in sorted(newest.values(), key=lambda v: v[1])],
                sources, study_uid, series_id, series_uid, generation)
        with self.db.session() as session:
            fresh = session.get(Job, job_id)
            assert fresh is not None
            fresh.report_sop_uid = sr_sop
        if self.metrics is not None:
            self.metrics.reports_built.inc()
        LOGGER.info("SR %s for job %d (%s) stored; %d delivery(ies) queued", sr_sop, job_id,
                    analyzer, len(self.destinations))
        return 1

    def _segmentation(self, sources: Sequence[pydicom.Dataset], findings: Sequence[FindingData],
                      model: ModelInfo | None, study_uid: str, series_id: int, series_uid: str,
                      analyzer: str, generation: int) -> pydicom.Dataset | None:
        """Build, store and queue the SEG of the job's mask finding; None when there is none."""
        mask = next((f for f in findings if is_mask_payload(f.payload)), None)
        if mask is None:
            return None
        seg_series, seg_sop = seg_uids(series_uid, analyzer, generation)
        try:
            seg = build_mask_seg(sources, mask.payload, algorithm=model or ModelInfo(
                analyzer, "", ""), series_instance_uid=seg_series, sop_instance_uid=seg_sop)
        except ValueError:
            LOGGER.exception("no SEG for series %s (%s): the mask finding does not fit the "
                             "stored instances", series_uid, analyzer)
            return None
        path = self.outputs_root / study_uid / seg_series / f"{seg_sop}.dcm"
        write_part10(seg, path)
        enqueue(self.db, series_id, "SEG", seg_sop, path.relative_to(self.outputs_root)
                .as_posix(), self.destinations)
        LOGGER.info("SEG %s for series %s (%s) stored", seg_sop, series_uid, analyzer)
        return seg

    def _harmonised_copy(self, findings: Mapping[str, tuple[str | None, Mapping[str, Any] | None]],
                         paths: Sequence[Path], sources: Sequence[pydicom.Dataset],
                         study_uid: str, series_id: int, series_uid: str,
                         generation: int) -> int:
        """Write and queue the harmonised copy the findings call for; returns instances.

        Data problems (no usable geometry) are logged and skipped; I/O errors propagate so
        the whole report is retried on the next sweep (same UIDs, nothing sent twice).
        """
        from qcd.audit.harmonise import build_harmonised, is_harmonised, plan

        assert self.harmonise_to is not None
        if any(is_harmonised(ds) for ds in sources) or (
                self.outputs_root / study_uid / series_uid).is_dir():
            LOGGER.info("series %s is a harmonised copy made by qcd: not harmonised again",
                        series_uid)
            return 0
        todo = plan(findings, self.harmonise_to)
        if todo is None:
            return 0
        try:
            copies = build_harmonised(paths, todo, generation)
        except (InferenceError, ValueError) as exc:
            LOGGER.warning("no harmonised copy of series %s: %s", series_uid, exc)
            return 0
        for ds in copies:
            path = self.outputs_root / study_uid / str(ds.SeriesInstanceUID) / (
                f"{ds.SOPInstanceUID}.dcm")
            write_part10(ds, path)
        for ds in copies:  # queued only once every file is on disk
            enqueue(self.db, series_id, "HARM", str(ds.SOPInstanceUID),
                    f"{study_uid}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm",
                    self.destinations)
        LOGGER.info("harmonised copy %s of series %s (%s +%.2f mm, %d instance(s)) stored; "
                    "queued for %d destination(s)", copies[0].SeriesInstanceUID if copies else "",
                    series_uid, todo.target, todo.extra_fwhm_mm, len(copies),
                    len(self.destinations))
        return len(copies)
