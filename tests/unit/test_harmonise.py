"""The harmonised copy: resolution grows in quadrature, values and SUV headers survive,
UIDs are stable, provenance is complete, and a copy is never harmonised again."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from qcd import __version__
from qcd.analyzers.volume import load_volume
from qcd.audit.harmonise import (
    FWHM_PER_SIGMA,
    Plan,
    build_harmonised,
    harmonised_uids,
    is_harmonised,
    plan,
    smooth,
)
from qcd.audit.report import effective_fwhm, extra_to_band
from qcd.synth import write_pet_series

SPACING = (2.0, 2.5, 3.0)  # anisotropic on purpose: sigma in voxels differs per axis
F_MM = 6.0
EXTRA_MM = 5.0


def _blob(shape: tuple[int, int, int] = (49, 49, 41), fwhm: float = F_MM,
          background: float = 1.0) -> np.ndarray:
    """A Gaussian point source of ``fwhm`` (SUV 9 above ``background`` at the peak)."""
    sigma = fwhm / FWHM_PER_SIGMA
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, SPACING, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return background + 9.0 * np.exp(-(z * z + y * y + x * x) / (2 * sigma * sigma))


def _fwhm_per_axis(w: np.ndarray) -> list[float]:
    """FWHM along each axis from the second moment of a source on a zero background."""
    out = []
    for axis, spacing in enumerate(SPACING):
        profile = w.sum(axis=tuple(a for a in range(3) if a != axis))
        pos = np.arange(profile.size) * spacing
        mean = float((profile * pos).sum() / profile.sum())
        var = float((profile * (pos - mean) ** 2).sum() / profile.sum())
        out.append(FWHM_PER_SIGMA * math.sqrt(var))
    return out


def _plan(extra: float = EXTRA_MM, target: str = "EARL1") -> Plan:
    return Plan(target, extra, "clinical", F_MM, "test")


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_pet_series(_blob(), SPACING, tmp_path / "src", description="PET WB",
                            kernel="XYZ Gauss5.00", seed=3)


def _save(datasets: list[pydicom.Dataset], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_effective_resolution_grows_in_quadrature(tmp_path: Path) -> None:
    """A point source of FWHM f, written, harmonised with e, read back: sqrt(f^2 + e^2)."""
    point = write_pet_series(_blob(background=0.0), SPACING, tmp_path / "point", seed=4)
    before = load_volume(point)
    copies = build_harmonised(point, _plan(), generation=1)
    after = load_volume(_save(copies, tmp_path / "harm"))
    assert after.spacing == pytest.approx(before.spacing)
    f0 = _fwhm_per_axis(before.array)
    f1 = _fwhm_per_axis(after.array)
    for measured_before, measured_after in zip(f0, f1, strict=True):
        assert measured_before == pytest.approx(F_MM, abs=0.3)
        assert measured_after == pytest.approx(math.hypot(measured_before, EXTRA_MM), abs=0.25)
        assert measured_after == pytest.approx(math.hypot(F_MM, EXTRA_MM), abs=0.4)


def test_smooth_keeps_the_total_and_uses_real_spacing() -> None:
    point = np.zeros((41, 41, 41))
    point[20, 20, 20] = 1000.0
    out = smooth(point, SPACING, 6.0)
    assert out.sum() == pytest.approx(1000.0, rel=1e-6)
    # the profile along each axis has sigma = 6/2.3548 mm, whatever the voxel size
    for axis, spacing in enumerate(SPACING):
        profile = out.sum(axis=tuple(a for a in range(3) if a != axis))
        pos = (np.arange(41) - 20) * spacing
        sigma = math.sqrt(float((profile * pos**2).sum() / profile.sum()))
        assert sigma == pytest.approx(6.0 / FWHM_PER_SIGMA, rel=0.02)


def test_values_in_bq_per_ml_are_preserved_in_mean(series: list[Path], tmp_path: Path) -> None:
    before = load_volume(series)
    after = load_volume(_save(build_harmonised(series, _plan(), 1), tmp_path / "harm"))
    assert float(after.array.mean()) == pytest.approx(float(before.array.mean()), rel=2e-3)
    assert float(after.array.max()) < float(before.array.max())  # smoothed: lower peak
    # quantisation is per slice with a fresh slope: worst error below 1e-4 of the slice max
    expected = smooth(before.array, before.spacing, EXTRA_MM)
    err = np.abs(after.array - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))
    assert float(err.max()) < 1e-4


def test_headers_uids_provenance_and_suv(series: list[Path]) -> None:
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in series}
    first_src = next(iter(sources.values()))
    a = build_harmonised(series, _plan(), 1)
    b = build_harmonised(series, _plan(), 1)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]  # rebuild: same
    assert len({d.SeriesInstanceUID for d in a}) == 1
    series_uid = a[0].SeriesInstanceUID
    assert series_uid != first_src.SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in a}) == len(series)
    assert not {d.SOPInstanceUID for d in a} & set(sources)
    # another generation, target or FWHM is another series
    assert build_harmonised(series, _plan(), 2)[0].SeriesInstanceUID != series_uid
    assert build_harmonised(series, _plan(4.0), 1)[0].SeriesInstanceUID != series_uid
    assert harmonised_uids(str(first_src.SeriesInstanceUID), 1, "EARL1", EXTRA_MM,
                           [])[0] == series_uid
    referenced = []
    for ds in a:
        assert ds.StudyInstanceUID == first_src.StudyInstanceUID
        assert ds.SOPClassUID == first_src.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
        assert ds.SeriesDescription.startswith("HARMONISED EARL1 +5.0 mm")
        assert "5.00 mm" in ds.DerivationDescription and "EARL1" in ds.DerivationDescription
        assert __version__ in ds.DerivationDescription
        [ref] = ds.SourceImageSequence
        src = sources[ref.ReferencedSOPInstanceUID]
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert ds.InstanceNumber == src.InstanceNumber
        assert ds.ImagePositionPatient == src.ImagePositionPatient
        referenced.append(ref.ReferencedSOPInstanceUID)
        for keyword in ("Units", "DecayCorrection", "PatientWeight", "SeriesTime",
                        "AcquisitionTime", "RadiopharmaceuticalInformationSequence",
                        "CorrectedImage", "PixelSpacing", "SliceThickness"):
            assert ds[keyword].value == src[keyword].value, keyword
        assert float(ds.RescaleIntercept) == 0 and float(ds.RescaleSlope) > 0
        assert list(ds.ConvolutionKernel) == ["XYZ Gauss5.00", "QCD GAUSS5.00"]
    assert sorted(referenced) == sorted(sources)  # every source instance, once


def test_a_harmonised_series_is_not_harmonised_again(series: list[Path],
                                                     tmp_path: Path) -> None:
    copies = build_harmonised(series, _plan(), 1)
    assert all(is_harmonised(ds) for ds in copies)
    assert not any(is_harmonised(pydicom.dcmread(p)) for p in series)
    with pytest.raises(ValueError, match="already a harmonised copy"):
        build_harmonised(_save(copies, tmp_path / "harm"), _plan(), 1)
    # recognised by ImageType + description too, if a PACS dropped DerivationDescription
    stripped = copies[0].copy()
    del stripped.DerivationDescription
    assert is_harmonised(stripped)


def _findings(earl_class: str | None, kernel_fwhm: float | None = 5.0,
              psf: bool | None = None, voxel: float = 4.0) -> dict[str, tuple[str | None,
                                                                             dict[str, object]]]:
    return {"earl_class": (earl_class, {}),
            "header_evidence": ("unknown", {"filter_fwhm_mm": kernel_fwhm, "psf": psf,
                                            "pixel_spacing_mm": voxel})}


def test_plan_follows_the_report_model() -> None:
    got = plan(_findings("clinical"), "EARL1")
    assert got is not None
    f_eff, _ = effective_fwhm({"filter_fwhm_mm": 5.0})
    expected = extra_to_band("EARL1", f_eff, 4.0).recommended
    assert expected is not None
    assert got.extra_fwhm_mm == pytest.approx(expected, abs=0.005)
    assert got.target == "EARL1" and got.earl_class == "clinical"
    assert plan(_findings("EARL2"), "EARL1") is not None  # EARL2 can be smoothed to EARL1
    assert plan(_findings("EARL1"), "EARL1") is None  # already compliant
    assert plan(_findings("indeterminate"), "EARL1") is None
    assert plan(_findings(None), "EARL1") is None
    assert plan(_findings("clinical", kernel_fwhm=None), "EARL1") is None  # not estimable
    assert plan(_findings("clinical", kernel_fwhm=9.0), "EARL2") is None  # already smoother
    with pytest.raises(ValueError):
        plan(_findings("clinical"), "EARL3")
