"""Simulator physics: a still scan reconstructs the phantom; more motion, less similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.motion.simulate import (
    GRADE_EDGES_UM,
    Geometry,
    fbp,
    grade_from_motion,
    magnitude_um,
    motion_path,
    phantom,
    project,
    sample_motion_for_grade,
    simulate_scan,
    ssim,
)

G = Geometry(160, 0.122, 200)  # small and fast; same code path as the 384 px geometry


@pytest.fixture(scope="module")
def obj() -> torch.Tensor:
    torch.set_num_threads(1)
    return phantom(1, G, torch.Generator().manual_seed(3))


def test_phantom_has_the_four_tissues(obj: torch.Tensor) -> None:
    values = obj[0]
    assert float((values == 0).float().mean()) > 0.1  # air outside the soft tissue
    assert float(((values - 0.27).abs() < 1e-6).float().mean()) > 0.1  # soft tissue
    assert float(((values - 0.23).abs() < 1e-6).float().mean()) > 0.02  # marrow
    assert float((values > 0.9).float().mean()) > 0.03  # cortex + trabeculae


def test_zero_motion_reconstructs_the_phantom(obj: torch.Tensor) -> None:
    recon = fbp(project(obj, G), G)
    assert abs(float(recon.mean() - obj.mean())) < 0.02 * float(obj.mean())
    assert float(ssim(recon, obj, data_range=1.3)) > 0.8
    # the still scan is its own reference: noise-free simulate_scan with 0 um is identical
    scan = simulate_scan(5, 0.0, G, 1, noise=False, obj=obj)
    assert scan.grade == 1 and scan.motion_um == 0
    assert torch.allclose(scan.recon, recon, atol=1e-5)


@pytest.mark.parametrize("kind", ["step", "drift"])
def test_more_motion_monotonically_lowers_similarity(obj: torch.Tensor, kind: str) -> None:
    ref = fbp(project(obj, G), G)
    values = [float(ssim(simulate_scan(11, m, G, 1, kind=kind, noise=False, obj=obj).recon,
                         ref, data_range=1.3))
              for m in (0, 60, 150, 300, 600, 1000)]
    assert values[0] > 0.999
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.8


def test_motion_path_is_scaled_to_the_requested_magnitude() -> None:
    rng = np.random.default_rng(0)
    for target in (30.0, 250.0, 900.0):
        for kind in ("step", "drift", "mixed"):
            path = motion_path(rng, 240, target, kind)
            assert path.magnitude_um == pytest.approx(target, rel=1e-6)
            assert magnitude_um(path.shift_mm, path.rot_rad) == pytest.approx(target, rel=1e-6)
            assert np.ptp(path.rot_rad) <= np.radians(1.0) + 1e-9
    still = motion_path(rng, 240, 0.0)
    assert still.magnitude_um == 0 and not still.shift_mm.any()


def test_grade_thresholds() -> None:
    assert list(GRADE_EDGES_UM) == [60.0, 150.0, 300.0, 600.0]
    assert grade_from_motion(0).item() == 1
    assert grade_from_motion(59.9).item() == 1
    assert grade_from_motion(60.0).item() == 2
    assert grade_from_motion(299.0).item() == 3
    assert grade_from_motion(300.0).item() == 4
    assert grade_from_motion(1000.0).item() == 5
    rng = np.random.default_rng(1)
    for g in range(1, 6):
        assert all(grade_from_motion(sample_motion_for_grade(rng, g)) == g for _ in range(50))
