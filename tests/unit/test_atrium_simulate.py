"""Simulated cardiac MR: body sampling, LA size, label convention, contrast and noise."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy import ndimage

from training.atrium import simulate as sim

SMALL = sim.SimConfig(nz=64, sizes=(128,))


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small tensors: torch's thread pool only adds overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def case() -> sim.Case:
    return sim.simulate_case(11, "cpu", SMALL, keep_ideal=True)


def test_body_sampling_follows_the_recipe() -> None:
    rng = np.random.default_rng(0)
    draws = [sim.sample_body(rng) for _ in range(2000)]
    lavi = np.array([d[0] for d in draws])
    bsa = np.array([d[1] for d in draws])
    assert lavi.min() >= 16 and lavi.max() <= 60 and bsa.min() >= 1.5 and bsa.max() <= 2.3
    assert 0.65 <= float(np.mean(lavi <= 34)) <= 0.75  # 70 % normal, 30 % enlarged
    for _, b, h, w in draws[:50]:
        assert math.sqrt(h * 100 * w / 3600) == pytest.approx(b, rel=1e-9)


def test_voxelised_ellipsoid_matches_its_analytic_volume() -> None:
    """The SDF + voxel-centre rule used for labels gives the analytic volume (< 2 %)."""
    rot = sim.rotation(0.2, -0.1, 0.3)
    canvas = sim.Canvas((64, 96, 96), 1.25, np.array([32.0, 48.0, 48.0]), rot,
                        torch.device("cpu"))
    radii = (26.0, 21.0, 30.0)
    sdf, box = canvas.ellipsoid([0, 0, 0], radii)
    voxels = float((sdf < 0).sum()) * 1.25 ** 3 / 1000
    assert voxels == pytest.approx(4 / 3 * math.pi * np.prod(radii) / 1000, rel=0.02)


def test_label_volume_tracks_lavi_times_bsa(case: sim.Case) -> None:
    p = case.params
    assert p["ellipsoid_ml"] == pytest.approx(p["lavi_ml_m2"] * p["bsa_m2"], rel=1e-6)
    # label = body + proximal veins and appendage: a little more than the body
    assert p["ellipsoid_ml"] * 0.98 <= p["label_ml"] <= p["ellipsoid_ml"] * 1.35
    assert p["label_ml"] == pytest.approx(float(case.label.sum()) * 1.25 ** 3 / 1000)
    z = np.flatnonzero(case.label.any(dim=(1, 2)).numpy())
    assert z.min() > 0 and z.max() < SMALL.nz - 1  # the LA is inside the stack


def test_bssfp_contrast(case: sim.Case) -> None:
    assert case.ideal is not None
    ideal = case.ideal.numpy()
    inner = ndimage.binary_erosion(case.label.numpy(), iterations=2)
    assert np.median(ideal[inner]) == pytest.approx(1.0, abs=0.02)  # blood
    values = ideal[(ideal > 0.01)]
    myo = np.mean((values > 0.19) & (values < 0.31))
    fat = np.mean((values > 0.99) & (values < 1.26))
    assert myo > 0.05 and fat > 0.01  # myocardium/body ~0.25 and fat ~1.14 are present


def test_rician_noise_level(case: sim.Case) -> None:
    img = case.image.numpy()
    inner = ndimage.binary_erosion(case.label.numpy(), iterations=3)
    diffs = (img[:, :, 1:] - img[:, :, :-1])[inner[:, :, 1:] & inner[:, :, :-1]]
    sigma = float(np.std(diffs)) / math.sqrt(2)  # insensitive to the slow coil bias
    snr = float(np.mean(img[inner])) / sigma
    # blood SNR 15-40 before the 0.5-voxel blur (which lowers pixel noise ~2.5x) and bias
    assert 15 <= snr <= 40 * 3.5


def test_deterministic_per_seed_and_varied_between_seeds() -> None:
    tiny = sim.SimConfig(nz=16, sizes=(64,))  # a slab through the heart is enough here
    first, again = sim.simulate_case(11, "cpu", tiny), sim.simulate_case(11, "cpu", tiny)
    assert torch.equal(again.image, first.image) and torch.equal(again.label, first.label)
    other = sim.simulate_case(12, "cpu", tiny)
    assert other.params["lavi_ml_m2"] != first.params["lavi_ml_m2"]
    assert not torch.equal(other.image, first.image)


def test_rotation_is_orthonormal() -> None:
    r = sim.rotation(0.3, -0.2, 0.4)
    assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)
    f = sim.frame_to(np.array([0.5, -0.6, -0.4]))
    assert np.allclose(f @ f.T, np.eye(3))
