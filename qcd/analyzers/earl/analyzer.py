"""The ``earl`` analyzer: is a PET reconstruction clinical, EARL1- or EARL2-compliant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl import physest
from qcd.analyzers.earl.evidence import read_evidence
from qcd.analyzers.earl.features import FEATURES_VERSION, image_features
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


CNN_BUNDLE: Final = "1.0.0"
"""The shipped CNN bundle (GPU benchmarks and parity scripts measure its nets)."""


def load_model(bundle: Bundle) -> torch.nn.Module:
    """Build the bundle's architecture and load its verified weights: an
    :class:`EarlModel` (CNN stages) or a :class:`physest.ParamNet`."""
    if bundle.spec.get("architecture") == physest.ARCHITECTURE:
        n_features = len((bundle.spec.get("input") or {}).get("features", ()))
        return load_weights(bundle, physest.ParamNet(n_features), FEATURES_VERSION)
    return load_cnn(bundle)


def load_cnn(bundle: Bundle) -> EarlModel:
    """A CNN bundle's :class:`EarlModel` with its input options and verified weights."""
    options = bundle.spec.get("input") or {}
    model = EarlModel(str(bundle.spec.get("architecture", "edgenet")),
                      voxel_input=bool(options.get("voxel_input", False)),
                      aux=bool(options.get("aux", False)))
    return load_weights(bundle, model, PREPROCESSINGS)


Predict = Callable[[str, Callable[[], torch.nn.Module], torch.Tensor], torch.Tensor]
"""(cache key, module factory, input batch) -> outputs; the daemon's batching predictor
or, offline, :func:`direct_predict`."""


def direct_predict(key: str, factory: Callable[[], torch.nn.Module], x: torch.Tensor
                   ) -> torch.Tensor:
    """Run the module in this process, unbatched (training evaluations and tests)."""
    with torch.inference_mode():
        return factory()(x)


