"""EARL preprocessing against hand-computed values: edge image, slices, SUV, decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset

from qcd.analyzers.earl import preprocess as pre
from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.evidence import read_evidence
from qcd.analyzers.earl.suv import SuvUnavailable, suv_factor


def test_edge_image_of_constant_is_zero_and_of_a_ramp_is_zero_inside() -> None:
    const = np.full((20, 20, 20), 3.0, np.float32)
    assert np.abs(pre.edge_image(const, (2.0, 2.0, 2.0))).max() < 1e-5
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], (40, 8, 8)).copy()
    # A Gaussian blur leaves a linear ramp unchanged away from the borders.
    assert np.abs(pre.edge_image(ramp, (1.0, 1.0, 1.0))[10:30]).max() < 1e-4


def test_edge_image_fwhm_is_in_mm_not_voxels() -> None:
    impulse = np.zeros((41, 41, 41), np.float32)
    impulse[20, 20, 20] = 1.0
    e2 = pre.edge_image(impulse, (2.0, 2.0, 2.0), fwhm_mm=6.0)
    e1 = pre.edge_image(impulse, (1.0, 1.0, 1.0), fwhm_mm=6.0)
    # blur = impulse - edge; its peak is 1/((2 pi)^1.5 sigma^3) with sigma in voxels
    for edge, spacing in ((e2, 2.0), (e1, 1.0)):
        sigma = 6.0 / (2 * math.sqrt(2 * math.log(2))) / spacing
        expected = 1 / ((2 * math.pi) ** 1.5 * sigma**3)
        assert 1.0 - edge[20, 20, 20] == pytest.approx(expected, rel=0.03)


def test_fit_crops_and_pads_centred_without_stretching() -> None:
    plane = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = pre._fit(plane, (5, 2))
    assert out.shape == (5, 2)
    assert out[0].tolist() == [0, 0] and out[4].tolist() == [0, 0]
    assert out[1:4].tolist() == plane[:, 1:3].tolist()


def test_slice_selection_follows_body_and_edge_intensity() -> None:
    vol = np.zeros((30, 20, 100), np.float32)
    vol[:, :, 55:75] = 1.0  # body off-centre: centre of mass x = 64.5
    idx1 = pre.stage1_indices(vol, vol)
    assert idx1.tolist() == list(range(60, 70))
    edge = np.zeros_like(vol)
    edge[:, :, [46, 50, 52, 60, 61, 62, 63, 70, 80, 83]] = 1.0
    edge[:, :, 44] = 3.0  # outside the pool too
    edge[:, :, 85] = 5.0  # the strongest plane lies outside the central 40 (45..84)
    idx2 = pre.stage2_indices(edge, vol)
    assert idx2.tolist() == [46, 50, 52, 60, 61, 62, 63, 70, 80, 83]  # edge planes inside
    assert list(idx2) == sorted(idx2)


def test_sagittal_slices_shape_and_scaling() -> None:
    edge = np.zeros((400, 250, 12), np.float32)
    edge[:, :, 3] = 100.0
    out = pre.sagittal_slices(edge, np.array([3, 4]))
    assert out.shape == (2, 1, 300, 200)
    assert out[0].max() == 1.0 and out[1].max() == 0.0  # clipped at EDGE_CLIP, scaled


def test_resample_to_grid_keeps_physical_extent() -> None:
    vol = np.ones((60, 40, 40), np.float32)
    out = pre.resample(vol, (2.0, 4.5, 4.5))
    assert out.shape == (40, 60, 60)


def pet_header(**overrides: object) -> Dataset:
    ds = Dataset()
    ds.Units = "BQML"
    ds.PatientWeight = 70
    ds.DecayCorrection = "START"
    ds.SeriesDate = "20261126"
    ds.SeriesTime = "110000"
    info = Dataset()
    info.RadionuclideTotalDose = 300e6
    info.RadionuclideHalfLife = 6586.2
    info.RadiopharmaceuticalStartTime = "100000"
    ds.RadiopharmaceuticalInformationSequence = [info]
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds


def test_suv_factor_decay_corrects_the_dose_to_series_start() -> None:
    decayed = 300e6 * math.exp(-math.log(2) * 3600 / 6586.2)
    assert suv_factor(pet_header()) == pytest.approx(70_000 / decayed)
    assert suv_factor(pet_header(DecayCorrection="ADMIN")) == pytest.approx(70_000 / 300e6)


def test_suv_factor_across_midnight() -> None:
    ds = pet_header(SeriesTime="003000")
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "233000"
    decayed = 300e6 * math.exp(-math.log(2) * 3600 / 6586.2)
    assert suv_factor(ds) == pytest.approx(70_000 / decayed)


@pytest.mark.parametrize(("change", "reason"), [
    ({"Units": "CNTS"}, "Units is 'CNTS'"),
    ({"PatientWeight": None}, "PatientWeight missing"),
    ({"DecayCorrection": "NONE"}, "DecayCorrection 'NONE'"),
    ({"RadiopharmaceuticalInformationSequence": []}, "RadiopharmaceuticalInformationSequence"),
])
def test_suv_unavailable_says_why(change: dict[str, object], reason: str) -> None:
    with pytest.raises(SuvUnavailable, match=reason):
        suv_factor(pet_header(**change))


def test_decision_bands() -> None:
    t = Thresholds()
    assert decide(0.2, None, t) == "clinical"
    assert decide(0.9, 0.8, t) == "EARL2"
    assert decide(0.9, 0.2, t) == "EARL1"
    assert decide(0.9, 0.5, t) == "indeterminate"
    assert decide(0.5, None, t) == "indeterminate"


@pytest.mark.parametrize(("method", "kernel", "expected"), [
    ("PSF+TOF 3i21s", "XYZ Gauss2.00", (3, 21, 2.0, True, True, "clinical-like")),
    ("OSEM3D 4i8s", "XYZ Gauss7.00", (4, 8, 7.0, None, None, "EARL1-like")),
    ("OSEM", None, (None, None, None, None, None, "unknown")),
])
def test_header_evidence(method: str, kernel: str | None, expected: tuple[object, ...]) -> None:
    ds = Dataset()
    ds.ReconstructionMethod = method
    if kernel:
        ds.ConvolutionKernel = kernel
    ev = read_evidence(ds)
    assert (ev.iterations, ev.subsets, ev.filter_fwhm_mm, ev.psf, ev.tof, ev.hint()) == expected

