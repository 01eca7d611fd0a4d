"""The physics-estimate EARL method: image features, the parameter regressor, the
virtual phantom, and the shipped ``physest`` bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qcd.analyzers.earl import physest
from qcd.analyzers.earl.analyzer import classify_volume, load_model
from qcd.analyzers.earl.features import (
    BAND_MM,
    ESF_MM,
    FEATURE_NAMES,
    N_FEATURES,
    central_band,
    image_features,
)
from qcd.analyzers.earl.phantom import ReconParams, apply_recon
from qcd.bundles import SHIPPED_MODELS, load_bundle
from qcd.errors import InferenceError
from training.earl.card import model_card
from training.earl import physest as trainer
from training.earl.physest import fit_params, predict, residual_stats
from training.earl.simulate import REGRESSION_BOXES, simulate_unlabelled

SPACING = (3.0, 3.0, 3.0)
N_ESF = len(ESF_MM)
ESF_MEDIAN = slice(N_FEATURES - 2 * N_ESF, N_FEATURES - N_ESF)


def _body(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """A uniform ellipsoidal 'patient' (SUV 1) in air, 60 x 40 x 40 voxels."""
    shape = (60, 40, 40)
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)],
                          indexing="ij")
    inside = (z / 75.0) ** 2 + (y / 45.0) ** 2 + (x / 45.0) ** 2 <= 1.0
    return inside.astype(np.float32)


def _recon(fwhm: float, overshoot: float = 0.0, cov: float = 0.0, seed: int = 0) -> np.ndarray:
    params = ReconParams(SPACING, fwhm, overshoot, cov)
    return apply_recon(_body(), params, np.random.default_rng(seed))


def _esf_width(features: np.ndarray) -> float:
    """Distance (mm) from the 80 % to the 20 % level of the median edge spread."""
    esf = features[ESF_MEDIAN]
    return float(np.interp(0.2, esf[::-1], ESF_MM[::-1]) - np.interp(0.8, esf[::-1],
                                                                      ESF_MM[::-1]))


def test_features_have_the_documented_shape_and_are_deterministic() -> None:
    volume = _recon(6.0, cov=0.05)
    a, b = image_features(volume, SPACING), image_features(volume, SPACING)
    assert a.shape == (N_FEATURES,) and len(FEATURE_NAMES) == N_FEATURES
    assert a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert a[FEATURE_NAMES.index("slice_mm")] == 3.0


def test_edge_spread_widens_with_the_resolution() -> None:
    widths = [_esf_width(image_features(_recon(f), SPACING)) for f in (4.0, 7.0, 10.0)]
    assert widths[0] < widths[1] < widths[2], widths
    # a Gaussian edge: 80 % -> 20 % spans 2 * 0.8416 sigma = 0.715 FWHM (plus voxel blur)
    assert 0.6 * 7.0 < widths[1] < 1.0 * 7.0, widths


def test_overshoot_dips_the_edge_below_zero_outside_the_body() -> None:
    plain = image_features(_recon(6.0), SPACING)[ESF_MEDIAN]
    ringing = image_features(_recon(6.0, overshoot=0.4), SPACING)[ESF_MEDIAN]
    outside = ESF_MM >= 4
    assert ringing[outside].min() < plain[outside].min() - 0.02


def test_noise_feature_follows_the_cov() -> None:
    low = image_features(_recon(6.0, cov=0.05, seed=1), SPACING)[0]
    high = image_features(_recon(6.0, cov=0.10, seed=1), SPACING)[0]
    assert 1.7 < high / low < 2.3, (low, high)


def test_a_wide_field_of_view_is_cut_to_the_training_band_about_the_body() -> None:
    wide = np.zeros((10, 300, 400), np.float32)  # 2 mm voxels: 600 x 800 mm
    wide[:, 100:200, 250:330] = 1.0  # body centred at y 149.5, x 289.5 voxels
    band = central_band(wide, (3.0, 2.0, 2.0))
    assert band.shape == (10, round(BAND_MM[0] / 2), round(BAND_MM[1] / 2))
    assert band.sum() == wide.sum()  # the whole body is kept, centred
    fits = np.ones((10, 130, 80), np.float32)
    assert central_band(fits, (3.0, 2.0, 2.0)).shape == fits.shape  # simulated size: kept


def test_no_body_is_a_clear_error() -> None:
    with pytest.raises(InferenceError, match="no body"):
        image_features(np.zeros((40, 40, 40), np.float32), SPACING)
    with pytest.raises(InferenceError, match="3-D"):
        image_features(np.zeros((40, 40), np.float32), SPACING)


def test_param_net_fits_and_keeps_its_normalisation_in_the_state_dict() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32) * 10 + 5
    y = np.stack([6 + 0.2 * x[:, 0], 0.2 + 0.01 * x[:, 1], 0.08 + 0.002 * x[:, 2]], 1)
    net = fit_params(x, y.astype(np.float32), seed=0, epochs=300)
    stats = residual_stats(predict(net, x), y)
    assert stats["fwhm_mm"]["mae"] < 0.3 * float(np.abs(y[:, 0] - y[:, 0].mean()).mean())
    clone = physest.ParamNet(6)
    clone.load_state_dict(net.state_dict())
    clone.eval()
    with torch.inference_mode():
        np.testing.assert_allclose(clone(torch.from_numpy(x[:5])).numpy(),
                                   predict(net, x[:5]), rtol=1e-6)


@pytest.mark.parametrize(("estimate", "voxel", "expect"), [
    ({"fwhm_mm": 3.5, "overshoot": 0.4, "cov": 0.06}, (2.0, 2.0, 2.0), "clinical"),  # too sharp
    ({"fwhm_mm": 7.0, "overshoot": 0.1, "cov": 0.25}, (3.0, 4.0, 4.0), "clinical"),  # noisy
    ({"fwhm_mm": 8.0, "overshoot": 0.05, "cov": 0.05}, (4.0, 4.0, 4.0), "EARL1"),
    ({"fwhm_mm": 6.0, "overshoot": 0.2, "cov": 0.05}, (2.0, 2.7, 2.7), "EARL2"),
])
def test_virtual_phantom_classifies_like_the_bands(estimate: dict[str, float],
                                                   voxel: tuple[float, float, float],
                                                   expect: str) -> None:
    sd = {"fwhm_mm": 0.2, "overshoot": 0.02, "cov": 0.003}
    verdict = physest.virtual_phantom(estimate, voxel, sd, draws=8)
    assert sum(verdict.counts.values()) == 8
    if expect == "clinical":
        assert verdict.p_earl <= 0.25, verdict
    else:
        assert verdict.p_earl >= 0.75, verdict
        assert (verdict.p_earl2 >= 0.75) == (expect == "EARL2"), verdict
    again = physest.virtual_phantom(estimate, voxel, sd, draws=8)
    assert again == verdict  # fixed seed: a series always gets the same answer


def test_estimates_are_clipped_to_what_the_phantom_accepts() -> None:
    est = physest.as_params([-3.0, 2.0, -0.1])
    assert est == {"fwhm_mm": 2.0, "overshoot": 1.0, "cov": 0.002}
    with pytest.raises(ValueError, match="draws"):
        physest.virtual_phantom(est, SPACING, {}, draws=0)


PHYSEST = [p.parent.name for p in sorted((SHIPPED_MODELS / "earl").glob("*/model.json"))
           if json.loads(p.read_text()).get("architecture") == physest.ARCHITECTURE]


@pytest.mark.parametrize("version", PHYSEST)
def test_shipped_physest_bundle_card_and_estimate(version: str) -> None:
    """The card is the one model.json makes, and the estimate of a simulated
    reconstruction lands near the truth (the card's held-out MAE is ~0.1-0.2 mm)."""
    from training.earl.simulate import render_body

    bundle = load_bundle(SHIPPED_MODELS, "earl", version)
    assert (bundle.path / "MODEL_CARD.md").read_text() == model_card(bundle.spec)
    assert isinstance(load_model(bundle), physest.ParamNet)
    params = ReconParams((3.0, 4.0, 4.0), 7.5, 0.1, 0.06)
    rng = np.random.default_rng(11)
    volume = apply_recon(render_body(params, rng, shape_mm=(800.0, 260.0, 160.0)), params, rng)
    result = classify_volume(volume, params.voxel_mm, bundle)
    assert result.estimate is not None
    assert abs(result.estimate["fwhm_mm"] - 7.5) < 1.0, result.estimate
    assert abs(result.estimate["cov"] - 0.06) < 0.015, result.estimate
    assert 0.0 <= result.p_earl <= 1.0 and result.p_earl2 is not None
    assert sum(result.details["phantom_draws"].values()) == physest.DRAWS


def test_a_physest_bundle_is_found_in_the_shipped_models() -> None:
    assert PHYSEST, "no physest EARL bundle shipped"


def test_stage1_threshold_is_tuned_on_training_estimates_ties_to_the_highest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """P(EARL) stands in as the first estimate column: EARL cases at 0.3, clinical at 0.1,
    so every threshold in (0.1, 0.3] separates them; the highest such grid point wins."""
    monkeypatch.setattr(trainer, "phantom_p_earl",
                        lambda job, sd, rng_scheme="sequential": job[0][0])
    labels = ["EARL1", "clinical"] * 10
    estimates = np.array([[0.3, 0, 0], [0.1, 0, 0]] * 10)
    tuned = trainer.tune_stage1(labels, estimates, [[3.0, 3.0, 3.0]] * 20, {}, seed=0,
                                workers=1, n=20)
    assert tuned["chosen"] == 0.3 and tuned["cases"] == 20
    assert tuned["stage1_accuracy_by_threshold"]["0.10"] == 0.5
    assert tuned["stage1_accuracy_by_threshold"]["0.35"] == 0.5


def test_unlabelled_regression_cases_cover_the_widened_prior_and_are_reproducible() -> None:
    volume, params = simulate_unlabelled(np.random.default_rng([7, trainer.EXTRA_STREAM, 0]))
    again, same = simulate_unlabelled(np.random.default_rng([7, trainer.EXTRA_STREAM, 0]))
    assert same == params and np.array_equal(volume, again)
    assert volume.dtype == np.float32 and volume.shape[1] == round(260.0 / params.voxel_mm[1])
    lo = {k: min(box[k][0] for box in REGRESSION_BOXES) for k in ("fwhm_mm", "overshoot", "cov")}
    hi = {k: max(box[k][1] for box in REGRESSION_BOXES) for k in lo}
    assert all(lo[k] <= getattr(params, k) <= hi[k] for k in lo)
    assert hi["fwhm_mm"] > 10.0, "the regression prior must reach past the EARL1 edge"


def test_out_of_fold_trains_every_fold_on_the_extra_cases_and_predicts_only_labelled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[tuple[int, int]] = []
    real_fit = trainer.fit_params

    def fit(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = trainer.EPOCHS
            ) -> physest.ParamNet:
        sizes.append((len(x), epochs))
        return real_fit(x, y, seed, epochs=epochs)

    monkeypatch.setattr(trainer, "fit_params", fit)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(50, 3)).astype(np.float32)
    extra = (rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32))
    pred = trainer.out_of_fold(x, y, seed=0, extra=extra, epochs=5)
    assert pred.shape == y.shape and np.all(pred != 0)
    assert sizes == [(40 + 7, 5)] * trainer.FOLDS


