"""Ordinal decoding, the rescan/review decision, preprocessing and the analyzer's acceptance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from qcd.analyzers.motion.analyzer import MotionAnalyzer
from qcd.analyzers.motion.decision import Thresholds, decide
from qcd.analyzers.motion.model import MotionNet, cumulative_targets, decode, scan_cumulative
from qcd.analyzers.motion.preprocess import INPUT_SIZE, pick_slices, prepare, prepare_slices
from qcd.analyzers.motion.quant import streak_index


def cum(*p: float) -> torch.Tensor:
    return torch.tensor(p, dtype=torch.float32)


def test_cumulative_targets() -> None:
    t = cumulative_targets(torch.tensor([1, 3, 5]))
    assert t.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_decode_median_grade_and_probabilities() -> None:
    grade, probs, expected = decode(cum(0.99, 0.9, 0.2, 0.05))
    assert grade == 3
    assert probs.sum().item() == pytest.approx(1.0)
    assert probs.tolist() == pytest.approx([0.01, 0.09, 0.7, 0.15, 0.05], abs=1e-6)
    assert expected == pytest.approx(1 + 0.99 + 0.9 + 0.2 + 0.05)
    assert decode(cum(0, 0, 0, 0))[0] == 1 and decode(cum(1, 1, 1, 1))[0] == 5


def test_scan_cumulative_is_the_slice_mean_made_monotone() -> None:
    logits = torch.logit(torch.tensor([[0.9, 0.6, 0.7, 0.1], [0.9, 0.6, 0.5, 0.1]]))
    c = scan_cumulative(logits)
    assert c.tolist() == pytest.approx([0.9, 0.6, 0.6, 0.1], abs=1e-6)


def test_clear_grades_decide_without_review() -> None:
    t = Thresholds()
    low = decide(cum(0.02, 0.01, 0.0, 0.0), t)
    assert (low.grade, low.rescan, low.review) == (1, False, False)
    high = decide(cum(1.0, 0.99, 0.97, 0.05), t)
    assert (high.grade, high.rescan, high.review) == (4, True, False)
    assert high.confidence == pytest.approx(0.92, abs=1e-6)


def test_borderline_three_versus_four_is_flagged_for_review() -> None:
    d = decide(cum(0.99, 0.97, 0.45, 0.02), Thresholds())
    assert d.grade == 3 and not d.rescan
    assert d.review and "borderline 3 vs 4" in (d.review_reason or "")


def test_low_confidence_is_flagged_for_review() -> None:
    d = decide(cum(0.7, 0.25, 0.05, 0.0), Thresholds(min_confidence=0.5))
    assert d.grade == 2 and d.confidence == pytest.approx(0.45)
    assert d.review and "low confidence" in (d.review_reason or "")


def test_rescan_threshold_is_configurable() -> None:
    c = cum(1.0, 0.98, 0.96, 0.03)
    assert decide(c, Thresholds()).rescan
    assert not decide(c, Thresholds(rescan_grade=5)).rescan
    spec = {"thresholds": {"rescan_grade": 5, "rescan_probability": 0.3}}
    t = Thresholds.from_spec(spec)
    assert (t.rescan_grade, t.rescan_probability) == (5, 0.3)
    # a lowered probability threshold recommends a rescan for a borderline grade 3
    d = decide(cum(0.99, 0.97, 0.4, 0.01), Thresholds(rescan_probability=0.35))
    assert d.grade == 3 and d.rescan and d.review
    with pytest.raises(ValueError):
        Thresholds(rescan_grade=7)


def test_pick_slices_equally_spaced() -> None:
    assert pick_slices(168, 8).tolist() == [10, 31, 52, 73, 94, 115, 136, 157]
    assert pick_slices(5, 8).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        pick_slices(0, 8)


def test_prepare_resamples_centres_and_normalises() -> None:
    vol = np.zeros((20, 300, 300), dtype=np.float32)
    vol[:, 200:260, 40:100] = 1000.0  # off-centre "bone"
    x, idx = prepare(vol, (0.0607, 0.061, 0.061))
    assert x.shape == (8, 1, INPUT_SIZE, INPUT_SIZE) and x.dtype == torch.float32
    assert len(idx) == 8
    img = x[0, 0]
    rows, cols = torch.nonzero(img > 0.5, as_tuple=True)
    assert abs(rows.float().mean().item() - INPUT_SIZE / 2) < 3  # the bone is centred
    assert abs(cols.float().mean().item() - INPUT_SIZE / 2) < 3
    assert img.min().item() >= -0.25 and img.max().item() <= 1.25
    # unit-agnostic: HU-like offset and scale give the same input
    y = prepare_slices(vol[:2] * 3.0 - 500.0, 0.061)
    assert torch.allclose(y, x[:2], atol=1e-4)


def test_model_shapes_and_streak_index() -> None:
    net = MotionNet().eval()
    with torch.no_grad():
        out = net(torch.zeros(3, 1, INPUT_SIZE, INPUT_SIZE))
    assert out.shape == (3, 4)
    assert math.isnan(streak_index(torch.zeros(2, 1, 64, 64)))


def _header(**kw: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Manufacturer = "SCANCO Medical AG"
    ds.PixelSpacing = [0.0607, 0.0607]
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_acceptance_rules() -> None:
    a = MotionAnalyzer()
    assert a.accepts([_header()] * 168).ok
    assert not a.accepts([_header()] * 10).ok
    assert not a.accepts([_header(Modality="MR")] * 168).ok
    assert not a.accepts([_header(PixelSpacing=[0.7, 0.7])] * 168).ok  # clinical CT
    other = _header(Manufacturer="ACME")
    assert not a.accepts([other] * 168).ok
    tagged = _header(Manufacturer="ACME", SeriesDescription="HR-pQCT distal tibia")
    assert a.accepts([tagged] * 168).ok
    assert a.accepts([_header(Manufacturer="", ManufacturerModelName="XtremeCT II")] * 168).ok


def test_motion_head_adds_a_log_magnitude_output_the_decision_ignores() -> None:
    from qcd.analyzers.motion.model import log_motion_target, scan_motion_um

    net = MotionNet(8, motion_head=True).eval()
    with torch.no_grad():
        out = net(torch.zeros(3, 1, INPUT_SIZE, INPUT_SIZE))
    assert out.shape == (3, 5)
    logits = torch.tensor([[2.0, 1.0, -1.0, -3.0, math.log(2.0)],
                           [2.0, 1.0, -1.0, -3.0, math.log(8.0)]])
    assert torch.equal(scan_cumulative(logits), scan_cumulative(logits[:, :4]))
    # geometric mean over slices of 100 um x exp(head): sqrt(200 * 800) = 400 um
    assert scan_motion_um(logits) == pytest.approx(400.0)
    assert scan_motion_um(logits[:, :4]) is None
    # magnitudes below the floor (8 um, also an exact 0) share one target
    t = log_motion_target(torch.tensor([0.0, 8.0, 300.0]))
    assert t[0] == t[1] == pytest.approx(math.log(0.08))
    assert t[2] == pytest.approx(math.log(3.0))


def test_variant_choice_uses_validation_specificity_then_sensitivity() -> None:
    from training.motion.train import selection_score

    def summary(spec: float, sens: float, kappa: float, held_out_spec: float) -> dict:
        return {"validation": {"rescan_specificity": spec, "rescan_sensitivity": sens,
                               "kappa_quadratic": kappa},
                "held_out": {"rescan_specificity": held_out_spec}}

    a, b = summary(0.898, 0.960, 0.94, 0.80), summary(0.893, 0.965, 0.95, 0.99)
    assert max([a, b], key=selection_score) is a  # held-out numbers never decide
    c = summary(0.898, 0.970, 0.90, 0.5)
    assert max([a, c], key=selection_score) is c


def test_card_reports_variants_margins_and_the_motion_head() -> None:
    import copy
    import json
    from pathlib import Path

    from training.motion.card import model_card

    root = Path(__file__).resolve().parents[2]
    spec = json.loads((root / "models" / "motion" / "1.0.0" / "model.json").read_text())
    card = model_card(spec)
    assert "## Variants (same scans, same seed)" in card
    assert "plain (shipped)" in card
    assert "95% intervals (Clopper-Pearson)" in card
    assert card == (root / "models" / "motion" / "1.0.0" / "MODEL_CARD.md").read_text()
    head = copy.deepcopy(spec)
    head["input"]["motion_head"] = True
    head["metrics"]["held_out_simulated"]["motion_head"] = {
        "spearman_vs_motion": 0.9, "median_factor": 1.2, "p90_factor": 1.8,
        "grade_from_estimate_accuracy": 0.7}
    text = model_card(head)
    assert "Motion head (`motion_magnitude` finding, um): Spearman 0.900" in text
    assert "A fifth output regresses" in text
