"""The ``chest`` analyzer: multi-label anomaly flags on frontal chest radiographs.

Acceptance is decided from header values in :meth:`ChestAnalyzer.accepts`, so a
lateral view, a non-chest radiograph or another modality never reaches the model: the
engine turns the refusal into one ``not_applicable`` finding whose text names the
reason (e.g. ``lateral view (ViewPosition LL) ...``). Refusing there rather than in
:meth:`analyze` means no pixel data is decoded and no model bundle loaded for images
the model was never meant to read, and the reason is the same whether the daemon or
``qcd analyze`` runs it.

Findings of an analysed series: one ``chest_<label>`` per label (probability, with
its operating threshold from the bundle and whether it fired), ``flags`` listing the
labels that fired or ``normal`` when none did, ``urgent`` when an urgent label fired
(the alert rule ``urgent_finding`` listens for it), and ``chest_input`` recording
what was read (view, photometric interpretation, VOI, pixel spacing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.chest.labels import LABELS, URGENT, finding_name
from qcd.analyzers.chest.model import ChestNet
from qcd.analyzers.chest.preprocess import (
    PREPROCESSING_VERSION,
    Radiograph,
    input_spacing_mm,
    prepare_batch,
    read_radiograph,
)
from qcd.analyzers.weights import load_weights
from qcd.bundles import Bundle, BundleError
from qcd.errors import InferenceError

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE"})


@dataclass(frozen=True)
class ChestRules:
    """Which images count as frontal chest radiographs (all values upper-case)."""

    sop_classes: frozenset[str] = frozenset({CR_STORAGE, DX_PRESENTATION, DX_PROCESSING})
    modalities: frozenset[str] = frozenset({"CR", "DX"})
    body_parts: frozenset[str] = frozenset({"CHEST", "THORAX", "LUNG"})
    frontal_views: frozenset[str] = frozenset({"PA", "AP"})
    require_body_part: bool = False
    """True: BodyPartExamined must be a chest one; False: a PA/AP view suffices when
    the body part is empty (many CR readers leave it blank)."""

    def judge(self, h: Dataset) -> str | None:
        """None when ``h`` is a frontal chest radiograph, else the reason why not."""
        modality = str(h.get("Modality", "")).upper()
        if modality not in self.modalities:
            return f"modality {modality or 'missing'} is not a radiograph (CR/DX)"
        sop = str(h.get("SOPClassUID", ""))
        if sop not in self.sop_classes:
            return f"SOP class {sop or 'missing'} is not CR or DX image storage"
        view = str(h.get("ViewPosition", "") or "").strip().upper()
        meaning = ""
        for item in h.get("ViewCodeSequence", []) or []:
            meaning = str(item.get("CodeMeaning", "")).lower()
        if view in LATERAL_VIEWS or "lateral" in meaning:
            return (f"lateral view (ViewPosition {view or meaning}): the model reads "
                    "frontal PA/AP chest radiographs only")
        part = str(h.get("BodyPartExamined", "") or "").strip().upper()
        if part and part not in self.body_parts:
            return f"not a chest radiograph (BodyPartExamined {part})"
        if not part and (self.require_body_part or view not in self.frontal_views):
            return "neither BodyPartExamined CHEST nor ViewPosition PA/AP in the header"
        return None


def load_model(bundle: Bundle) -> ChestNet:
    """Build the bundle's network and load its verified weights."""
    if list(bundle.spec["labels"]) != list(LABELS):
        raise BundleError(f"bundle {bundle.name}/{bundle.version} labels "
                          f"{bundle.spec['labels']} differ from this qcd's {list(LABELS)}")
    model = ChestNet(len(LABELS), width=int(bundle.spec["input"].get("width", 32)))
    return load_weights(bundle, model, PREPROCESSING_VERSION)


def _thresholds(bundle: Bundle) -> dict[str, float]:
    spec = bundle.spec.get("thresholds", {})
    missing = [label for label in LABELS if label not in spec]
    if missing:
        raise BundleError(f"bundle {bundle.name}/{bundle.version} has no operating "
                          f"threshold for {', '.join(missing)}")
    return {label: float(spec[label]) for label in LABELS}


