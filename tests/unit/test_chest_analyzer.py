"""ChestAnalyzer: which headers it accepts, and how probabilities become findings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.base import SeriesInput
from qcd.analyzers.chest.analyzer import (
    CR_STORAGE,
    DX_PRESENTATION,
    ChestAnalyzer,
    ChestRules,
    load_model,
)
from qcd.analyzers.chest.labels import LABELS, finding_name
from qcd.bundles import SHIPPED_MODELS, Bundle, load_bundle


def _header(modality: str = "DX", sop: str = DX_PRESENTATION, view: str = "PA",
            part: str = "CHEST") -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SOPClassUID, ds.ViewPosition, ds.BodyPartExamined = modality, sop, view, part
    return ds


@pytest.mark.parametrize(("header", "reason"), [
    (_header(view="LL"), "lateral view"),
    (_header(view="RL"), "lateral view"),
    (_header(part="HAND", view=""), "not a chest radiograph"),
    (_header(modality="CT", sop="1.2.840.10008.5.1.4.1.1.2"), "not a radiograph"),
    (_header(sop="1.2.840.10008.5.1.4.1.1.7"), "SOP class"),
    (_header(part="", view=""), "neither BodyPartExamined CHEST nor ViewPosition PA/AP"),
])
def test_refusals_name_the_reason(header: Dataset, reason: str) -> None:
    verdict = ChestAnalyzer().accepts([header])
    assert not verdict.ok and reason in verdict.reason


@pytest.mark.parametrize("header", [
    _header(), _header(view="AP"), _header(modality="CR", sop=CR_STORAGE),
    _header(part="", view="PA"), _header(part="THORAX", view=""),
])
def test_frontal_chest_radiographs_are_accepted(header: Dataset) -> None:
    assert ChestAnalyzer().accepts([header]).ok


def test_a_series_with_a_frontal_and_a_lateral_image_is_accepted() -> None:
    assert ChestAnalyzer().accepts([_header(view="LL"), _header(view="PA")]).ok


def test_rules_are_configurable() -> None:
    strict = ChestAnalyzer(ChestRules(require_body_part=True))
    assert not strict.accepts([_header(part="", view="PA")]).ok


def _bundle(thresholds: dict[str, float] | None = None) -> Bundle:
    spec = {"labels": list(LABELS), "urgent": ["Pneumothorax"], "input": {"size": 64},
            "thresholds": thresholds or {label: 0.5 for label in LABELS}}
    return Bundle("chest", "0.0.0", Path("."), spec, "0" * 64)


def _radiograph() -> Any:
    from qcd.analyzers.chest.preprocess import DisplayHeader, Radiograph

    return Radiograph(np.zeros((100, 80), np.float32), (0.5, 0.5), "PixelSpacing",
                      DisplayHeader(), "window")


def test_no_flag_gives_normal_and_no_urgent() -> None:
    found = {f.name: f for f in ChestAnalyzer.findings(
        np.full(16, 0.1), _bundle(), [_radiograph()], ["PA"])}
    assert found["normal"].value_text == "yes"
    assert "urgent" not in found and "flags" not in found
    f = found[finding_name("Pleural thickening")]
    assert f.value_num == pytest.approx(0.1) and f.payload["threshold"] == 0.5
    assert f.payload["flagged"] is False
    assert found["chest_input"].payload["model_input_spacing_mm"] == pytest.approx(
        0.5 * 100 / 64, abs=1e-3)


def test_pneumothorax_fires_the_urgent_finding_with_its_own_threshold() -> None:
    p = np.full(16, 0.1)
    p[LABELS.index("Pneumothorax")] = 0.3
    p[LABELS.index("Effusion")] = 0.9
    t = {label: 0.5 for label in LABELS} | {"Pneumothorax": 0.25}
    found = {f.name: f for f in ChestAnalyzer.findings(p, _bundle(t), [_radiograph()], ["PA"])}
    assert found["urgent"].value_text == "Pneumothorax"
    assert found["flags"].payload["labels"] == ["Effusion", "Pneumothorax"]
    assert "normal" not in found
    assert found["chest_pneumothorax"].payload == {
        "label": "Pneumothorax", "probability": 0.3, "threshold": 0.25, "flagged": True,
        "urgent": True}


def test_labels_a_retrained_bundle_did_not_learn_are_not_assessed_not_negative() -> None:
    bundle = _bundle()
    bundle.spec["not_trained"] = {"labels": {"COVID-19": "not in this dataset",
                                             "Tuberculosis": "not in this dataset"}}
    p = np.full(16, 0.1)
    p[LABELS.index("COVID-19")] = 0.0001  # a disabled output sits near 0
    found = {f.name: f for f in ChestAnalyzer.findings(p, bundle, [_radiograph()], ["PA"])}
    assert finding_name("COVID-19") not in found and finding_name("Tuberculosis") not in found
    assert found["chest_not_assessed"].payload["labels"] == bundle.spec["not_trained"]["labels"]
    assert found["chest_not_assessed"].value_text == "COVID-19, Tuberculosis"
    assert found["normal"].payload["max_margin"] == pytest.approx(-0.4)
    assert finding_name("Effusion") in found


class _Direct:
    """A runtime without batching: calls the model in this thread."""

    def predictor(self, key: str, factory: Callable[[], Any]) -> Any:
        model = factory()

        class P:
            def predict(self, x: Any) -> Any:
                with torch.inference_mode():
                    return model(x)
        return P()


def test_shipped_bundle_analyses_a_simulated_pneumothorax(tmp_path: Path) -> None:
    from training.chest.demo import write_study

    torch.set_num_threads(1)
    bundle = load_bundle(SHIPPED_MODELS, "chest")
    load_model(bundle)  # checks labels and preprocessing version
    paths = write_study(tmp_path, ["Pneumothorax"], seed=11)
    series = SeriesInput("1.2.3", "DX", (paths["pa"],))
    found = {f.name: f for f in ChestAnalyzer().analyze(series, bundle, _Direct())}
    assert len([n for n in found if n.startswith("chest_") and n != "chest_input"]) == 16
    assert found["chest_input"].payload["pixel_spacing_mm"] is not None
    assert "Pneumothorax" in found["flags"].payload["labels"]  # the drawn finding fires
    assert "Pneumothorax" in found["urgent"].payload["labels"]
    mono1 = SeriesInput("1.2.4", "DX", (paths["pa_monochrome1"],))
    found1 = {f.name: f for f in ChestAnalyzer().analyze(mono1, bundle, _Direct())}
    for label in LABELS:  # the same image stored as MONOCHROME1 gives the same answer
        assert found1[finding_name(label)].value_num == pytest.approx(
            found[finding_name(label)].value_num, abs=1e-4)


def test_shipped_card_says_simulated_and_not_for_clinical_use() -> None:
    bundle = load_bundle(SHIPPED_MODELS, "chest")
    card = (bundle.path / "MODEL_CARD.md").read_text()
    assert "trained on simulated images only and are not for clinical use" in card
    assert list(bundle.spec["labels"]) == list(LABELS)
    assert set(bundle.spec["thresholds"]) == set(LABELS)
