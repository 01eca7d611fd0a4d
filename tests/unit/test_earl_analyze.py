"""EARL error analysis (training.earl.analyze) and the model card's Error analysis section."""

from __future__ import annotations

import math
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qcd.analyzers.earl import phantom as ph
from qcd.analyzers.earl.decision import Thresholds
from qcd.analyzers.earl.model import EarlModel
from qcd.analyzers.earl.phantom import ReconParams, RecoveryCoefficients
from qcd.bundles import SHIPPED_MODELS, load_bundle
from qcd.hashing import sha256_file
from training.earl import analyze as an
from training.earl import simulate as sim
from training.earl.card import model_card
from training.earl.cases import LABELS, Case, case_tasks, split
from training.earl.train import case_metrics, save_bundle

D = tuple(float(d) for d in ph.SPHERE_DIAMETERS_MM)
EARL1_MID = ([1.055, 1.02, 0.96, 0.87, 0.72, 0.455], [0.825, 0.785, 0.705, 0.65, 0.52, 0.35])
EARL2_MID = ([1.17, 1.135, 1.165, 1.19, 1.035, 0.70], [0.925, 0.895, 0.895, 0.865, 0.745, 0.50])
SHIPPED = SHIPPED_MODELS / "earl" / "1.0.0"


def rc_of(rc_max: list[float], rc_mean: list[float], cov: float = 0.05) -> RecoveryCoefficients:
    return RecoveryCoefficients(D, tuple(rc_max), tuple(rc_mean), tuple(rc_mean), cov, 1.0)


def result(label: str, source: str, p_earl: float, relabels: tuple[str, ...],
           rc: RecoveryCoefficients, in_plane: float) -> an.CaseResult:
    params = ReconParams((3.0, in_plane, in_plane), 7.0, 0.1, 0.05)
    return an.CaseResult(label, 0, 1, source, 1, params, rc, p_earl, 0.5, relabels)


def four_cases() -> list[an.CaseResult]:
    between = rc_of([*EARL1_MID[0][:5], 0.60], EARL1_MID[1])  # 10 mm RCmax above EARL1
    return [
        result("clinical", "prior", 0.1, ("clinical",) * 4, rc_of(*EARL1_MID, cov=0.2), 2.0),
        result("clinical", "EARL1", 0.7, ("EARL1", "EARL1", "clinical", "clinical"), between,
               2.0),
        result("EARL1", "EARL1", 0.9, ("EARL1", "EARL1", "EARL1", "clinical"), rc_of(*EARL1_MID),
               4.0),
        result("EARL2", "EARL2", 0.3, ("clinical", "clinical", "clinical", "EARL2"),
               rc_of(*EARL2_MID), 4.0),
    ]


# --- rebuilding the cases ----------------------------------------------------------------------

