"""IEC phantom physics against hand-checkable values and the SCIENCE.md 1d mappings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from qcd.analyzers.earl import phantom as ph
from qcd.analyzers.earl.phantom import ReconParams, RecoveryCoefficients
from qcd.errors import InferenceError

ISO2 = (2.0, 2.0, 2.0)
ISO4 = (4.0, 4.0, 4.0)
D = tuple(float(d) for d in ph.SPHERE_DIAMETERS_MM)


def measure(params: ReconParams, seed: int = 0) -> RecoveryCoefficients:
    volume, geometry = ph.render_phantom(params, np.random.default_rng(seed))
    return ph.measure_rc(volume, params.voxel_mm, geometry)


def rc_of(rc_max: list[float], rc_mean: list[float], cov: float = 0.05) -> RecoveryCoefficients:
    return RecoveryCoefficients(D, tuple(rc_max), tuple(rc_mean), tuple(rc_mean), cov, 1.0)


def test_sharp_noise_free_large_spheres_recover_fully() -> None:
    rc = measure(ReconParams(ISO2, fwhm_mm=0.3))
    assert rc.rc_max[0] == pytest.approx(1.0, abs=1e-3)  # 37 mm: the max voxel lies fully inside
    assert rc.rc_max[1] == pytest.approx(1.0, abs=1e-3)
    assert 0.9 < rc.rc_mean[0] <= 1.0  # only edge voxels (partial volume) pull A50 below 1
    assert rc.rc_peak[0] == pytest.approx(1.0, abs=1e-3)
    assert rc.background_cov < 1e-3 and rc.background_mean == pytest.approx(1.0, abs=1e-3)


def test_recovery_of_10mm_sphere_falls_with_fwhm() -> None:
    rcs = [measure(ReconParams(ISO2, fwhm_mm=f), seed=3) for f in (4.0, 6.0, 8.0, 10.0)]
    maxes = [rc.rc_max[-1] for rc in rcs]
    means = [rc.rc_mean[-1] for rc in rcs]
    assert maxes == sorted(maxes, reverse=True) and len(set(maxes)) == 4
    assert means == sorted(means, reverse=True) and len(set(means)) == 4
    assert maxes[-1] < 0.45  # SCIENCE 1d: ~0.36-0.37 at f = 10 mm


def test_a50_threshold_and_connectivity_by_hand() -> None:
    row = np.array([1.0, 2.0, 6.0, 10.0, 7.0, 5.4, 9.0, -np.inf])[None, None, :]
    # threshold 1 + 0.5 * (10 - 1) = 5.5; the 9 is cut off from the max by the 5.4
    assert ph.a50_mean(row, background=1.0) == pytest.approx((6 + 10 + 7) / 3)
    # with zero background the threshold is 5 and the 5.4 bridges to the 9
    assert ph.a50_mean(row, background=0.0) == pytest.approx((6 + 10 + 7 + 5.4 + 9) / 5)
    # an explicit peak voxel sets the threshold: 1 + 0.5 * (9 - 1) = 5
    assert ph.a50_mean(row, 1.0, peak_index=(0, 0, 6)) == pytest.approx((6 + 10 + 7 + 5.4 + 9) / 5)


@pytest.mark.parametrize("voxel", [ISO2, ISO4, (3.27, 2.7, 2.7)])
def test_peak_kernel_is_a_centred_one_ml_ball(voxel: tuple[float, float, float]) -> None:
    kernel = ph._peak_kernel(voxel)
    assert kernel.sum() * math.prod(voxel) / 1000.0 == pytest.approx(1.0, rel=0.02)
    assert np.allclose(kernel, kernel[::-1, ::-1, ::-1])  # centred: a ramp keeps its value
    assert kernel.max() == 1.0 and kernel.min() >= 0.0


def test_rcpeak_on_constant_volume_is_value_over_true_concentration() -> None:
    volume, geometry = ph.render_phantom(ReconParams(ISO4, 7.0), np.random.default_rng(1))
    flat = np.where(volume > 0.5, 4.0, volume).astype(np.float32)  # warm everywhere, no spheres
    rc = ph.measure_rc(flat, ISO4, geometry)
    assert rc.rc_peak == pytest.approx([0.4] * 6)
    assert rc.rc_max == pytest.approx([0.4] * 6) and rc.rc_mean == pytest.approx([0.4] * 6)


def test_classify_at_band_edges() -> None:
    e2_lo = [ph.EARL2_RCMAX[d][0] for d in ph.SPHERE_DIAMETERS_MM]
    e2_mean_lo = [ph.EARL2_RCMEAN[d][0] for d in ph.SPHERE_DIAMETERS_MM]
    assert ph.classify(rc_of(e2_lo, e2_mean_lo)) == "EARL2"
    e2_hi = [ph.EARL2_RCMAX[d][1] for d in ph.SPHERE_DIAMETERS_MM]
    e2_mean_hi = [ph.EARL2_RCMEAN[d][1] for d in ph.SPHERE_DIAMETERS_MM]
    assert ph.classify(rc_of(e2_hi, e2_mean_hi, cov=0.15)) == "EARL2"
    assert ph.classify(rc_of(e2_hi, e2_mean_hi, cov=0.151)) == "clinical"
    assert ph.classify(rc_of(e2_hi[:-1] + [e2_hi[-1] + 0.01], e2_mean_hi)) == "clinical"
    e1_max = [sum(ph.EARL1_RCMAX[d]) / 2 for d in ph.SPHERE_DIAMETERS_MM]
    e1_mean_lo = [ph.EARL1_RCMEAN[d][0] for d in ph.SPHERE_DIAMETERS_MM]
    assert ph.classify(rc_of(e1_max, e1_mean_lo)) == "EARL1"  # RCmean below every EARL2 band
    below = e1_mean_lo[:-1] + [e1_mean_lo[-1] - 0.01]
    assert ph.classify(rc_of(e1_max, below)) == "clinical"
    report = ph.band_report(rc_of(e1_max, below))
    assert [r["diameter_mm"] for r in report] == list(D)
    assert report[-1]["earl1_rc_max"] and not report[-1]["earl1_rc_mean"]
    assert all(r["earl1_rc_mean"] for r in report[:-1])
    assert not any(r["earl2_rc_mean"] for r in report)
    with pytest.raises(ValueError):
        ph.classify(RecoveryCoefficients((10.0,), (0.5,), (0.3,), (0.3,), 0.05, 1.0))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (ReconParams(ISO4, 7.5), "EARL1"),  # pure Gaussian, no noise: f = 7.0-8.0 mm at 4 mm
        (ReconParams(ISO2, 8.0), "EARL1"),  # f = 7.5-9.0 mm at 2 mm
        (ReconParams(ISO4, 3.0), "clinical"),  # too sharp
        (ReconParams(ISO2, 7.0, overshoot=0.5), "EARL2"),  # DoG a = 0.5, no noise
        (ReconParams(ISO2, 7.0, overshoot=0.3, cov=0.05), "EARL2"),  # DoG with COV 5 %
        (ReconParams(ISO2, 6.5, cov=0.15), "clinical"),  # noise >= 15 % inflates RCmax
    ],
)
def test_science_1d_mappings(params: ReconParams, expected: str) -> None:
    labels = {ph.classify(measure(params, seed)) for seed in (0, 1)}
    assert labels == {expected}


def test_pure_gaussian_never_reaches_earl2_rcmax_of_large_spheres() -> None:
    for f in (3.0, 5.0, 7.0):
        assert measure(ReconParams(ISO2, f)).rc_max[0] < ph.EARL2_RCMAX[37][0]


def test_apply_recon_noise_is_multiplicative_with_requested_cov() -> None:
    flat = np.ones((40, 40, 40), np.float32)
    out = ph.apply_recon(flat, ReconParams(ISO2, 6.0, 0.3, 0.12), np.random.default_rng(0))
    assert out.dtype == np.float32
    assert float(out.std() / out.mean()) == pytest.approx(0.12, rel=0.02)
    assert float(out.mean()) == pytest.approx(1.0, abs=0.01)  # DoG kernel integrates to 1


def _lag1(x: np.ndarray) -> float:
    """Autocorrelation of neighbouring voxels along x (the noise grain)."""
    d = x - x.mean()
    return float((d[..., 1:] * d[..., :-1]).mean() / d.var())


def test_post_filter_smooths_the_noise_keeps_its_cov_and_zero_changes_nothing() -> None:
    """A Gaussian post-filter smooths noise as well as signal (sim-3): coarser grain,
    same COV; with noise_fwhm_mm 0 the draws are those of the model before it."""
    flat = np.ones((40, 40, 40), np.float32)
    grain = ReconParams(ISO2, 8.0, 0.0, 0.08)
    filtered = ReconParams(ISO2, 8.0, 0.0, 0.08, noise_fwhm_mm=6.0)
    a = ph.apply_recon(flat, grain, np.random.default_rng(4))
    b = ph.apply_recon(flat, filtered, np.random.default_rng(4))
    assert float(b.std() / b.mean()) == pytest.approx(0.08, rel=0.05)
    # Gaussian-smoothed white noise: lag-1 autocorrelation exp(-1 / (4 sigma^2))
    sigma_b = math.hypot(ph.NOISE_SIGMA_VOXELS, 6.0 / 2.3548 / 2.0)
    assert _lag1(a) == pytest.approx(math.exp(-1 / (4 * ph.NOISE_SIGMA_VOXELS ** 2)), abs=0.03)
    assert _lag1(b) == pytest.approx(math.exp(-1 / (4 * sigma_b ** 2)), abs=0.03)  # 0.90
    legacy = ph.add_noise(flat, 0.08, np.random.default_rng(4))
    assert np.array_equal(legacy, ph.add_noise(flat, 0.08, np.random.default_rng(4),
                                               ph.noise_filter_sigma(grain)))
    assert ph.noise_filter_sigma(filtered) == pytest.approx([6.0 / 2.3548 / 2.0] * 3, rel=1e-3)
    with pytest.raises(ValueError, match="noise_fwhm_mm"):
        ReconParams(ISO2, 5.0, noise_fwhm_mm=6.0)  # a filter wider than the whole resolution
    # the phantom label sees the same noise as the image: expected_rc uses the filter too
    rc_grain = ph.expected_rc(ReconParams(ISO2, 7.0, 0.0, 0.12), np.random.default_rng(1), 1, 2)
    rc_filtered = ph.expected_rc(ReconParams(ISO2, 7.0, 0.0, 0.12, 5.0),
                                 np.random.default_rng(1), 1, 2)
    assert abs(rc_grain.rc_max[0] - rc_filtered.rc_max[0]) > 0.02  # 1.41 vs 1.33 here


@pytest.mark.parametrize(
    "params",
    [ReconParams(ISO2, 6.0, 0.2, 0.10), ReconParams((3.27, 4.0, 4.0), 10.0, 0.0, 0.20),
     ReconParams((2.0, 2.7, 2.7), 3.0, 0.5, 0.20)],
)
def test_find_spheres_recovers_centres_within_a_voxel(params: ReconParams) -> None:
    volume, truth = ph.render_phantom(params, np.random.default_rng(7))
    found = ph.find_spheres(volume, params.voxel_mm)
    err = np.abs(np.subtract(found.centres_mm, truth.centres_mm)) / np.array(params.voxel_mm)
    assert err.max() < 1.0
    assert found.diameters_mm == truth.diameters_mm
    assert found.background_conc == pytest.approx(1.0, rel=0.03)
    assert found.sphere_conc == pytest.approx(10 * found.background_conc)


def test_find_spheres_refuses_a_volume_without_spheres() -> None:
    with pytest.raises(InferenceError):
        ph.find_spheres(np.ones((20, 30, 30), np.float32), ISO4)


def write_pet_series(volume: np.ndarray, voxel: tuple[float, float, float], folder: Path,
                     rng: np.random.Generator) -> list[Path]:
    """Single-frame PT slices, int16 with a per-slice slope; file names do not follow z."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = rng.permutation(volume.shape[0])
    paths = []
    for k, plane in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.128")
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Units = "PT", "BQML"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = volume.shape[0] - k  # deliberately the wrong way round
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-150.0, -120.0, -300.0 + k * voxel[0]]
        ds.PixelSpacing = [voxel[1], voxel[2]]
        ds.SliceThickness = voxel[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        bq = plane * 2000.0  # 2 kBq/mL background
        slope = max(float(np.abs(bq).max()), 1.0) / 32000.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", 0
        ds.PixelData = np.round(bq / float(ds.RescaleSlope)).astype(np.int16).tobytes()
        path = folder / f"img{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


@pytest.mark.parametrize(
    ("params", "expected"),
    [(ReconParams((3.0, 4.0, 4.0), 7.5, 0.0, 0.04), "EARL1"),
     (ReconParams((2.0, 2.7, 2.7), 7.0, 0.5, 0.03), "EARL2")],
)
def test_analyze_phantom_series_from_dicom(tmp_path: Path, params: ReconParams,
                                           expected: str) -> None:
    rng = np.random.default_rng(11)
    volume, geometry = ph.render_phantom(params, rng)
    truth = ph.measure_rc(volume, params.voxel_mm, geometry)
    assert ph.classify(truth) == expected
    report = ph.analyze_phantom_series(write_pet_series(volume, params.voxel_mm, tmp_path, rng))
    assert report.label == expected
    assert report.voxel_mm == pytest.approx(params.voxel_mm)
    assert report.geometry.background_conc == pytest.approx(2000.0, rel=0.03)
    assert report.rc.rc_max == pytest.approx(truth.rc_max, abs=0.03)
    assert report.rc.rc_mean == pytest.approx(truth.rc_mean, abs=0.03)
    out = report.to_dict()
    assert out["label"] == expected and len(out["spheres"]) == 6
    assert out["spheres"][0]["diameter_mm"] == 37.0


def test_analyze_phantom_series_refuses_non_pet(tmp_path: Path) -> None:
    volume, _ = ph.render_phantom(ReconParams(ISO4, 7.0), np.random.default_rng(0))
    paths = write_pet_series(volume[:5], ISO4, tmp_path, np.random.default_rng(0))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.Modality = "CT"
        ds.save_as(p)
    with pytest.raises(InferenceError, match="expected .PT."):
        ph.analyze_phantom_series(paths)