class ChestAnalyzer:
    """Sigmoid-per-label ResNet on the padded, resized frontal radiograph."""

    name: ClassVar[str] = "chest"
    bundle: ClassVar[str | None] = "chest"

    def __init__(self, rules: ChestRules | None = None) -> None:
        self.rules = rules or ChestRules()

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        reasons = [self.rules.judge(h) for h in headers]
        if any(r is None for r in reasons):
            return Acceptance(True)
        return Acceptance(False, next((r for r in reasons if r), "no images"))

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        assert bundle is not None  # the engine loads the declared bundle
        import pydicom

        frontal = []
        for path in series.paths:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            if self.rules.judge(header) is None:
                frontal.append((path, str(header.get("ViewPosition", "") or "")))
        if not frontal:
            raise InferenceError("no frontal chest image in the series")
        size = int(bundle.spec["input"]["size"])
        images: list[Radiograph] = [read_radiograph(p) for p, _ in frontal]
        inputs = torch.cat([prepare_batch(torch.from_numpy(r.display)[None], size)
                            for r in images])
        tag = f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"
        logits = runtime.predictor(tag, lambda: load_model(bundle)).predict(inputs)
        probs = torch.sigmoid(torch.as_tensor(logits).float()).numpy()
        p = probs.max(axis=0)  # several frontal images: a finding on any of them counts
        return self.findings(p, bundle, images, [v for _, v in frontal])

    @staticmethod
    def findings(p: np.ndarray, bundle: Bundle, images: Sequence[Radiograph],
                 views: Sequence[str]) -> list[Finding]:
        """Turn per-label probabilities into the stored findings."""
        thresholds = _thresholds(bundle)
        urgent_labels = set(bundle.spec.get("urgent", URGENT))
        # A bundle retrained on a dataset without some labels (NIH has no COVID-19/TB)
        # fixes their output near 0: report them as not assessed, never as a confident no.
        untrained = dict(bundle.spec.get("not_trained", {}).get("labels", {}))
        out: list[Finding] = []
        fired: list[str] = []
        for i, label in enumerate(LABELS):
            if label in untrained:
                continue
            prob = float(p[i])
            flagged = prob >= thresholds[label]
            if flagged:
                fired.append(label)
            out.append(Finding(finding_name(label), value_num=round(prob, 5), unit="1",
                               payload={"label": label, "probability": round(prob, 5),
                                        "threshold": thresholds[label], "flagged": flagged,
                                        "urgent": label in urgent_labels}))
        if untrained:
            out.append(Finding("chest_not_assessed", value_text=", ".join(untrained)[:128],
                               payload={"labels": untrained}))
        if fired:
            out.append(Finding("flags", value_text=", ".join(fired)[:128],
                               payload={"labels": fired}))
        else:
            out.append(Finding("normal", value_text="yes",
                               payload={"max_margin": round(float(max(
                                   p[i] - thresholds[label] for i, label in enumerate(LABELS)
                                   if label not in untrained)),
                                   5)}))
        urgent = [label for label in fired if label in urgent_labels]
        if urgent:
            out.append(Finding("urgent", value_text=", ".join(urgent)[:128],
                               payload={"labels": urgent,
                                        "probabilities": {label: round(float(p[LABELS.index(
                                            label)]), 5) for label in urgent}}))
        first = images[0]
        size = int(bundle.spec["input"]["size"])
        spacing = first.spacing_mm[0] if first.spacing_mm else None
        out.append(Finding("chest_input", value_text=(views[0] or "frontal")[:16],
                           payload=_input_payload(first, len(images), spacing, size)))
        return out


def _input_payload(r: Radiograph, n: int, spacing: float | None, size: int) -> dict[str, Any]:
    return {"images": n, "photometric": r.header.photometric, "voi": r.voi,
            "rows": int(r.display.shape[0]), "columns": int(r.display.shape[1]),
            "pixel_spacing_mm": list(r.spacing_mm) if r.spacing_mm else None,
            "spacing_source": r.spacing_source,
            "model_input_px": size,
            "model_input_spacing_mm": (round(v, 4) if (v := input_spacing_mm(
                r.display.shape, spacing, size)) is not None else None)}
