"""RC margins to the EARL bands (qcd.analyzers.earl.phantom.rc_margin / class_margin), by hand."""

from __future__ import annotations

import pytest

from qcd.analyzers.earl import phantom as ph
from qcd.analyzers.earl.phantom import RecoveryCoefficients

D = tuple(float(d) for d in ph.SPHERE_DIAMETERS_MM)  # 37, 28, 22, 17, 13, 10 mm
# midpoints of the EARL1 bands (SCIENCE.md 1c); half-widths RCmax .105 .11 .13 .14 .13 .115,
# RCmean .065 .065 .075 .08 .08 .08
EARL1_MID_MAX = [1.055, 1.02, 0.96, 0.87, 0.72, 0.455]
EARL1_MID_MEAN = [0.825, 0.785, 0.705, 0.65, 0.52, 0.35]
# midpoints of the EARL2 bands; half-widths RCmax .12 .125 .155 .19 .185 .18,
# RCmean .075 .075 .095 .105 .115 .11
EARL2_MID_MAX = [1.17, 1.135, 1.165, 1.19, 1.035, 0.70]
EARL2_MID_MEAN = [0.925, 0.895, 0.895, 0.865, 0.745, 0.50]


def rc_of(rc_max: list[float], rc_mean: list[float], cov: float = 0.05) -> RecoveryCoefficients:
    return RecoveryCoefficients(D, tuple(rc_max), tuple(rc_mean), tuple(rc_mean), cov, 1.0)


def test_margin_at_band_midpoints_is_the_narrowest_half_width() -> None:
    rc = rc_of(EARL1_MID_MAX, EARL1_MID_MEAN)
    assert ph.rc_margin(rc, "EARL1") == pytest.approx(0.065)  # RCmean 37 and 28 mm
    # the same RCs against EARL2: 17 mm RCmax 0.87 is 0.13 below 1.00, 13 mm 0.72 below 0.85
    assert ph.rc_margin(rc, "EARL2") == pytest.approx(-0.13)
    assert ph.classify(rc) == "EARL1"
    assert ph.class_margin(rc) == pytest.approx(0.065)
    rc2 = rc_of(EARL2_MID_MAX, EARL2_MID_MEAN)
    assert ph.rc_margin(rc2, "EARL2") == pytest.approx(0.075)
    assert ph.class_margin(rc2) == pytest.approx(0.075)


def test_one_rc_outside_makes_the_margin_negative() -> None:
    rc_max = EARL1_MID_MAX.copy()
    rc_max[5] = 0.60  # 10 mm RCmax, EARL1 band 0.34-0.57: 0.03 above
    rc = rc_of(rc_max, EARL1_MID_MEAN)
    assert ph.rc_margin(rc, "EARL1") == pytest.approx(-0.03)
    assert ph.classify(rc) == "clinical"
    # clinical: the nearer band decides; EARL2 is still 0.13 away (17 and 13 mm RCmax)
    assert ph.class_margin(rc) == pytest.approx(-0.03)
    rc_max[0] = 1.20  # 37 mm RCmax 0.04 above 1.16: the worst RC now sets the margin
    assert ph.rc_margin(rc_of(rc_max, EARL1_MID_MEAN), "EARL1") == pytest.approx(-0.04)


def test_rcmean_counts_as_much_as_rcmax() -> None:
    rc_mean = EARL2_MID_MEAN.copy()
    rc_mean[2] = 0.79  # 22 mm RCmean, EARL2 band 0.80-0.99
    rc = rc_of(EARL2_MID_MAX, rc_mean)
    assert ph.rc_margin(rc, "EARL2") == pytest.approx(-0.01)
    assert ph.classify(rc) == "clinical"


def test_band_edges_give_zero_margin() -> None:
    low_max = [lo for lo, _ in (ph.EARL1_RCMAX[round(d)] for d in D)]
    low_mean = [lo for lo, _ in (ph.EARL1_RCMEAN[round(d)] for d in D)]
    rc = rc_of(low_max, low_mean)
    assert ph.rc_margin(rc, "EARL1") == pytest.approx(0.0, abs=1e-12)
    assert ph.classify(rc) == "EARL1"  # edges are inside


def test_clinical_by_background_cov_keeps_a_positive_rc_margin() -> None:
    rc = rc_of(EARL1_MID_MAX, EARL1_MID_MEAN, cov=0.16)
    assert ph.classify(rc) == "clinical"
    assert ph.class_margin(rc) == pytest.approx(0.065)


def test_rc_margin_refuses_unknown_bands_and_spheres() -> None:
    rc = rc_of(EARL1_MID_MAX, EARL1_MID_MEAN)
    with pytest.raises(ValueError, match="EARL1"):
        ph.rc_margin(rc, "EARL3")
    odd = RecoveryCoefficients((10.0,), (0.4,), (0.3,), (0.3,), 0.05, 1.0)
    with pytest.raises(ValueError, match="spheres"):
        ph.rc_margin(odd, "EARL1")
