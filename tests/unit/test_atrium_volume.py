"""LA volume from a mask and its spacing; BSA (Mosteller), LAVI and the ASE/EACVI bands."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcd.analyzers.atrium.volume import body_size, bsa_mosteller, lavi_band, mask_volume_ml


def ellipsoid_mask(radii_mm: tuple[float, float, float],
                   spacing: tuple[float, float, float]) -> np.ndarray:
    axes = [np.arange(-(r // s) - 2, r // s + 3) * s for r, s in zip(radii_mm, spacing,
                                                                       strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return (z / radii_mm[0]) ** 2 + (y / radii_mm[1]) ** 2 + (x / radii_mm[2]) ** 2 <= 1.0


def test_sphere_volume_matches_the_analytic_volume_within_one_percent() -> None:
    r = 25.0
    mask = ellipsoid_mask((r, r, r), (1.0, 1.0, 1.0))
    analytic = 4 / 3 * math.pi * r ** 3 / 1000
    assert mask_volume_ml(mask, (1.0, 1.0, 1.0)) == pytest.approx(analytic, rel=0.01)


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (1.37, 1.25, 1.25), (0.8, 1.6, 1.1)])
def test_anisotropic_spacing_is_used_per_axis(spacing: tuple[float, float, float]) -> None:
    r = 25.0
    mask = ellipsoid_mask((r, r, r), spacing)
    analytic = 4 / 3 * math.pi * r ** 3 / 1000
    assert mask_volume_ml(mask, spacing) == pytest.approx(analytic, rel=0.01)
    # the same voxels under an assumed 1 mm grid would be badly wrong
    assert abs(mask_volume_ml(mask, (1.0, 1.0, 1.0)) - analytic) / analytic > 0.05


def test_bad_spacing_is_refused() -> None:
    with pytest.raises(ValueError, match="spacing"):
        mask_volume_ml(np.ones((2, 2, 2), bool), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        mask_volume_ml(np.ones((2, 2, 2), bool), (1.0, float("nan"), 1.0))


def test_bsa_and_lavi_against_hand_computed_values() -> None:
    # 175 cm, 70 kg: sqrt(175 * 70 / 3600) = sqrt(3.402777...) = 1.844662 m2
    assert bsa_mosteller(175, 70) == pytest.approx(1.844662, abs=1e-6)
    size = body_size("1.75", "70")
    assert size.bsa_m2 == pytest.approx(1.844662, abs=1e-6) and not size.reason
    # 160 cm, 90 kg: sqrt(4.0) = 2.0 m2; 84 mL -> 42.0 mL/m2 (moderate)
    size = body_size(1.60, 90)
    assert size.bsa_m2 == pytest.approx(2.0)
    assert 84.0 / size.bsa_m2 == pytest.approx(42.0) and lavi_band(84.0 / size.bsa_m2) == "moderate"


def test_header_guards() -> None:
    cm = body_size(175, 70)  # PatientSize written in centimetres
    assert cm.height_m == pytest.approx(1.75) and "centimetres" in cm.note
    for size, weight, why in ((None, 70, "PatientSize"), (1.75, None, "PatientWeight"),
                              (0, 70, "PatientSize"), ("", "", "PatientSize and PatientWeight"),
                              ("abc", 70, "PatientSize"), (0.5, 70, "height"),
                              (2.6, 70, "height"), (1.75, 10, "weight"), (1.75, 400, "weight")):
        result = body_size(size, weight)
        assert result.bsa_m2 is None and why in result.reason, (size, weight, result)


@pytest.mark.parametrize("lavi, band", [
    (0.0, "normal"), (16.0, "normal"), (34.0, "normal"), (34.49, "normal"),
    (34.5, "mild"), (35.0, "mild"), (41.0, "mild"), (41.49, "mild"),
    (41.5, "moderate"), (42.0, "moderate"), (48.0, "moderate"), (48.49, "moderate"),
    (48.5, "severe"), (49.0, "severe"), (120.0, "severe"),
])
def test_band_edges(lavi: float, band: str) -> None:
    assert lavi_band(lavi) == band


def test_band_refuses_nonsense() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="LAVI"):
            lavi_band(bad)
