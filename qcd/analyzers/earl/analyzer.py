"""The ``earl`` analyzer: is a PET reconstruction clinical, EARL1- or EARL2-compliant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.evidence import read_evidence
from qcd.analyzers.earl.model import EarlModel
from qcd.analyzers.earl.preprocess import GRID_MM, PREPROCESSING_VERSION, prepare
from qcd.analyzers.earl.suv import SuvUnavailable, suv_factor
from qcd.analyzers.volume import load_volume
from qcd.analyzers.weights import load_weights
from qcd.bundles import Bundle

PET_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.128"}
MIN_SLICES = 30


def load_model(bundle: Bundle) -> EarlModel:
    """Build the bundle's architecture and load its verified weights."""
    model = EarlModel(str(bundle.spec.get("architecture", "edgenet")))
    return load_weights(bundle, model, PREPROCESSING_VERSION)


def _p_positive(runtime: Runtime, key: str, factory: Any, slices: np.ndarray) -> float:
    logits = runtime.predictor(key, factory).predict(torch.from_numpy(slices))
    return float(torch.softmax(logits.float(), dim=1)[:, 1].mean())


class EarlAnalyzer:
    """Two-stage CNN on sagittal edge images (Pfaehler et al. 2022), plus header evidence."""

    name: ClassVar[str] = "earl"
    bundle: ClassVar[str | None] = "earl"

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        if any(str(h.get("Modality", "")) != "PT" for h in headers):
            return Acceptance(False, "not a PET (PT) series")
        if any(str(h.get("SOPClassUID", "")) not in PET_SOP_CLASSES for h in headers):
            return Acceptance(False, "not PET Image Storage (single-frame slices)")
        if len(headers) < MIN_SLICES:
            return Acceptance(False, f"{len(headers)} slices; a whole-body PET has >= {MIN_SLICES}")
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        assert bundle is not None  # the engine loads the declared bundle
        volume = load_volume(series.paths, MIN_SLICES)
        evidence = read_evidence(volume.first)
        findings = [Finding("header_evidence", value_text=evidence.hint(),
                            payload=evidence.to_dict())]
        try:
            factor = suv_factor(volume.first)
        except SuvUnavailable as exc:
            return findings + [
                Finding("suv_unavailable", value_text=str(exc)[:128]),
                Finding("earl_class", value_text="indeterminate",
                        payload={"reason": f"no SUV: {exc}"}),
            ]
        s1, idx1, s2, idx2 = prepare(volume.array * np.float32(factor), volume.spacing)
        thresholds = Thresholds.from_spec(bundle.spec)
        tag = f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"
        model: list[EarlModel] = []

        def stage(n: int) -> Any:
            def factory() -> torch.nn.Module:
                if not model:
                    model.append(load_model(bundle))
                return model[0].stage1 if n == 1 else model[0].stage2
            return factory

        p_earl = _p_positive(runtime, f"{tag}:stage1", stage(1), s1)
        p_earl2 = (_p_positive(runtime, f"{tag}:stage2", stage(2), s2)
                   if p_earl >= thresholds.stage1 else None)
        verdict = decide(p_earl, p_earl2, thresholds)
        findings.append(Finding(
            "earl_class", value_text=verdict,
            payload={"p_earl": round(p_earl, 4),
                     "p_earl2": None if p_earl2 is None else round(p_earl2, 4),
                     "thresholds": vars(thresholds),
                     "stage1_slices_mm": [round(float(i) * GRID_MM, 1) for i in idx1],
                     "stage2_slices_mm": [round(float(i) * GRID_MM, 1) for i in idx2],
                     "suv_factor": factor}))
        findings.append(Finding("p_earl", value_num=p_earl, unit="1"))
        if p_earl2 is not None:
            findings.append(Finding("p_earl2", value_num=p_earl2, unit="1"))
        hint = evidence.hint()
        if (hint == "EARL1-like" and verdict == "clinical") or (
                hint == "clinical-like" and verdict in ("EARL1", "EARL2")):
            findings.append(Finding("header_cnn_disagreement", value_text=f"{hint} vs {verdict}",
                                    payload={"header": evidence.to_dict(), "cnn": verdict}))
        return findings