@dataclass(frozen=True)
class EarlResult:
    """What a bundle says about one volume, before the decision rule."""

    p_earl: float
    p_earl2: float | None
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific evidence for the ``earl_class`` payload."""
    estimate: dict[str, Any] | None = None
    """Effective FWHM (mm), overshoot and noise COV, where the method estimates them."""


def classify_volume(volume_suv: np.ndarray | None, spacing: tuple[float, float, float],
                    bundle: Bundle, predict: Predict = direct_predict,
                    all_stages: bool = False, features: np.ndarray | None = None
                    ) -> EarlResult:
    """P(EARL) and P(EARL2) of an SUV volume by ``bundle``: the one code path of the
    daemon, ``training/`` evaluations and the tests.

    CNN bundles run stage 2 only where stage 1 says EARL unless ``all_stages``; a
    ``physest`` bundle answers both at once. ``features`` may replace the volume for a
    ``physest`` bundle (precomputed :func:`image_features`).
    """
    tag = f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"
    thresholds = Thresholds.from_spec(bundle.spec)
    model: list[torch.nn.Module] = []

    def loaded() -> torch.nn.Module:
        if not model:
            model.append(load_model(bundle))
        return model[0]

    if bundle.spec.get("architecture") == physest.ARCHITECTURE:
        if features is None:
            if volume_suv is None:
                raise ValueError("classify_volume needs a volume or its features")
            features = image_features(volume_suv, spacing)
        row = predict(f"{tag}:params", loaded, torch.from_numpy(features[None, :]))[0]
        params = physest.as_params(row)
        verdict = physest.virtual_phantom(params, spacing, physest.estimator_sd(bundle.spec),
                                          rng_scheme=physest.rng_scheme(bundle.spec),
                                          threads=torch.get_num_threads())
        return EarlResult(
            verdict.p_earl, verdict.p_earl2,
            {"method": "image-derived reconstruction parameters -> virtual NEMA IEC phantom",
             "features": FEATURES_VERSION, "phantom_draws": verdict.counts},
            {**{k: round(v, 4) for k, v in params.items()},
             "method": "physest regressor on body-outline edge spread, power spectrum and "
                       "noise (trained on simulated reconstructions)"})
    if volume_suv is None:
        raise ValueError("a CNN bundle needs the volume")
    s1, idx1, s2, idx2 = model_inputs(volume_suv, spacing, bundle.spec)
    x_mm = grid_spacing(str(bundle.spec.get("preprocessing", PREPROCESSING_VERSION)),
                        spacing)[2]

    def stage(n: int) -> Callable[[], torch.nn.Module]:
        return lambda: getattr(loaded(), f"stage{n}")

    out1 = torch.as_tensor(predict(f"{tag}:stage1", stage(1), torch.from_numpy(s1)))
    p_earl = _mean_positive(out1)
    p_earl2 = None
    if all_stages or p_earl >= thresholds.stage1:
        p_earl2 = _mean_positive(torch.as_tensor(
            predict(f"{tag}:stage2", stage(2), torch.from_numpy(s2))))
    aux = aux_estimates(out1)
    estimate = None if aux is None else {
        "fwhm_mm": round(aux["fwhm_mm"], 2), "overshoot": round(aux["overshoot"], 3),
        "cov": round(aux["cov"], 4),
        "method": "stage-1 CNN auxiliary outputs (mean over slices), trained on simulated "
                  "reconstructions"}
    return EarlResult(p_earl, p_earl2,
                      {"stage1_slices_mm": [round(float(i) * x_mm, 1) for i in idx1],
                       "stage2_slices_mm": [round(float(i) * x_mm, 1) for i in idx2]},
                      estimate)


def _mean_positive(outputs: torch.Tensor) -> float:
    """Mean P(positive class) over the slices (aux columns, if any, ignored)."""
    return float(torch.softmax(outputs[:, :N_CLASSES].float(), dim=1)[:, 1].mean())


class EarlAnalyzer:
    """Two-stage EARL classification (CNNs on sagittal edge images after Pfaehler et al.
    2022, or the physics estimate), plus header evidence."""

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

        def predict(key: str, factory: Callable[[], torch.nn.Module], x: torch.Tensor
                    ) -> torch.Tensor:
            return torch.as_tensor(runtime.predictor(key, factory).predict(x))

        result = classify_volume(volume.array * np.float32(factor), volume.spacing, bundle,
                                 predict)
        thresholds = Thresholds.from_spec(bundle.spec)
        p_earl2 = result.p_earl2 if result.p_earl >= thresholds.stage1 else None
        verdict = decide(result.p_earl, p_earl2, thresholds)
        findings.append(Finding(
            "earl_class", value_text=verdict,
            payload={"p_earl": round(result.p_earl, 4),
                     "p_earl2": None if p_earl2 is None else round(p_earl2, 4),
                     "thresholds": vars(thresholds), **result.details,
                     "suv_factor": factor}))
        findings.append(Finding("p_earl", value_num=result.p_earl, unit="1"))
        if p_earl2 is not None:
            findings.append(Finding("p_earl2", value_num=p_earl2, unit="1"))
        if result.estimate is not None:
            estimate = dict(result.estimate)
            findings.append(Finding(
                "earl_effective_fwhm", value_num=round(float(estimate.pop("fwhm_mm")), 2),
                unit="mm", payload={"overshoot": estimate.pop("overshoot"),
                                    "noise_cov": estimate.pop("cov"), **estimate}))
        hint = evidence.hint()
        caveat = protocol_caveat(bundle.spec, hint)
        if caveat is not None:
            findings.append(caveat)
        if (hint == "EARL1-like" and verdict == "clinical") or (
                hint == "clinical-like" and verdict in ("EARL1", "EARL2")):
            findings.append(Finding("header_cnn_disagreement", value_text=f"{hint} vs {verdict}",
                                    payload={"header": evidence.to_dict(), "cnn": verdict}))
        return findings
