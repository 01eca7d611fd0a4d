"""A harmonised copy of a PET series: the extra Gaussian of the harmonisation report, applied.

When the EARL analysis of a PET series finds it outside the site's target band and the
harmonisation model (:mod:`qcd.audit.report`) gives a recommended extra FWHM ``e``, the
copy is the source volume filtered with a 3-D Gaussian of FWHM ``e``
(``sigma_mm = e / 2.3548``, per-axis sigma in voxels from the real spacing), written as a
new PET series of the same study:

* UIDs derived from (source series, generation, target, FWHM): a rebuild after a crash
  makes the same series and instances again (:func:`harmonised_uids`);
* ImageType ``DERIVED\\PRIMARY`` (the PET Image module fixes Value 2 to PRIMARY,
  PS3.3 C.8.9.4.1.1), DerivationDescription naming the extra FWHM, target band and
  qcd version, SeriesDescription prefixed ``HARMONISED <band> +<x.x> mm``,
  SourceImageSequence referencing the source slice of each instance;
* pixels re-quantised per slice (signed 16 bit, new RescaleSlope, intercept 0) so the
  values stay in Bq/ml; the SUV headers (Units, decay correction, dose, weight, times)
  are copied unchanged.

A copy is never harmonised again (:func:`is_harmonised`). Pure numpy/scipy/pydicom:
no database, no network; the trigger is :meth:`qcd.outputs.reports.ReportBuilder.build`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from qcd import __version__
from qcd.analyzers.volume import load_volume

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
MARK = "qcd harmonised copy"
"""Start of every DerivationDescription qcd writes; how a copy is recognised."""
TARGETS = ("EARL1", "EARL2")
MIN_EXTRA_MM = 0.1
"""Below this the copy would be the source: no copy is made."""


@dataclass(frozen=True)
class Plan:
    """What to make: the extra FWHM that takes the series into ``target``, and why."""

    target: str
    extra_fwhm_mm: float
    earl_class: str
    fwhm_eff_mm: float
    derivation: str


def plan(findings: Mapping[str, tuple[str | None, Mapping[str, Any] | None]],
         target: str) -> Plan | None:
    """The harmonisation of one analysed series, or None when none applies.

    ``findings`` maps a finding name to (value_text, payload) of the EARL job
    (``earl_class`` and ``header_evidence``). A copy is planned when the class is known
    and is not ``target`` and the report's model gives a recommended extra FWHM for it
    (:func:`qcd.audit.report.extra_to_band`): a series already smoother than the band
    or without a post-filter in its header gets none.
    """
    from qcd.audit.report import CLASSES, DEFAULT_VOXEL_MM, effective_fwhm, extra_to_band

    if target not in TARGETS:
        raise ValueError(f"harmonisation target must be one of {TARGETS}, got {target!r}")
    earl_class = (findings.get("earl_class") or (None, None))[0]
    if earl_class not in CLASSES or earl_class in (target, "indeterminate"):
        return None
    evidence = (findings.get("header_evidence") or (None, None))[1] or {}
    f_eff, derivation = effective_fwhm(evidence)
    if f_eff is None:
        return None
    voxel = evidence.get("pixel_spacing_mm") or evidence.get("slice_thickness_mm")
    extra = extra_to_band(target, f_eff, float(voxel) if voxel else DEFAULT_VOXEL_MM)
    if extra.recommended is None or extra.recommended < MIN_EXTRA_MM:
        return None
    return Plan(target, round(extra.recommended, 2), str(earl_class), f_eff,
                f"{derivation}; {extra.note}")


def harmonised_uids(series_uid: str, generation: int, target: str, fwhm_mm: float,
                    source_sops: Sequence[str]) -> tuple[str, list[str]]:
    """(SeriesInstanceUID, one SOPInstanceUID per source SOP) of the copy, stable."""
    key = [series_uid, str(generation), target, f"{fwhm_mm:.2f}"]
    return (str(generate_uid(entropy_srcs=[*key, "qcd-harm-series"])),
            [str(generate_uid(entropy_srcs=[*key, sop, "qcd-harm"])) for sop in source_sops])


def is_harmonised(ds: Dataset) -> bool:
    """True for an instance qcd wrote as a harmonised copy (it must not be harmonised again)."""
    if MARK in str(ds.get("DerivationDescription", "") or "").lower():
        return True
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return bool(image_type) and image_type[0] == "DERIVED" and str(
        ds.get("SeriesDescription", "") or "").upper().startswith("HARMONISED ")


def smooth(array: np.ndarray, spacing: Sequence[float], fwhm_mm: float) -> np.ndarray:
    """3-D Gaussian of ``fwhm_mm`` over a (z, y, x) volume with ``spacing`` mm per axis.

    ``mode="reflect"`` keeps the total activity (what leaves an edge comes back).
    """
    sigma_mm = fwhm_mm / FWHM_PER_SIGMA
    sigma = [sigma_mm / float(s) for s in spacing]
    return np.asarray(ndimage.gaussian_filter(np.asarray(array, dtype=np.float64), sigma,
                                              mode="reflect"))


def _quantise(plane: np.ndarray) -> tuple[np.ndarray, float]:
    top = float(np.max(np.abs(plane))) if plane.size else 0.0
    slope = top / 32767.0 if top > 0 else 1.0
    slope = float(f"{slope:.8g}")  # DS holds 16 characters: store what is used
    return np.round(plane / slope).clip(-32768, 32767).astype("<i2"), slope


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def build_harmonised(paths: Sequence[Path], plan: Plan, generation: int) -> list[Dataset]:
    """The harmonised copy of the series in ``paths`` (one dataset per slice, Part 10 ready).

    Raises
    ------
    qcd.errors.InferenceError
        The series has no usable 3-D geometry (:func:`qcd.analyzers.volume.load_volume`).
    ValueError
        A source instance is itself a harmonised copy.
    """
    volume = load_volume(paths)
    if any(is_harmonised(h) for h in volume.headers):
        raise ValueError("the series is already a harmonised copy; it is not harmonised again")
    smoothed = smooth(volume.array, volume.spacing, plan.extra_fwhm_mm)
    first = volume.headers[0]
    source_series = str(first.SeriesInstanceUID)
    series_uid, sops = harmonised_uids(source_series, generation, plan.target,
                                       plan.extra_fwhm_mm,
                                       [str(h.SOPInstanceUID) for h in volume.headers])
    prefix = f"HARMONISED {plan.target} +{plan.extra_fwhm_mm:.1f} mm"
    description = _truncate(f"{prefix} {first.get('SeriesDescription', '') or ''}".strip(), 64)
    sigma_mm = plan.extra_fwhm_mm / FWHM_PER_SIGMA
    derivation = _truncate(
        f"{MARK}: extra 3D Gaussian post-filter FWHM {plan.extra_fwhm_mm:.2f} mm "
        f"(sigma {sigma_mm:.2f} mm) applied to series {source_series} to reach {plan.target} "
        f"(classed {plan.earl_class}; effective resolution {plan.fwhm_eff_mm:.2f} -> "
        f"{math.hypot(plan.fwhm_eff_mm, plan.extra_fwhm_mm):.2f} mm, {plan.derivation}); "
        f"values in Bq/ml preserved; qcd {__version__}; not for primary diagnosis", 1024)
    kernel_note = f"QCD GAUSS{plan.extra_fwhm_mm:.2f}"[:16]
    out = []
    for k, (source, sop_uid) in enumerate(zip(volume.headers, sops, strict=True)):
        ds = copy.deepcopy(source)
        for keyword in ("PixelData", "SmallestImagePixelValue", "LargestImagePixelValue",
                        "PixelPaddingValue", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                delattr(ds, keyword)
        pixels, slope = _quantise(smoothed[k])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.add_new(0x7FE00010, "OW", pixels.tobytes())
        ds.RescaleSlope = f"{slope:.8g}"
        ds.RescaleIntercept = 0
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.SeriesDescription = description
        ds.DerivationDescription = derivation
        if ds.get("SeriesNumber") not in (None, ""):
            ds.SeriesNumber = int(ds.SeriesNumber) % 1000 + 9000
        raw = ds.get("ConvolutionKernel")
        kernels = ([] if raw in (None, "") else [str(raw)] if isinstance(raw, str)
                   else [str(v) for v in raw])
        ds.ConvolutionKernel = [*kernels, kernel_note] if kernels else kernel_note
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = DicomSequence([ref])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        out.append(ds)
    return out