def _split_before_refactor(cases: list[Case], seed: int, test_fraction: float
                           ) -> tuple[list[Case], list[Case]]:
    """train.split as it was when models/earl/1.0.0 was trained (the reference)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in LABELS:
        group = [c for c in cases if c.label == label]
        order = rng.permutation(len(group))
        n_test = max(1, int(round(test_fraction * len(group))))
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test


def test_split_is_unchanged_by_the_index_refactor() -> None:
    empty = np.zeros(0, np.float16)
    cases = [Case(empty, empty, label, {"seed": seed}) for seed, label in case_tasks(40, 3)]
    assert split(cases, 3, 0.2) == _split_before_refactor(cases, 3, 0.2)


def test_bundle_tasks_rebuild_the_shipped_held_out_set() -> None:
    spec = json.loads((SHIPPED / "model.json").read_text())
    test = an.bundle_tasks(spec)
    assert len(test) == 270 and len({t.seed for t in test}) == 270
    clinical = sorted(t.index for t in test if t.label == "clinical")
    assert clinical[:8] == [6, 9, 10, 13, 17, 21, 33, 44]  # as the 87.0 % evaluation saw them
    seed = spec["training"]["seed"]
    assert all(t.seed == seed * 100_003 + 3 * t.index + LABELS.index(t.label) for t in test)
    train = an.bundle_tasks(spec, "train")
    assert len(train) == 1080 and not {t.seed for t in train} & {t.seed for t in test}
    head = an.balanced_head(test, 5)
    assert [t.label for t in head] == ["clinical", "EARL1", "EARL2", "clinical", "EARL1"]
    with pytest.raises(ValueError, match="held-out"):
        an.bundle_tasks({**spec, "training": {"seed": 1, "n_train_cases": 40, "n_test_cases": 0}})
    with pytest.raises(ValueError, match="split"):
        an.bundle_tasks(spec, "validation")


def test_proposal_source_reads_the_box_without_drawing() -> None:
    hard = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        before = rng.bit_generator.state
        source = an.proposal_source(rng, "clinical")
        assert rng.bit_generator.state == before
        p = sim.sample_params(rng, "clinical")
        if source != "prior":
            hard += 1
            box = sim.BOXES[source]
            assert box["fwhm_mm"][0] <= p.fwhm_mm <= box["fwhm_mm"][1]
            assert box["overshoot"][0] <= p.overshoot <= box["overshoot"][1]
            assert box["cov"][0] <= p.cov <= box["cov"][1]
    assert 40 <= hard <= 80  # HARD_NEGATIVE_FRACTION = 0.3 of 200
    assert an.proposal_source(np.random.default_rng(0), "EARL2") == "EARL2"
    assert an.proposal_source(np.random.default_rng(0), None) == "prior"


def test_sim2_adds_the_over_smoothed_negatives_and_sim1_is_unchanged() -> None:
    """sim-2 proposes clinical near misses from three boxes (45%), one of them too blurry
    for EARL1; sim-1 draws exactly what it drew before the scheme had a name."""
    sources: dict[str, int] = {}
    for seed in range(300):
        rng = np.random.default_rng(seed)
        source = an.proposal_source(rng, "clinical", "sim-2")
        p = sim.sample_params(rng, "clinical", "sim-2")
        sources[source] = sources.get(source, 0) + 1
        if source != "prior":
            box = {**sim.BOXES, "blurry": sim.BLURRY_BOX}[source]
            assert box["fwhm_mm"][0] <= p.fwhm_mm <= box["fwhm_mm"][1]
            assert box["overshoot"][0] <= p.overshoot <= box["overshoot"][1]
            assert box["cov"][0] <= p.cov <= box["cov"][1]
        legacy = sim.sample_params(np.random.default_rng(seed), "clinical")
        assert legacy == sim.sample_params(np.random.default_rng(seed), "clinical", "sim-1")
    assert set(sources) == {"prior", "EARL1", "EARL2", "blurry"}
    assert 105 <= 300 - sources["prior"] <= 165  # 45% of 300 = 135
    assert sim.sample_params(np.random.default_rng(3), "EARL1", "sim-2") == sim.sample_params(
        np.random.default_rng(3), "EARL1", "sim-1")  # only clinical proposals differ
    with pytest.raises(ValueError, match="unknown EARL sampler 'sim-9'"):
        sim.sample_params(np.random.default_rng(0), "clinical", "sim-9")


def test_sim3_splits_the_resolution_into_system_and_post_filter() -> None:
    """sim-3 proposes what sim-2 does, plus a post-filter that smooths the noise:
    sqrt(f^2 - system^2) with the system part in SYSTEM_FWHM_MM (or all of f when f is
    sharper); sim-1 and sim-2 keep the 0.8-voxel grain (noise_fwhm_mm 0)."""
    filtered = 0
    for seed in range(200):
        p3 = sim.sample_params(np.random.default_rng(seed), "clinical", "sim-3")
        p2 = sim.sample_params(np.random.default_rng(seed), "clinical", "sim-2")
        assert (p3.fwhm_mm, p3.overshoot, p3.cov, p3.voxel_mm) == (
            p2.fwhm_mm, p2.overshoot, p2.cov, p2.voxel_mm)
        assert p2.noise_fwhm_mm == 0.0
        system = math.sqrt(p3.fwhm_mm ** 2 - p3.noise_fwhm_mm ** 2)
        if p3.noise_fwhm_mm > 0:
            filtered += 1
            assert sim.SYSTEM_FWHM_MM[0] - 1e-9 <= system <= sim.SYSTEM_FWHM_MM[1] + 1e-9
        else:
            assert p3.fwhm_mm <= sim.SYSTEM_FWHM_MM[1]
    assert filtered > 100
    assert sim.negative_boxes("sim-3") == sim.negative_boxes("sim-2")
    spec = json.loads((SHIPPED / "model.json").read_text())
    spec["training"]["sampler"] = "sim-3"
    assert "post-filter that smooths the noise as well" in model_card(spec)
    assert "post-filter that smooths" not in model_card({**spec, "training": {
        **spec["training"], "sampler": "sim-2"}})


def test_recording_proposals_changes_no_draw() -> None:
    plain = sim._sample_labelled(np.random.default_rng(11), "clinical")
    sources: list[str] = []
    original = sim.sample_params
    with an.recording_proposals(sources):
        recorded = sim._sample_labelled(np.random.default_rng(11), "clinical")
    assert sim.sample_params is original
    assert recorded[0] == plain[0] and recorded[2] == plain[2] == len(sources)


# --- the summary -------------------------------------------------------------------------------

def test_rc_group_places_clinical_phantoms() -> None:
    assert an.rc_group(rc_of(*EARL1_MID)) == "inside EARL1"
    assert an.rc_group(rc_of(*EARL1_MID, cov=0.2)) == "background COV > 15%"
    assert an.rc_group(rc_of([*EARL1_MID[0][:5], 0.60], EARL1_MID[1])) == "between the bands"
    blurry = rc_of([*EARL1_MID[0][:5], 0.30], EARL1_MID[1])  # 10 mm below EARL1
    assert an.rc_group(blurry) == "too blurry (< EARL1)"
    sharp = rc_of([1.35, *EARL2_MID[0][1:]], EARL2_MID[1])  # 37 mm above EARL2
    assert an.rc_group(sharp) == "too sharp or noisy (> EARL2)"


def test_summary_stability_and_ceiling_by_hand() -> None:
    s = an.summarise(four_cases(), Thresholds())
    assert s["stage1"] == {"n": 4, "correct": 2, "errors": 2, "accuracy": 0.5}
    assert s["stage1_errors"]["clinical_called_earl"]["EARL1"] + s["stage1_errors"][
        "clinical_called_earl"]["indeterminate"] == 1
    assert s["stage1_errors"]["earl_called_clinical"] == {"EARL1": 0, "EARL2": 1}
    c = s["ceiling"]
    # majorities: clinical, split (counts as clinical), EARL, clinical (wrong for the EARL2)
    assert (c["correct"], c["split_votes"], c["errors_allowed_by_target"]) == (3, 1, 0)
    assert c["single_relabel"] == pytest.approx((1 + 0.5 + 0.75 + 0.25) / 4)
    assert c["target_reachable"] is False and c["ci95"][0] < 0.75 < c["ci95"][1]
    assert s["labels"]["unstable"] == 3 and s["labels"]["errors_with_stable_labels"] == 0
    subsets = {r["subset"]: (r["n"], r["correct"]) for r in s["subsets"]}
    assert subsets["stable labels"] == (1, 1) and subsets["no hard negatives"] == (3, 2)
    assert subsets["P(EARL) outside [0.2, 0.8)"] == (2, 2)
    assert subsets["P(EARL) outside [0.1, 0.9)"] == (1, 1)
    assert [(r["in_plane_mm"], r["n"], r["correct"]) for r in s["by_voxel"]] == [
        (2.0, 2, 1), (4.0, 2, 1)]
    groups = {g["group"]: (g["n"], g["errors"]) for g in s["clinical_by_group"]}
    assert groups["between the bands"] == (1, 1) and groups["background COV > 15%"] == (1, 0)
    hard = {g["source"]: (g["n"], g["errors"], g["stability"]) for g in s["clinical_by_source"]}
    assert hard["EARL1"] == (1, 1, 0.5) and hard["prior"] == (1, 0, 1.0)
    assert sum(r["n"] for r in s["by_margin"]) == 4
    assert s["confusion"] == case_metrics([r.label for r in four_cases()],
                                          [(r.p_earl, r.p_earl2) for r in four_cases()],
                                          Thresholds())["confusion"]
    json.dumps(s)  # JSON-ready


def test_summary_without_relabels_leaves_out_stability() -> None:
    cases = [an.CaseResult(**{**vars(r), "relabels": ()}) for r in four_cases()]
    s = an.summarise(cases, Thresholds())
    assert s["relabels"] == 0 and s["ceiling"] is None and s["labels"] is None
    assert [r["subset"] for r in s["subsets"]] == [
        "all", "no hard negatives", "P(EARL) outside [0.2, 0.8)", "P(EARL) outside [0.1, 0.9)"]
    assert "relabels of the true" not in an.error_analysis_tables(s)


def test_case_result_round_trips_through_json() -> None:
    r = four_cases()[1]
    d = json.loads(json.dumps(r.to_dict(Thresholds())))
    assert d["hard_negative"] and d["group"] == "between the bands" and d["stability"] == 0.5
    assert d["rc_margin"] == pytest.approx(-0.03) and d["predicted"] == "indeterminate"
    assert an.CaseResult.from_dict(d) == r


# --- the card ----------------------------------------------------------------------------------

def _block(summary: dict[str, Any]) -> dict[str, Any]:
    return {"held_out": {"command": "python -m training.earl.analyze --bundle b --out r.json",
                         "summary": summary},
            "training_cases": {"command": "c", "summary": an.summarise(four_cases()[:3],
                                                                         Thresholds())}}


def test_card_emits_the_error_analysis_section_only_with_the_block() -> None:
    spec = json.loads((SHIPPED / "model.json").read_text())
    spec.pop("error_analysis", None)
    assert "## Error analysis" not in model_card(spec)
    spec["error_analysis"] = _block(an.summarise(four_cases(), Thresholds()))
    card = model_card(spec)
    section = card.split("## Error analysis", 1)[1].split("## CPU / GPU parity")[0]
    assert "`python -m training.earl.analyze --bundle b --out r.json`" in section
    assert "**The stage-1 target cannot be met on this held-out set**" in section
    assert "3 of 4 cases: **75.0%**" in section
    assert "| between the bands | 1 | 1 | 0 |" in section
    assert "Stage 1 is 66.7% (2/3) on its own training cases (`c`)." in section  # > held-out
    assert "Label noise explains part of them" in section  # no error has a stable label
    assert "regression heads" in section
    assert "cap stage 1 at about 75.0%" in card.split("## Error analysis")[0]


def test_physest_card_has_its_own_error_analysis_and_next_steps() -> None:
    spec = json.loads((SHIPPED_MODELS / "earl" / "2.1.0" / "model.json").read_text())
    spec.pop("error_analysis", None)
    assert "## Error analysis" not in model_card(spec)
    assert "the majority of eight 98.9% (1.0.0 card" in model_card(spec)  # borrowed scale
    spec["error_analysis"] = _block(an.summarise(four_cases(), Thresholds()))
    card = model_card(spec)
    section = card.split("## Error analysis", 1)[1].split("## CPU / GPU parity")[0]
    assert "3 of 4 cases: **75.0%**" in section and "labels that repeat" in section
    assert "regression heads" not in section and "GPU retraining" not in section
    assert "a measurable target" in section
    assert "the majority of 4 such labellings 75.0% (Error analysis)" in card


def test_shipped_card_is_what_card_py_writes_and_weights_are_untouched() -> None:
    spec = json.loads((SHIPPED / "model.json").read_text())
    assert (SHIPPED / "MODEL_CARD.md").read_text() == model_card(spec)
    card = model_card(spec)
    assert "**98.9%** (95% CI 96.8%-99.8%" in card and "267 of 270 cases" in card
    assert "**The stage-1 target cannot be met on this held-out set**" in card
    assert "The model underfits: stage 1 is 86.9% (173/199)" in card
    assert "| between the bands | 21 | 14 | 10 |" in card
    assert "| no_psf_6_8mm_filter | 60 | EARL1 24, clinical 36 | 7.6-9.9 | 48.3% | 48.3% |" in card
    assert load_bundle(SHIPPED_MODELS, "earl", "1.0.0").sha256 == spec["sha256"]


# --- end to end on a tiny bundle ---------------------------------------------------------------

def test_analyze_cli_on_a_tiny_bundle(tmp_path: Path) -> None:
    """Three simulated cases, two relabels each, through main(); about 20 s on one core."""
    torch.manual_seed(0)
    out = tmp_path / "earl" / "0.0.1"
    training = {"seed": 7, "epochs": 1, "n_train_cases": 6, "n_test_cases": 3,
                "trained_on": "cpu", "seconds": 0.0, "command": "test"}
    metrics = case_metrics(list(LABELS), [(0.2, 0.5), (0.7, 0.2), (0.7, 0.8)], Thresholds())
    save_bundle(out, EarlModel("edgenet"), "edgenet", training, {"held_out_simulated": metrics},
                model_card)
    sha = sha256_file(out / "weights.pt")
    report = tmp_path / "r.json"
    assert an.main(["--bundle", str(out), "--relabels", "2", "--out", str(report),
                    "--write-bundle"]) == 0
    r = json.loads(report.read_text())
    assert r["bundle"]["version"] == "0.0.1" and len(r["cases"]) == 3
    assert sorted(c["label"] for c in r["cases"]) == sorted(LABELS)
    for c in r["cases"]:
        assert len(c["relabels"]) == 2 and 0.0 <= c["stage1_stability"] <= 1.0
        assert c["seed"] == 7 * 100_003 + 3 * c["index"] + LABELS.index(c["label"])
        assert c["predicted"] in (*LABELS, "indeterminate") and isinstance(c["rc_margin"], float)
        assert c["source"] in ("prior", "EARL1", "EARL2")
        if c["label"] != "clinical":
            assert c["rc_margin"] >= -1e-9 and c["group"] == f"inside {c['label']}"
        elif c["rc"]["background_cov"] <= ph.MAX_BACKGROUND_COV:
            assert c["rc_margin"] <= 1e-9
    s = r["summary"]
    assert s["relabels"] == 2 and s["ceiling"]["n"] == 3
    assert 0.0 <= s["ceiling"]["accuracy"] <= 1.0 and s["labels"]["stability_mean"] is not None
    assert "| majority of 2 fresh physics relabels" in report.with_suffix(".md").read_text()
    spec = json.loads((out / "model.json").read_text())
    assert spec["error_analysis"]["held_out"]["summary"] == s
    assert sha256_file(out / "weights.pt") == sha == spec["sha256"]
    assert "## Error analysis" in (out / "MODEL_CARD.md").read_text()
    assert s["against_majority"]["n"] == 3
    # summarised again from the report: no simulation, the same summary and bundle block
    again = tmp_path / "again.json"
    assert an.main(["--bundle", str(out), "--from-report", str(report), "--out", str(again),
                    "--write-bundle"]) == 0
    assert json.loads(again.read_text())["summary"] == s
    assert json.loads((out / "model.json").read_text())["error_analysis"]["held_out"] == {
        k: r[k] for k in ("command", "date", "seconds", "workers", "summary")}
    # a copy under another version (a re-tuned bundle shares its source's weights)
    other = tmp_path / "earl" / "0.0.2"
    shutil.copytree(out, other)
    spec = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**spec, "version": "0.0.2"}))
    assert an.main(["--bundle", str(other), "--from-report", str(report), "--out",
                    str(tmp_path / "other.json"), "--write-bundle"]) == 0
    block = json.loads((other / "model.json").read_text())["error_analysis"]["held_out"]
    assert block["cases_from"] == r["command"] and block["summary"] == s
    assert block["command"].endswith(f"--from-report {report.name}")
    assert "from the report of `" in (other / "MODEL_CARD.md").read_text()
    with pytest.raises(SystemExit):  # the report of another split
        an.main(["--bundle", str(out), "--from-report", str(report), "--split", "train",
                 "--out", str(again)])
    with pytest.raises(SystemExit):
        an.main(["--bundle", str(out), "--limit", "1", "--out", str(report), "--write-bundle"])


def test_physest_case_is_rebuilt_and_classified_as_its_trainer_did() -> None:
    """The physics-estimate branch: the held-out EARL1 case of the shipped 2.1.0 bundle is
    simulated with its seed and run through classify_volume (the numbers are those of the
    trainer's held-out evaluation of this case); about 10 s on one core."""
    bundle_dir = SHIPPED_MODELS / "earl" / "2.1.0"
    task = an.balanced_head(an.bundle_tasks(json.loads(
        (bundle_dir / "model.json").read_text())), 2)[1]
    r = an.analyze_case(task, str(bundle_dir), 1)
    assert (r.label, r.seed, r.source) == ("EARL1", 2026181483832, "EARL1")
    assert r.params.fwhm_mm == pytest.approx(8.992743204367429, abs=1e-9)
    assert (r.p_earl, r.p_earl2) == (0.25, 0.0)  # 4 of 16 phantom draws compliant, all EARL1
    assert len(r.relabels) == 1 and r.relabels[0] in LABELS
