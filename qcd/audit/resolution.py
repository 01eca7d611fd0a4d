"""Resolution model of the EARL bands: which Gaussian FWHM lands a PET image in a band.

The same image-domain model labels the EARL training data (SCIENCE.md 1d/1e,
:mod:`qcd.analyzers.earl.phantom`): a reconstruction is a 3-D Gaussian PSF of FWHM
``f`` (system + reconstruction + post-filter lumped), optional DoG overshoot ``a``,
voxel averaging and noise of COV ``c``; its class is the NEMA IEC phantom's class
under those parameters. Sweeping ``f`` at a fixed voxel size, overshoot and noise
gives the contiguous FWHM range of each band (:func:`band_fwhm_range`); the shipped
:data:`BAND_FWHM_MM` table was made by it (:func:`derive_table`).

Gaussians add in quadrature, so an image of effective resolution ``f_eff`` filtered
with an extra Gaussian of FWHM ``g`` has resolution ``sqrt(f_eff^2 + g^2)``; reaching
a target ``t >= f_eff`` needs ``g = sqrt(t^2 - f_eff^2)`` (:func:`extra_fwhm`).
Pure numpy/scipy; no DICOM or database imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from qcd.analyzers.earl.phantom import ReconParams, classify, expected_rc

Range = tuple[float, float]


@dataclass(frozen=True)
class BandReference:
    """The overshoot and noise at which a band's FWHM range is derived.

    A noise-free pure Gaussian never reaches EARL2 (its RCmax floor needs the PSF
    overshoot or noise, SCIENCE.md 1d), so EARL2 is derived with the moderate
    overshoot of a PSF reconstruction; EARL1 with none (EARL1 recons are non-PSF).
    """

    overshoot: float
    cov: float


REFERENCES: Final[Mapping[str, BandReference]] = MappingProxyType({
    "EARL1": BandReference(overshoot=0.0, cov=0.05),
    "EARL2": BandReference(overshoot=0.15, cov=0.05),
})

BAND_FWHM_MM: Final[Mapping[str, Mapping[float, Range]]] = MappingProxyType({
    # derive_table(step=0.25): isotropic voxel mm -> (lowest, highest) FWHM mm in the band.
    # EARL1 at 2 mm matches SCIENCE.md 1d (7.5-9.0 mm, noise-free pure Gaussian).
    "EARL1": MappingProxyType({2.0: (7.5, 9.0), 2.7: (7.5, 8.75), 3.0: (7.5, 8.75),
                               4.0: (6.5, 8.25), 5.0: (7.0, 8.0)}),
    "EARL2": MappingProxyType({2.0: (5.5, 6.75), 2.7: (5.25, 6.75), 3.0: (5.25, 6.75),
                               4.0: (5.0, 5.75), 5.0: (6.0, 6.0)}),
})


def phantom_class(voxel_mm: float, fwhm_mm: float, ref: BandReference, *, positions: int = 3,
                  noise_draws: int = 2, seed: int = 0) -> str:
    """Class of the IEC phantom reconstructed at ``fwhm_mm`` (mean RCs of several draws)."""
    params = ReconParams((voxel_mm, voxel_mm, voxel_mm), fwhm_mm, ref.overshoot, ref.cov)
    return classify(expected_rc(params, np.random.default_rng(seed), positions, noise_draws))


def band_fwhm_range(label: str, voxel_mm: float, *, lo: float = 3.0, hi: float = 12.0,
                    step: float = 0.25, **kw: int) -> Range | None:
    """The widest contiguous FWHM range (grid ``step``) whose phantom class is ``label``."""
    grid = np.arange(lo, hi + step / 2, step)
    hits = [phantom_class(voxel_mm, float(f), REFERENCES[label], **kw) == label for f in grid]
    best: Range | None = None
    start = None
    for i, hit in enumerate([*hits, False]):
        if hit and start is None:
            start = i
        elif not hit and start is not None:
            if best is None or grid[i - 1] - grid[start] > best[1] - best[0]:
                best = (float(grid[start]), float(grid[i - 1]))
            start = None
    return best


def derive_table(voxels: Sequence[float] = (2.0, 2.7, 3.0, 4.0, 5.0), step: float = 0.25
                 ) -> dict[str, dict[float, Range | None]]:
    """Recompute :data:`BAND_FWHM_MM` (minutes of CPU)."""
    return {label: {v: band_fwhm_range(label, v, step=step) for v in voxels}
            for label in REFERENCES}


def band_range(label: str, voxel_mm: float) -> Range | None:
    """The tabulated FWHM range of ``label`` at the nearest tabulated voxel size."""
    table = BAND_FWHM_MM.get(label)
    if not table:
        return None
    nearest = min(table, key=lambda v: abs(v - voxel_mm))
    return table[nearest]


def extra_fwhm(f_eff_mm: float, target_mm: float) -> float | None:
    """Extra Gaussian FWHM taking ``f_eff`` to ``target`` (0 if already there, None if
    the image is already smoother than the target: smoothing cannot sharpen)."""
    if f_eff_mm > target_mm + 1e-9:
        return None
    return math.sqrt(max(target_mm * target_mm - f_eff_mm * f_eff_mm, 0.0))
