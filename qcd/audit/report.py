"""Multi-centre EARL harmonisation report: per site and scanner, from the database.

For every PET series the latest finished ``earl`` job gives the class (clinical /
EARL1 / EARL2 / indeterminate) and the header evidence. Rows are grouped by site
(InstitutionName) and scanner (StationName, DeviceSerialNumber).

Extra smoothing for a series (how it is derived):

1. Effective resolution. The EARL labels come from an image-domain model in which a
   reconstruction is one Gaussian PSF of FWHM ``f`` (system + reconstruction +
   post-filter, :mod:`qcd.audit.resolution`). From the header we know the post-filter
   FWHM ``g`` (ConvolutionKernel, e.g. "XYZ Gauss5.00") and whether PSF modelling was
   used; the unfiltered reconstruction's resolution ``r0`` is an assumption
   (3.5 mm with PSF, 4.5 mm without; parameters of :func:`effective_fwhm`). Gaussians
   add in quadrature: ``f_eff = sqrt(r0^2 + g^2)``. No filter in the header: no estimate.
2. Band resolution. Sweeping ``f`` through the NEMA IEC phantom model that labels the
   training data gives, per voxel size, the FWHM range ``[t_lo, t_hi]`` whose phantom
   recoveries lie in the band (:data:`qcd.audit.resolution.BAND_FWHM_MM`).
3. Extra Gaussian. Filtering with FWHM ``e`` gives ``sqrt(f_eff^2 + e^2)``, so the band
   is reached for ``e`` in ``[sqrt(t_lo^2 - f_eff^2), sqrt(t_hi^2 - f_eff^2)]``; the
   recommended value aims at the band centre. An image already smoother than ``t_hi``
   cannot be brought into the band by smoothing (reported as empty with a note).

The row functions are pure over the database and return dataclasses, so the CLI
(CSV) and a dashboard page can share them.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from qcd.audit.query import AuditFilters, SeriesCandidate
from qcd.audit.resolution import band_range, extra_fwhm
from qcd.db.engine import Database
from qcd.db.models import Finding, Job, JobState, Series, Study

CLASSES = ("clinical", "EARL1", "EARL2", "indeterminate")
R0_PSF_MM = 3.5
R0_NO_PSF_MM = 4.5
DEFAULT_VOXEL_MM = 4.0


@dataclass(frozen=True)
class Extra:
    """Extra Gaussian FWHM (mm) to reach one band; None where smoothing cannot."""

    minimum: float | None
    maximum: float | None
    recommended: float | None
    note: str = ""


@dataclass(frozen=True)
class SeriesRow:
    site: str
    station: str
    device_serial: str
    study_date: str
    series_uid: str
    series_description: str
    earl_class: str
    model: str
    reconstruction_method: str
    convolution_kernel: str
    filter_fwhm_mm: float | None
    psf: bool | None
    tof: bool | None
    voxel_mm: float | None
    fwhm_eff_mm: float | None
    fwhm_eff_derivation: str
    to_earl1: Extra
    to_earl2: Extra


@dataclass(frozen=True)
class ScannerRow:
    """One site and scanner: class shares, header evidence, typical extra smoothing."""

    site: str
    station: str
    device_serial: str
    n_series: int
    counts: Mapping[str, int]
    shares: Mapping[str, float]
    reconstruction_methods: str
    convolution_kernels: str
    filter_fwhm_mm: str
    psf: str
    tof: str
    fwhm_eff_mm_median: float | None
    non_compliant: int
    """Series classed clinical (the ones the extra smoothing is for)."""
    extra_to_earl1_mm_median: float | None
    extra_to_earl2_mm_median: float | None
    extra_estimated: int
    """Non-compliant series with a header-based effective resolution."""


def effective_fwhm(evidence: Mapping[str, Any], r0_psf: float = R0_PSF_MM,
                   r0_no_psf: float = R0_NO_PSF_MM) -> tuple[float | None, str]:
    """``f_eff = sqrt(r0^2 + g^2)`` from the header's post-filter ``g``; with its derivation."""
    g = evidence.get("filter_fwhm_mm")
    if g is None:
        return None, "no post-filter FWHM in the header"
    psf = evidence.get("psf") is True
    r0 = r0_psf if psf else r0_no_psf
    f = math.sqrt(r0 * r0 + float(g) * float(g))
    return f, (f"sqrt({r0:g}^2 + {float(g):g}^2): header filter {float(g):g} mm, "
               f"{'PSF' if psf else 'non-PSF'} reconstruction {r0:g} mm (assumed)")


def extra_to_band(label: str, f_eff: float | None, voxel_mm: float) -> Extra:
    """The extra Gaussian FWHM range (and band-centre value) taking ``f_eff`` into ``label``."""
    if f_eff is None:
        return Extra(None, None, None, "effective resolution unknown")
    band = band_range(label, voxel_mm)
    if band is None:
        return Extra(None, None, None, f"no {label} resolution range for this voxel size")
    lo, hi = band
    if f_eff > hi:
        return Extra(None, None, None, f"already smoother than {label} ({f_eff:.1f} > {hi:g} mm)")
    centre = (lo + hi) / 2
    rec = extra_fwhm(f_eff, centre)
    return Extra(extra_fwhm(f_eff, lo) if f_eff < lo else 0.0, extra_fwhm(f_eff, hi),
                 rec if rec is not None else 0.0,
                 f"band {lo:g}-{hi:g} mm at {voxel_mm:g} mm voxels")


