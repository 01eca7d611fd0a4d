"""The ``atrium`` analyzer: left-atrium mask, LA volume, LA volume index and its band."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.atrium.model import UNet2D
from qcd.analyzers.atrium.postprocess import PostprocessSettings, segment
from qcd.analyzers.atrium.preprocess import CONTEXT, PREPROCESSING_VERSION
from qcd.analyzers.atrium.volume import (
    BAND_RULE,
    BSA_FORMULA,
    body_size,
    lavi_band,
    mask_volume_ml,
)
from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.volume import load_volume
from qcd.analyzers.weights import load_weights
from qcd.bundles import Bundle
from qcd.outputs.maskcodec import mask_payload

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEGMENT = "left_atrium"
LABEL_CONVENTION = ("LA blood pool + proximal pulmonary veins (10 mm) + appendage trunk "
                    "(LASC 2013); echo LAVI excludes the veins and appendage")


@dataclass(frozen=True)
class AtriumRules:
    """Which MR series the analyzer takes (header values only).

    The defaults ask for a 3D stack of thin slices, which is what the model was
    trained on; a site with other naming sets its own patterns.
    """

    description: str = r"atri|cardiac|heart|\bla\b|ssfp|whole.?heart|lge"
    """Regex (case-insensitive) on SeriesDescription; empty accepts any."""
    sequence: str = ""
    """Regex on ScanningSequence / SequenceVariant / SequenceName / MRAcquisitionType
    joined by spaces (e.g. ``GR|SSFP|3D``); empty accepts any."""
    min_slices: int = 20
    max_slice_spacing_mm: float = 3.0
    """Thicker stacks (8-10 mm cine) are refused: the 2.5D model never saw them."""


def _slice_spacing(headers: Sequence[Dataset]) -> float | None:
    """Median spacing along the slice normal, or None when geometry is missing/repeated."""
    try:
        iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        pos = np.sort([float(np.dot(normal, np.array(h.ImagePositionPatient, dtype=float)))
                       for h in headers])
    except (AttributeError, ValueError, TypeError, IndexError):
        return None
    gaps = np.diff(pos)
    if len(gaps) == 0 or np.any(gaps < 0.01):
        return None
    return float(np.median(gaps))


def load_model(bundle: Bundle) -> UNet2D:
    """Build the bundle's U-Net and load its verified weights."""
    model = UNet2D(in_channels=int(bundle.spec["input"]["channels"]),
                   base=int(bundle.spec.get("base_channels", 16)))
    return load_weights(bundle, model, PREPROCESSING_VERSION)


def postprocess_settings(spec: dict[str, Any]) -> PostprocessSettings:
    given = spec.get("postprocessing", {})
    default = PostprocessSettings()
    return PostprocessSettings(
        threshold=float(given.get("threshold", default.threshold)),
        closing_mm=float(given.get("closing_mm", default.closing_mm)),
        min_slice_mm2=float(given.get("min_slice_mm2", default.min_slice_mm2)))


def outline(mask: np.ndarray) -> dict[str, Any]:
    """The LA boundary on the slice where it is largest, for the dashboard's key image.

    Boundary = mask pixels with a 4-neighbour outside the mask, given pixel by pixel
    (``closed: false``): exact for any shape, no ordering needed.
    """
    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    m = mask[k].astype(bool)
    padded = np.pad(m, 1)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    rows, cols = np.nonzero(m & ~inner)
    return {"slice": k, "closed": False,
            "points": [[int(r), int(c)] for r, c in zip(rows, cols, strict=True)]}


class AtriumAnalyzer:
    """2D U-Net per slice (2.5D input) + 3D clean-up; volume from the real voxel spacing."""

    name: ClassVar[str] = "atrium"
    bundle: ClassVar[str | None] = "atrium"

    def __init__(self, rules: AtriumRules | None = None) -> None:
        self.rules = rules or AtriumRules()

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        rules = self.rules
        if not headers or any(str(h.get("Modality", "")) != "MR" for h in headers):
            return Acceptance(False, "not an MR series")
        if any(str(h.get("SOPClassUID", "")) != MR_IMAGE_STORAGE for h in headers):
            return Acceptance(False, "not MR Image Storage (single-frame slices)")
        if len(headers) < rules.min_slices:
            return Acceptance(False, f"{len(headers)} slices; a 3D stack has >= "
                                     f"{rules.min_slices}")
        description = str(headers[0].get("SeriesDescription", ""))
        if rules.description and not re.search(rules.description, description, re.I):
            return Acceptance(False, "series description does not name a cardiac/atrial "
                                     "acquisition")
        if rules.sequence:
            h = headers[0]
            text = " ".join(str(h.get(k, "")) for k in (
                "ScanningSequence", "SequenceVariant", "SequenceName", "MRAcquisitionType"))
            if not re.search(rules.sequence, text, re.I):
                return Acceptance(False, f"sequence {text.strip()!r} does not match the rules")
        spacing = _slice_spacing(headers)
        if spacing is None:
            return Acceptance(False, "no usable slice geometry (missing, or several images "
                                     "per position as in cine)")
        if spacing > rules.max_slice_spacing_mm:
            return Acceptance(False, f"slice spacing {spacing:.1f} mm > "
                                     f"{rules.max_slice_spacing_mm:g} mm (not a 3D stack)")
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        assert bundle is not None  # the engine loads the declared bundle
        volume = load_volume(series.paths, self.rules.min_slices)
        tag = f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"
        predictor = runtime.predictor(tag, lambda: load_model(bundle))
        context = int(bundle.spec["input"].get("context", CONTEXT))
        _, mask = segment(lambda x: torch.as_tensor(predictor.predict(x)), volume.array,
                          volume.spacing, context, postprocess_settings(bundle.spec))
        spacing = tuple(round(float(s), 4) for s in volume.spacing)
        volume_ml = mask_volume_ml(mask, volume.spacing)
        slices = [int(i) for i in np.flatnonzero(mask.any(axis=(1, 2)))]
        findings = [Finding(
            "la_volume", value_num=round(volume_ml, 2), unit="ml",
            payload={"method": "sum of segmented voxels x voxel volume",
                     "spacing_mm": list(spacing), "voxels": int(mask.sum()),
                     "slices_with_la": [slices[0], slices[-1]] if slices else [],
                     "label": LABEL_CONVENTION, "modality": "MR",
                     **({"contour": outline(mask)} if slices else {})})]
        if not slices:
            return findings + [Finding("la_not_found", value_text="no left atrium segmented")]
        size = body_size(volume.first.get("PatientSize"), volume.first.get("PatientWeight"))
        bsa = size.bsa_m2
        if bsa is None:
            findings.append(Finding("la_volume_index_unavailable", value_text=size.reason,
                                    payload={"reason": size.reason}))
        else:
            lavi = volume_ml / bsa
            findings.append(Finding(
                "la_volume_index", value_num=round(lavi, 2), unit="ml/m2",
                payload={"bsa_m2": round(bsa, 4), "bsa_formula": BSA_FORMULA,
                         "height_m": round(float(size.height_m or 0), 3),
                         "weight_kg": round(float(size.weight_kg or 0), 2),
                         "note": size.note,
                         "modality": "CMR volume; the bands are echo-derived"}))
            findings.append(Finding("lavi_band", value_text=lavi_band(lavi),
                                    payload={"rule": BAND_RULE}))
        uids = [str(h.SOPInstanceUID) for h in volume.headers]
        findings.append(Finding("la_mask", payload=mask_payload(
            mask, uids, SEGMENT, label="Left atrium", spacing_mm=list(spacing))))
        return findings