def test_per_draw_phantom_gives_the_same_answer_on_any_number_of_threads() -> None:
    estimate = {"fwhm_mm": 8.2, "overshoot": 0.05, "cov": 0.05}
    sd = {"fwhm_mm": 0.3, "overshoot": 0.02, "cov": 0.002}
    one = physest.virtual_phantom(estimate, (4.0, 4.0, 4.0), sd, draws=6, rng_scheme="per-draw")
    many = physest.virtual_phantom(estimate, (4.0, 4.0, 4.0), sd, draws=6,
                                   rng_scheme="per-draw", threads=4)
    assert one == many and sum(one.counts.values()) == 6


def test_the_phantom_rng_scheme_comes_from_the_bundle_and_is_validated() -> None:
    assert physest.rng_scheme({}) == "sequential"
    assert physest.rng_scheme({"phantom": {"rng": "per-draw"}}) == "per-draw"
    with pytest.raises(ValueError, match="unknown phantom rng scheme"):
        physest.rng_scheme({"phantom": {"rng": "dice"}})
    with pytest.raises(ValueError, match="unknown phantom rng scheme"):
        physest.virtual_phantom({"fwhm_mm": 8.0, "overshoot": 0.0, "cov": 0.05},
                                (4.0, 4.0, 4.0), {}, draws=1, rng_scheme="dice")
