"""Simulated EARL training data: parameter draws, physics labels, anthropomorphic bodies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcd.analyzers.earl.phantom import LABELS, ReconParams, apply_recon, classify
from training.earl import simulate as sim


def test_sample_params_stay_in_the_prior() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = sim.sample_params(rng)
        assert p.voxel_mm[1] == p.voxel_mm[2] and p.voxel_mm[1] in sim.IN_PLANE_MM
        assert 2.0 <= p.voxel_mm[0] <= 4.0
        assert 3.0 <= p.fwhm_mm <= 10.0 and 0.0 <= p.overshoot <= 0.5 and 0.03 <= p.cov <= 0.20
    with pytest.raises(ValueError, match="label"):
        sim.sample_params(rng, "EARL3")


@pytest.mark.parametrize("label", LABELS)
def test_sample_labelled_returns_the_requested_physics_label(label: str) -> None:
    params, rc = sim.sample_labelled(np.random.default_rng(LABELS.index(label)), label)
    assert classify(rc) == label
    # an independent rendering (other sub-voxel positions and noise) agrees
    assert sim.label_params(params, np.random.default_rng(99))[0] == label


def test_render_body_grid_and_suv_ranges() -> None:
    params = ReconParams((3.0, 4.0, 4.0), 6.0, 0.2, 0.05)
    marks: dict[str, tuple[int, int, int]] = {}
    # wide and long enough that every organ centre lies in the field for any anatomy draw
    body = sim.render_body(params, np.random.default_rng(5), shape_mm=(1200.0, 260.0, 300.0),
                           landmarks=marks)
    assert body.shape == (400, 65, 75) and body.dtype == np.float32
    assert body.min() >= 0.0 and body.max() <= 50.0
    assert body[:, 0, 0].max() == 0.0  # air in the anterior right corner
    assert 1.8 <= body[marks["liver"]] <= 2.6
    assert 0.4 <= body[marks["lung-1"]] <= 0.6 and 0.4 <= body[marks["lung+1"]] <= 0.6
    assert 5.0 <= body[marks["bladder"]] <= 50.0
    assert 1.5 <= body[marks["blood_pool"]] <= 2.2
    assert marks["bladder"][0] < marks["liver"][0] < marks["lung-1"][0]  # index 0 is the feet end
    recon = apply_recon(body, params, np.random.default_rng(6))
    z, y, x = marks["liver"]
    assert 1.6 <= float(recon[z - 3:z + 4, y - 2:y + 3, x - 2:x + 3].mean()) <= 2.8
    z, y, x = marks["lung+1"]
    assert float(recon[z - 3:z + 4, y - 2:y + 3, x - 2:x + 3].mean()) < 1.0


def test_render_body_follows_voxel_size() -> None:
    params = ReconParams((2.0, 2.7, 2.7), 5.0)
    body = sim.render_body(params, np.random.default_rng(1), shape_mm=(600.0, 260.0, 160.0))
    assert body.shape == (300, 96, 59)


def test_cli_writes_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim.main(["--n", "1", "--out", str(tmp_path), "--label", "clinical", "--seed", "3"]) == 0
    (path,) = tmp_path.glob("*.npz")
    with np.load(path) as case:
        assert str(case["label"]) == "clinical" and case["volume"].ndim == 3
        assert case["rc_max"].shape == (6,)
    assert "clinical: 1 cases" in capsys.readouterr().out
