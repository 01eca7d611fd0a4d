"""What the PET header says about the reconstruction, reported beside the CNN.

Vendors spell these differently (Siemens: ReconstructionMethod "PSF+TOF 3i21s",
ConvolutionKernel "XYZ Gauss5.00"; GE: "VPFXS", Q.Clear; Philips: "BLOB-OS-TF"), so
this is a best-effort reading: every value says where it came from, and absence is
reported as unknown, not as "no".
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from pydicom.dataset import Dataset

_ITER = re.compile(r"(\d+)\s*i(?:ter\w*)?[\s,x]*(\d+)\s*s(?:ub\w*)?", re.IGNORECASE)
_FWHM = re.compile(r"(?:gauss[a-z]*|fwhm|filter)\D{0,3}(\d+(?:\.\d+)?)", re.IGNORECASE)
_PSF = re.compile(r"psf|truex|true x|sharp\s*ir|ultra\s*hd|\bhd\b|vpfxs|q\.?clear", re.IGNORECASE)
_TOF = re.compile(r"tof|ultra\s*hd|vpfx|-tf\b|blob-os-tf", re.IGNORECASE)


@dataclass(frozen=True)
class HeaderEvidence:
    reconstruction_method: str | None
    convolution_kernel: str | None
    iterations: int | None
    subsets: int | None
    filter_fwhm_mm: float | None
    psf: bool | None
    tof: bool | None
    slice_thickness_mm: float | None
    pixel_spacing_mm: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hint(self) -> str:
        """A coarse expectation from the header alone: EARL1-like, clinical-like or unknown.

        EARL1 is usually met without PSF and with a 6-8 mm post-filter; clinical
        (non-harmonised) reconstructions use PSF with little or no post-filter.
        """
        if self.filter_fwhm_mm is not None:
            if self.filter_fwhm_mm >= 6.0 and self.psf is not True:
                return "EARL1-like"
            if self.filter_fwhm_mm <= 2.0 and self.psf is True:
                return "clinical-like"
        return "unknown"


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        value = "\\".join(str(v) for v in value) if hasattr(value, "__iter__") else str(value)
    return value.strip() or None


def read_evidence(ds: Dataset) -> HeaderEvidence:
    """Parse the reconstruction description from standard elements of one slice."""
    method = _text(ds, "ReconstructionMethod")
    kernel = _text(ds, "ConvolutionKernel")
    both = " ".join(t for t in (method, kernel) if t)
    iterations = subsets = None
    if m := _ITER.search(both):
        iterations, subsets = int(m.group(1)), int(m.group(2))
    fwhm: float | None = None
    if m := _FWHM.search(kernel or ""):
        fwhm = float(m.group(1))
    elif kernel and re.search(r"all-?pass|none", kernel, re.IGNORECASE):
        fwhm = 0.0
    psf = True if both and _PSF.search(both) else None
    tof = True if both and _TOF.search(both) else None
    spacing = ds.get("PixelSpacing")
    thickness = ds.get("SliceThickness")
    return HeaderEvidence(
        reconstruction_method=method, convolution_kernel=kernel, iterations=iterations,
        subsets=subsets, filter_fwhm_mm=fwhm, psf=psf, tof=tof,
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
        pixel_spacing_mm=float(spacing[0]) if spacing else None,
    )
