"""The ``earl`` analyzer: is a PET reconstruction clinical, EARL1- or EARL2-compliant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Final

import numpy as np
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.evidence import read_evidence
from qcd.analyzers.earl.model import N_CLASSES, EarlModel, aux_estimates
from qcd.analyzers.earl.preprocess import (
    PREPROCESSING_VERSION,
    PREPROCESSINGS,
    grid_spacing,
    model_inputs,
)
from qcd.analyzers.earl.suv import SuvUnavailable, suv_factor
from qcd.analyzers.volume import load_volume
from qcd.analyzers.weights import load_weights
from qcd.bundles import Bundle

PET_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.128"}
MIN_SLICES = 30
PROTOCOL_KEYS: Final = {"voxel": "protocols", "filtered": "protocols_filtered"}
"""model.json key of a ``training.earl.protocols`` block, per noise model of its draws."""
HINT_FAMILIES = {"EARL1-like": "no_psf_6_8mm_filter", "clinical-like": "psf_tof_no_filter"}
"""Header hint -> the ``training.earl.protocols`` family with the same recipe."""
RELIABLE_STAGE1 = 0.9
"""Below this recorded stage-1 accuracy on a series' protocol family, say so."""


def protocol_caveat(spec: dict[str, Any], hint: str) -> Finding | None:
    """``earl_protocol_caveat`` when the bundle's own protocol check (model.json
    ``protocols``/``protocols_filtered``) found it unreliable on this series' recipe.

    Read from the bundle, so a bundle that fixes the weakness drops the caveat by itself.
    """
    family = HINT_FAMILIES.get(hint)
    if family is None:
        return None
    measured = {key: block["summary"][family] for key in PROTOCOL_KEYS.values()
                if (block := spec.get(key)) and family in block.get("summary", {})
                and block["summary"][family].get("stage1_accuracy") is not None}
    if not measured:
        return None
    worst = min(measured, key=lambda k: measured[k]["stage1_accuracy"])
    accuracy = float(measured[worst]["stage1_accuracy"])
    if accuracy >= RELIABLE_STAGE1:
        return None
    return Finding("earl_protocol_caveat",
                   value_text=f"stage 1 {accuracy:.0%} on simulated {family}; confirm with "
                              "the phantom",
                   payload={"family": family, "header_hint": hint,
                            "stage1_accuracy": {k: v["stage1_accuracy"]
                                                for k, v in measured.items()},
                            "clinical_called_earl": {k: v.get("clinical_called_earl")
                                                     for k, v in measured.items()},
                            "source": "model.json protocols (training.earl.protocols)"})


def load_model(bundle: Bundle) -> EarlModel:
    """Build the bundle's architecture (and input options) and load its verified weights."""
    options = bundle.spec.get("input") or {}
    model = EarlModel(str(bundle.spec.get("architecture", "edgenet")),
                      voxel_input=bool(options.get("voxel_input", False)),
                      aux=bool(options.get("aux", False)))
    return load_weights(bundle, model, PREPROCESSINGS)


def _p_positive(runtime: Runtime, key: str, factory: Any, slices: np.ndarray
                ) -> tuple[float, torch.Tensor]:
    """Mean P(positive class) over the slices, and the raw outputs (aux columns too)."""
    out = torch.as_tensor(runtime.predictor(key, factory).predict(torch.from_numpy(slices)))
    p = torch.softmax(out[:, :N_CLASSES].float(), dim=1)[:, 1].mean()
    return float(p), out


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
        s1, idx1, s2, idx2 = model_inputs(volume.array * np.float32(factor), volume.spacing,
                                          bundle.spec)
        x_mm = grid_spacing(str(bundle.spec.get("preprocessing", PREPROCESSING_VERSION)),
                            volume.spacing)[2]
        thresholds = Thresholds.from_spec(bundle.spec)
        tag = f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"
        model: list[EarlModel] = []

        def stage(n: int) -> Any:
            def factory() -> torch.nn.Module:
                if not model:
                    model.append(load_model(bundle))
                return model[0].stage1 if n == 1 else model[0].stage2
            return factory

        p_earl, out1 = _p_positive(runtime, f"{tag}:stage1", stage(1), s1)
        p_earl2 = (_p_positive(runtime, f"{tag}:stage2", stage(2), s2)[0]
                   if p_earl >= thresholds.stage1 else None)
        verdict = decide(p_earl, p_earl2, thresholds)
        findings.append(Finding(
            "earl_class", value_text=verdict,
            payload={"p_earl": round(p_earl, 4),
                     "p_earl2": None if p_earl2 is None else round(p_earl2, 4),
                     "thresholds": vars(thresholds),
                     "stage1_slices_mm": [round(float(i) * x_mm, 1) for i in idx1],
                     "stage2_slices_mm": [round(float(i) * x_mm, 1) for i in idx2],
                     "suv_factor": factor}))
        findings.append(Finding("p_earl", value_num=p_earl, unit="1"))
        if p_earl2 is not None:
            findings.append(Finding("p_earl2", value_num=p_earl2, unit="1"))
        estimate = aux_estimates(out1)
        if estimate is not None:  # bundles trained with auxiliary targets
            findings.append(Finding(
                "earl_effective_fwhm", value_num=round(estimate["fwhm_mm"], 2), unit="mm",
                payload={"overshoot": round(estimate["overshoot"], 3),
                         "noise_cov": round(estimate["cov"], 4),
                         "method": "stage-1 CNN auxiliary outputs (mean over slices), "
                                   "trained on simulated reconstructions"}))
        hint = evidence.hint()
        caveat = protocol_caveat(bundle.spec, hint)
        if caveat is not None:
            findings.append(caveat)
        if (hint == "EARL1-like" and verdict == "clinical") or (
                hint == "clinical-like" and verdict in ("EARL1", "EARL2")):
            findings.append(Finding("header_cnn_disagreement", value_text=f"{hint} vs {verdict}",
                                    payload={"header": evidence.to_dict(), "cnn": verdict}))
        return findings
