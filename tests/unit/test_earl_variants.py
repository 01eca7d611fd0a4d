"""EARL preprocessing versions, voxel-size input, auxiliary outputs and ``--variants``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qcd.analyzers.earl import preprocess as pre
from qcd.analyzers.earl.model import (
    AUX_TARGETS,
    EarlModel,
    EdgeNet,
    aux_estimates,
    aux_targets,
)

ROOT = Path(__file__).resolve().parents[2]


def _body(shape: tuple[int, int, int]) -> np.ndarray:
    """A box of activity with sharp edges on a low background (SUV-like)."""
    v = np.full(shape, 0.5, np.float32)
    z, y, x = shape
    v[z // 4:3 * z // 4, y // 4:3 * y // 4, x // 4:3 * x // 4] = 5.0
    return v


def test_versions_cut_slices_from_their_own_grid() -> None:
    vol, spacing = _body((120, 60, 60)), (2.0, 2.0, 2.0)
    s1, idx1, s2, idx2 = pre.prepare(vol, spacing, "earl-pre-1")
    n1, *_ = pre.prepare(vol, spacing, "earl-pre-2")
    native, nidx, _, _ = pre.prepare(vol, spacing, "earl-pre-3")
    assert s1.shape == n1.shape == native.shape == (pre.N_SLICES, 1, *pre.SLICE_SHAPE)
    # 60 voxels of 2 mm -> 40 on the 3 mm grid; the native grid keeps 60
    assert idx1.max() < 40 and nidx.min() >= 60 // 2 - pre.N_SLICES
    assert pre.grid_spacing("earl-pre-1", spacing) == (3.0, 3.0, 3.0)
    assert pre.grid_spacing("earl-pre-3", spacing) == spacing
    # the cubic spline keeps more of the 2 mm edges than linear resampling does
    assert np.abs(n1).sum() > np.abs(s1).sum()
    with pytest.raises(ValueError, match="unknown EARL preprocessing 'earl-pre-9'"):
        pre.prepare(vol, spacing, "earl-pre-9")


def test_on_a_3mm_series_grid_versions_agree() -> None:
    vol, spacing = _body((80, 40, 40)), (3.0, 3.0, 3.0)
    a = pre.prepare(vol, spacing, "earl-pre-1")[0]
    for version in ("earl-pre-2", "earl-pre-3"):
        np.testing.assert_array_equal(pre.prepare(vol, spacing, version)[0], a)


def test_voxel_channels_and_model_inputs_follow_the_bundle_spec() -> None:
    vol, spacing = _body((100, 50, 50)), (2.5, 4.0, 4.0)
    plain = pre.model_inputs(vol, spacing, {"preprocessing": "earl-pre-1"})[0]
    assert plain.shape[1] == 1
    s1 = pre.model_inputs(vol, spacing, {"preprocessing": "earl-pre-1",
                                         "input": {"voxel_input": True}})[0]
    assert s1.shape[1] == 3
    np.testing.assert_array_equal(s1[:, :1], plain)
    assert np.all(s1[:, 1] == pytest.approx(4.0 / pre.VOXEL_SCALE_MM))
    assert np.all(s1[:, 2] == pytest.approx(2.5 / pre.VOXEL_SCALE_MM))


def test_edge_net_options_and_the_old_state_dict() -> None:
    shipped = torch.load(ROOT / "models/earl/1.0.0/weights.pt", weights_only=True)
    EarlModel("edgenet").load_state_dict(shipped)  # the default layout is unchanged
    x = torch.zeros(4, 3, *pre.SLICE_SHAPE)
    x[:, 1:] = 1.0
    for voxel_input, aux, outputs in ((False, False, 2), (True, False, 2), (True, True, 5)):
        net = EdgeNet(voxel_input=voxel_input, aux=aux).eval()
        with torch.no_grad():
            out = net(x if voxel_input else x[:, :1])
        assert out.shape == (4, outputs)
    net = EdgeNet(voxel_input=True).eval()
    with torch.no_grad():  # the voxel planes reach the head
        a, b = net(x), net(torch.cat([x[:, :1], 2 * x[:, 1:]], dim=1))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="EdgeNet options"):
        EarlModel("paper", voxel_input=True)


def test_aux_targets_round_trip_through_the_estimate() -> None:
    t = aux_targets(7.5, 0.3, 0.06)
    assert len(t) == len(AUX_TARGETS)
    out = torch.tensor([[0.0, 0.0, *t], [1.0, -1.0, *t]])
    est = aux_estimates(out)
    assert est is not None
    assert est["fwhm_mm"] == pytest.approx(7.5) and est["overshoot"] == pytest.approx(0.3)
    assert est["cov"] == pytest.approx(0.06) and math.isfinite(est["cov"])
    assert aux_estimates(out[:, :2]) is None


def test_variant_names() -> None:
    from training.earl.cases import Variant

    v = Variant.parse("pre3+vox+aux")
    assert (v.architecture, v.preprocessing, v.voxel_input, v.aux) == (
        "edgenet", "earl-pre-3", True, True)
    assert Variant.parse("paper").architecture == "paper"
    assert Variant.parse("edgenet").preprocessing == pre.PREPROCESSING_VERSION
    for bad in ("pre9", "edgenet+big", "paper+vox"):
        with pytest.raises(ValueError):
            Variant.parse(bad)


def test_variants_train_on_shared_cases_and_the_bundle_runs_in_the_analyzer(
        tmp_path: Path, cpu_runtime: Any) -> None:
    """Two variants on the same simulated cases; validation picks one; the written bundle
    runs through the analyzer with its own preprocessing, voxel input and auxiliary
    outputs (one tiny run on the CPU: the numbers mean nothing, the plumbing does)."""
    from qcd.analyzers.base import SeriesInput
    from qcd.analyzers.earl.analyzer import EarlAnalyzer
    from qcd.bundles import load_bundle
    from qcd.synth import write_pet_series
    from training.earl.simulate import simulate_case
    from training.earl.cases import Variant
    from training.earl.train import main

    torch.set_num_threads(1)
    out = tmp_path / "models" / "earl" / "1.0.0"
    assert main(["--n-per-class", "4", "--epochs", "1", "--workers", "1", "--device", "cpu",
                 "--variants", "pre2+vox+aux,pre3+vox+aux", "--val-fraction", "0.34",
                 "--test-fraction", "0.25", "--seed", "5", "--out", str(out)]) == 0
    spec = json.loads((out / "model.json").read_text())
    comparison = spec["architecture_comparison"]
    assert set(comparison) == {"pre2+vox+aux", "pre3+vox+aux"}
    assert all("validation" in c for c in comparison.values())
    t = spec["training"]
    assert t["n_val_cases"] == 3 and t["n_test_cases"] == 3 and t["n_train_cases"] == 6
    chosen = Variant.parse(t["chosen_variant"])
    assert Variant.from_spec(spec) == Variant(spec["architecture"], chosen.architecture,
                                              chosen.preprocessing, True, True)
    assert spec["preprocessing"] == chosen.preprocessing and spec["input"]["shape"][0] == 3
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Variants (same cases, same seed)" in card and "(shipped)" in card
    assert "reported as `earl_effective_fwhm`" in card

    volume, params, _, _ = simulate_case(np.random.default_rng(99), "EARL1")
    paths = write_pet_series(volume, params.voxel_mm, tmp_path / "pet")
    bundle = load_bundle(tmp_path / "models", "earl")
    findings = EarlAnalyzer().analyze(SeriesInput("1.2.3", "PT", tuple(paths)), bundle,
                                      cpu_runtime)
    found = {f.name: f for f in findings}
    assert found["earl_class"].value_text in ("clinical", "EARL1", "EARL2", "indeterminate")
    fwhm = found["earl_effective_fwhm"]
    assert fwhm.unit == "mm" and fwhm.value_num is not None and math.isfinite(fwhm.value_num)
    assert set(fwhm.payload or {}) >= {"overshoot", "noise_cov", "method"}
    x_mm = pre.grid_spacing(chosen.preprocessing, params.voxel_mm)[2]
    idx = found["earl_class"].payload["stage1_slices_mm"]  # type: ignore[index]
    assert all(abs(v / x_mm - round(v / x_mm)) < 1e-6 for v in idx)


def test_nested_subset_is_stratified_and_nested() -> None:
    from training.earl.cases import Case, nested_subset

    empty = np.zeros((1, 1, 1, 1), np.float16)
    cases = [Case(empty, empty, label, {"i": i})
             for i, label in enumerate(["clinical"] * 8 + ["EARL1"] * 4 + ["EARL2"] * 4)]
    quarter = nested_subset(cases, 0.25, seed=3)
    half = nested_subset(cases, 0.5, seed=3)
    assert [c.label for c in quarter].count("clinical") == 2
    assert [c.label for c in half].count("EARL1") == 2
    assert {id(c) for c in quarter} <= {id(c) for c in half}
    assert len(nested_subset(cases, 1.0, seed=3)) == len(cases)
    assert {c.params["i"] for c in nested_subset(cases, 0.5, seed=4)} != {
        c.params["i"] for c in half}
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            nested_subset(cases, bad, seed=3)


def test_train_fractions_record_a_learning_curve(tmp_path: Path) -> None:
    """Tiny CPU run: the curve's points use nested shares and the same held-out cases,
    its last point is the shipped model, and the card tables it. The run also records
    its proposal scheme (``--sampler``), which the error analysis reads back."""
    from training.earl.analyze import _sampler
    from training.earl.train import main

    torch.set_num_threads(1)
    out = tmp_path / "models" / "earl" / "1.0.0"
    assert main(["--n-per-class", "4", "--epochs", "1", "--workers", "1", "--device", "cpu",
                 "--train-fractions", "0.5", "--test-fraction", "0.25", "--seed", "5",
                 "--sampler", "sim-2", "--out", str(out)]) == 0
    spec = json.loads((out / "model.json").read_text())
    curve = spec["learning_curve"]
    assert [p["fraction"] for p in curve] == [0.5, 1.0]
    assert [p["n_train_cases"] for p in curve] == [6, 9]
    held_out = spec["metrics"]["held_out_simulated"]
    assert curve[-1]["stage1_accuracy"] == held_out["stage1_accuracy"]
    assert "--train-fractions 0.5 --sampler sim-2" in spec["training"]["command"]
    assert spec["training"]["sampler"] == "sim-2" and _sampler(str(out)) == "sim-2"
    card = (out / "MODEL_CARD.md").read_text()
    assert "Proposal scheme `sim-2`" in card
    assert "## Learning curve (same held-out cases)" in card
    assert "| 0.50 | 6 |" in card and "| 1.00 | 9 |" in card
    with pytest.raises(SystemExit):
        main(["--train-fractions", "0.5,2", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["--train-fractions", "0.5", "--real-labels", str(tmp_path / "x.csv"),
              "--out", str(out)])