def _keep(filters: AuditFilters | None, modality: str | None, study_date: str | None,
          station: str | None, institution: str | None) -> bool:
    if filters is None:
        return True
    return filters.accepts(SeriesCandidate("", "", modality, study_date, institution, station,
                                           None, None, None))


def series_rows(db: Database, filters: AuditFilters | None = None, analyzer: str = "earl",
                series_uids: Iterable[str] | None = None) -> list[SeriesRow]:
    """One row per series with a finished ``analyzer`` job of its latest generation."""
    wanted = set(series_uids) if series_uids is not None else None
    with db.session() as session:
        jobs = session.execute(
            select(Job.id, Series, Study.study_date)
            .join(Series, (Series.id == Job.series_id) & (Job.generation == Series.generation))
            .join(Study, Study.id == Series.study_id)
            .where(Job.analyzer == analyzer, Job.state == JobState.DONE)
            .order_by(Series.id)
        ).all()
        selected = [(job_id, s, date) for job_id, s, date in jobs
                    if (wanted is None or s.series_uid in wanted)
                    and _keep(filters, s.modality, date, s.station_name, s.institution_name)]
        findings: dict[int, dict[str, Finding]] = defaultdict(dict)
        ids = [job_id for job_id, _, _ in selected]
        for i in range(0, len(ids), 500):
            for f in session.scalars(select(Finding).where(Finding.job_id.in_(ids[i:i + 500]))):
                findings[f.job_id][f.name] = f
        rows = [_series_row(s, date, findings.get(job_id, {})) for job_id, s, date in selected]
    return rows


def _series_row(s: Series, study_date: str | None, found: Mapping[str, Finding]) -> SeriesRow:
    verdict = found.get("earl_class")
    earl_class = verdict.value_text if verdict is not None and verdict.value_text else (
        "indeterminate")
    if earl_class not in CLASSES:
        earl_class = "indeterminate"
    evidence_row = found.get("header_evidence")
    evidence: Mapping[str, Any] = (evidence_row.payload or {}) if evidence_row else {}
    f_eff, derivation = effective_fwhm(evidence)
    voxel = evidence.get("pixel_spacing_mm") or evidence.get("slice_thickness_mm")
    voxel_mm = float(voxel) if voxel else None
    model = f"{verdict.model_name}/{verdict.model_version}" if verdict and verdict.model_name else ""
    return SeriesRow(
        site=s.institution_name or "", station=s.station_name or "",
        device_serial=s.device_serial or "", study_date=study_date or "",
        series_uid=s.series_uid, series_description=s.series_description or "",
        earl_class=earl_class, model=model,
        reconstruction_method=str(evidence.get("reconstruction_method") or ""),
        convolution_kernel=str(evidence.get("convolution_kernel") or ""),
        filter_fwhm_mm=evidence.get("filter_fwhm_mm"), psf=evidence.get("psf"),
        tof=evidence.get("tof"), voxel_mm=voxel_mm, fwhm_eff_mm=f_eff,
        fwhm_eff_derivation=derivation,
        to_earl1=extra_to_band("EARL1", f_eff, voxel_mm or DEFAULT_VOXEL_MM),
        to_earl2=extra_to_band("EARL2", f_eff, voxel_mm or DEFAULT_VOXEL_MM))


def _distinct(values: Iterable[object]) -> str:
    seen: list[str] = []
    for v in values:
        text = "unknown" if v is None or v == "" else str(v)
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def scanner_rows(rows: Sequence[SeriesRow]) -> list[ScannerRow]:
    """Group series rows by (site, station, device serial)."""
    groups: dict[tuple[str, str, str], list[SeriesRow]] = defaultdict(list)
    for r in rows:
        groups[(r.site, r.station, r.device_serial)].append(r)
    out = []
    for (site, station, serial), members in sorted(groups.items()):
        counts = {c: sum(r.earl_class == c for r in members) for c in CLASSES}
        bad = [r for r in members if r.earl_class == "clinical"]
        out.append(ScannerRow(
            site=site, station=station, device_serial=serial, n_series=len(members),
            counts=counts, shares={c: counts[c] / len(members) for c in CLASSES},
            reconstruction_methods=_distinct(r.reconstruction_method for r in members),
            convolution_kernels=_distinct(r.convolution_kernel for r in members),
            filter_fwhm_mm=_distinct(r.filter_fwhm_mm for r in members),
            psf=_distinct(r.psf for r in members), tof=_distinct(r.tof for r in members),
            fwhm_eff_mm_median=_median([r.fwhm_eff_mm for r in members]),
            non_compliant=len(bad),
            extra_to_earl1_mm_median=_median([r.to_earl1.recommended for r in bad]),
            extra_to_earl2_mm_median=_median([r.to_earl2.recommended for r in bad]),
            extra_estimated=sum(r.fwhm_eff_mm is not None for r in bad)))
    return out


def harmonisation_report(db: Database, filters: AuditFilters | None = None,
                         analyzer: str = "earl") -> list[ScannerRow]:
    """The per-site/scanner report (what a dashboard page would call)."""
    return scanner_rows(series_rows(db, filters, analyzer))


def _flat(row: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in dataclasses.asdict(row).items():  # type: ignore[call-overload]
        if isinstance(value, Mapping):
            for k, v in value.items():
                out[f"{key[:-1] if key.endswith('s') else key}_{k}"] = _cell(v)
        else:
            out[key] = _cell(value)
    return out


def _cell(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    return "" if value is None else value


def write_csv(rows: Sequence[object], path: str | Path) -> int:
    """Write dataclass rows (nested ones flattened to ``field_key``) as CSV; returns rows."""
    flat = [_flat(r) for r in rows]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        if not flat:
            return 0
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    return len(flat)
