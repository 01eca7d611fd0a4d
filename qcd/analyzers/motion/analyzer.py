"""The ``motion`` analyzer: HR-pQCT motion grade 1-5 and whether to rescan, while the patient waits.

Acceptance (header values only):

* every instance is Modality ``CT`` and single-frame CT Image Storage;
* the series is HR-pQCT: Manufacturer contains ``SCANCO`` (XtremeCT / XtremeCT II
  exports), **or** the site tagged it: SeriesDescription, ProtocolName,
  ManufacturerModelName, ImageComments or BodyPartExamined matches ``SITE_TAG``
  (``HR-pQCT``, ``HRpQCT``, ``XtremeCT``, case-insensitive) - for plain CT volumes
  exported by other software;
* in-plane pixel size <= ``MAX_PIXEL_MM`` (0.2 mm; XtremeCT II 0.061, XtremeCT 0.082):
  a clinical CT routed here by mistake is declined, not graded;
* at least ``MIN_SLICES`` slices (a stack is 168 on XtremeCT II, 110 on XtremeCT).

The grade comes from a per-slice CNN on ``input.slices`` (default 8) equally spaced
axial slices, averaged over slices (see :mod:`qcd.analyzers.motion.model`); the
streak index (:mod:`qcd.analyzers.motion.quant`) is reported beside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.motion.decision import Thresholds, decide
from qcd.analyzers.motion.model import N_ORDINAL, MotionNet, scan_cumulative, scan_motion_um
from qcd.analyzers.motion.preprocess import N_SLICES, PREPROCESSING_VERSION, prepare
from qcd.analyzers.motion.quant import streak_index
from qcd.analyzers.volume import load_volume
from qcd.analyzers.weights import load_weights
from qcd.bundles import Bundle

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SITE_TAG = re.compile(r"hr-?\s*p?qct|xtreme\s*ct", re.IGNORECASE)
TAG_KEYWORDS = ("SeriesDescription", "ProtocolName", "ManufacturerModelName", "ImageComments",
                "BodyPartExamined")
MAX_PIXEL_MM = 0.2
MIN_SLICES = 16


def load_model(bundle: Bundle) -> MotionNet:
    """Build the bundle's architecture and load its verified weights."""
    spec = bundle.spec.get("input", {})
    model = MotionNet(int(spec.get("width", 16)), bool(spec.get("motion_head", False)))
    return load_weights(bundle, model, PREPROCESSING_VERSION)


def is_hrpqct(ds: Dataset) -> bool:
    """Scanco-made, or tagged HR-pQCT by the site in a descriptive element."""
    if "SCANCO" in str(ds.get("Manufacturer", "")).upper():
        return True
    return any(SITE_TAG.search(str(ds.get(k, "") or "")) for k in TAG_KEYWORDS)


def _pixel_mm(ds: Dataset) -> float | None:
    try:
        return max(float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None


class MotionAnalyzer:
    """Per-slice ordinal CNN motion grade (after Walle et al., Bone 2023), rescan and review."""

    name: ClassVar[str] = "motion"
    bundle: ClassVar[str | None] = "motion"

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        if not headers:
            return Acceptance(False, "empty series")
        if any(str(h.get("Modality", "")) != "CT" for h in headers):
            return Acceptance(False, "not a CT series")
        if any(str(h.get("SOPClassUID", "")) != CT_IMAGE_STORAGE for h in headers):
            return Acceptance(False, "not CT Image Storage (single-frame slices)")
        if not is_hrpqct(headers[0]):
            return Acceptance(False, "not HR-pQCT: Manufacturer is not SCANCO and no site "
                                     "tag (HR-pQCT / XtremeCT) in the series description")
        pixel = _pixel_mm(headers[0])
        if pixel is None or pixel > MAX_PIXEL_MM:
            return Acceptance(False, f"pixel spacing {pixel} mm; HR-pQCT is <= {MAX_PIXEL_MM} mm")
        if len(headers) < MIN_SLICES:
            return Acceptance(False, f"{len(headers)} slices; an HR-pQCT stack has >= "
                                     f"{MIN_SLICES}")
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        assert bundle is not None  # the engine loads the declared bundle
        volume = load_volume(series.paths, MIN_SLICES)
        n = int(bundle.spec.get("input", {}).get("slices", N_SLICES))
        x, idx = prepare(volume.array, volume.spacing, n)
        thresholds = Thresholds.from_spec(bundle.spec)
        tag = f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"
        model: list[MotionNet] = []

        def factory() -> Any:
            if not model:
                model.append(load_model(bundle))
            return model[0]

        logits = runtime.predictor(tag, factory).predict(x)
        logits = torch.as_tensor(logits).float()
        cumulative = scan_cumulative(logits)
        d = decide(cumulative, thresholds)
        per_slice = (1.0 + torch.sigmoid(logits[:, :N_ORDINAL]).sum(dim=1)).tolist()
        magnitude = scan_motion_um(logits)
        estimate = streak_index(x)
        findings = [
            Finding("motion_grade", value_num=float(d.grade), unit="{grade}", payload={
                "probabilities": {str(g + 1): p for g, p in enumerate(d.probabilities)},
                "confidence": round(d.confidence, 4),
                "expected_grade": round(d.expected_grade, 3),
                "p_rescan": round(d.p_rescan, 4),
                "slices": [int(i) for i in idx],
                "slice_count": int(volume.array.shape[0]),
                "slice_expected_grades": [round(float(v), 3) for v in per_slice],
                "thresholds": vars(thresholds),
            }),
            Finding("rescan_recommended", value_text="true" if d.rescan else "false",
                    payload={"grade": d.grade, "rescan_grade": thresholds.rescan_grade,
                             "p_rescan": round(d.p_rescan, 4)}),
        ]
        if d.review_reason is not None:
            findings.append(Finding("motion_review", value_text=d.review_reason[:128],
                                    payload={"grade": d.grade,
                                             "confidence": round(d.confidence, 4),
                                             "p_rescan": round(d.p_rescan, 4)}))
        if np.isfinite(estimate):
            findings.append(Finding("motion_estimate", value_num=round(estimate, 5), unit="1",
                                    payload={"method": "streak index: soft-tissue high-pass "
                                             "RMS / bone contrast (image-based, see "
                                             "qcd.analyzers.motion.quant)"}))
        if magnitude is not None and np.isfinite(magnitude):
            findings.append(Finding("motion_magnitude", value_num=round(magnitude, 1),
                                    unit="um", payload={
                                        "method": "CNN regression head (geometric mean over "
                                                  "slices), trained on simulated rigid motion",
                                        "grade_edges_um": bundle.spec.get("grade_edges_um")}))
        return findings
