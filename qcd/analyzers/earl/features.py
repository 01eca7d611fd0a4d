"""Image features that measure a PET reconstruction's resolution, overshoot and noise.

Pure array functions shared by the analyzer and ``training/`` (preprocessing version
:data:`FEATURES_VERSION`). An EARL class is a property of the reconstruction, not of the
patient: the NEMA phantom's recoveries follow from the effective resolution (FWHM), the
PSF-like edge overshoot and the noise. These features expose exactly those in a patient
image, so that a small regressor (:mod:`qcd.analyzers.earl.physest`) can estimate them:

- the **edge spread** across the body outline (skin against air, the one edge whose
  object is a step in every patient), sampled along the outward normal at a few thousand
  outline points, each profile aligned at its 50 % crossing and normalised by the level
  6-12 mm inside; median and mean profile from -12 to +10 mm. The blur widens it, the
  overshoot dips it below zero outside;
- the **radial power spectrum** (log, relative to its first band) from 0.01 to
  0.125 cycles/mm, where the modulation transfer of a 4-10 mm FWHM falls off;
- the **noise**: robust relative spread of the residual of a 1- and a 2-voxel smoothing
  in flat body interior (more than 20 mm inside the outline);
- the voxel size (slice, in-plane), which the phantom's partial volume depends on.

A wider field of view is first cut to the band the training bodies were rendered in
(:data:`BAND_MM`: 160 mm left-right about the body's centre of mass, 260 mm
antero-posterior), so arms and flanks weigh in neither the outline nor the spectrum.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage

from qcd.analyzers.earl.preprocess import activity_centre
from qcd.errors import InferenceError

FEATURES_VERSION: Final = "earl-phys-1"
"""Never changed once shipped: a new feature set is a new version."""
BODY_SUV: Final = 0.12
"""Body outline level (SUV) on a 3 mm smoothing: below subcutaneous fat (~0.25-0.4)."""
PROFILE_MM: Final = np.arange(-20.0, 15.01, 0.5)
"""Sample positions (mm, outward positive) along each outline normal."""
ESF_MM: Final = np.arange(-12.0, 10.01, 1.0)
"""Positions of the reported edge spread, relative to the 50 % crossing."""
SPECTRUM_BANDS: Final = np.arange(0.01, 0.1251, 0.005)
"""Radial frequency band edges (cycles/mm)."""
MAX_OUTLINE_POINTS: Final = 4000
NOISE_SCALES_VOXELS: Final = (1.0, 2.0)
INTERIOR_MM: Final = 20.0
BAND_MM: Final = (260.0, 160.0)
"""(y, x) extent of ``training.earl.simulate.render_body``'s volumes, which every volume
is cut to before its features are measured."""
N_FEATURES: Final = len(NOISE_SCALES_VOXELS) + 2 + (len(SPECTRUM_BANDS) - 1) + 2 * len(ESF_MM)
FEATURE_NAMES: Final = (
    [f"noise_{s:g}vox" for s in NOISE_SCALES_VOXELS] + ["slice_mm", "in_plane_mm"]
    + [f"log_power_{b:.3f}" for b in SPECTRUM_BANDS[:-1]]
    + [f"esf_median_{t:+g}mm" for t in ESF_MM] + [f"esf_mean_{t:+g}mm" for t in ESF_MM])


def body_mask(volume: np.ndarray, spacing: tuple[float, float, float]
              ) -> tuple[np.ndarray, np.ndarray]:
    """(largest connected body region with holes filled, the 3 mm smoothed volume)."""
    smooth = ndimage.gaussian_filter(volume, [3.0 / s for s in spacing])
    body = smooth > BODY_SUV
    labels, n = ndimage.label(body)
    if n == 0:
        raise InferenceError(f"no body in the PET volume (nothing above {BODY_SUV} SUV)")
    if n > 1:
        sizes = ndimage.sum_labels(body, labels, range(1, n + 1))
        body = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(body), smooth


def edge_spread(volume: np.ndarray, spacing: tuple[float, float, float], body: np.ndarray,
                smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, mean) edge spread across the body outline at :data:`ESF_MM`."""
    sp = np.asarray(spacing, dtype=float)
    outline = body & ~ndimage.binary_erosion(body)
    for axis in range(3):  # the field of view's own faces are not the body's edge
        index = [slice(None)] * 3
        index[axis] = [0, -1]  # type: ignore[call-overload]
        outline[tuple(index)] = False
    points = np.argwhere(outline)
    if len(points) < 50:
        raise InferenceError(f"body outline too small to measure the edge ({len(points)} voxels)")
    if len(points) > MAX_OUTLINE_POINTS:  # fixed seed: the same series gives the same features
        pick = np.random.default_rng(0).choice(len(points), MAX_OUTLINE_POINTS, replace=False)
        points = points[np.sort(pick)]
    grads = [ndimage.gaussian_filter(smooth, 1.0, order=order)[tuple(points.T)] / s
             for order, s in zip(((1, 0, 0), (0, 1, 0), (0, 0, 1)), sp)]
    normal = -np.stack(grads, axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    coords = (points * sp)[:, None, :] + PROFILE_MM[None, :, None] * normal[:, None, :]
    profiles = ndimage.map_coordinates(volume, (coords / sp).reshape(-1, 3).T, order=1,
                                       mode="nearest").reshape(len(points), len(PROFILE_MM))
    inner = np.median(profiles[:, (PROFILE_MM >= -12) & (PROFILE_MM <= -6)], axis=1)
    keep = inner > BODY_SUV
    profiles = profiles[keep] / inner[keep, None]
    start = int(np.searchsorted(PROFILE_MM, -6.0))
    aligned = []
    for p in profiles:
        below = np.nonzero(p[start:] < 0.5)[0]
        if not below.size:
            continue
        j = start + int(below[0])
        t0 = PROFILE_MM[j - 1] + (p[j - 1] - 0.5) / (p[j - 1] - p[j]) * (
            PROFILE_MM[j] - PROFILE_MM[j - 1])
        aligned.append(np.interp(ESF_MM + t0, PROFILE_MM, p))
    if len(aligned) < 50:
        raise InferenceError("the body outline gives no usable edge profiles")
    stack = np.asarray(aligned)
    return np.median(stack, axis=0), stack.mean(axis=0)


def power_spectrum(volume: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Log mean power per radial band of :data:`SPECTRUM_BANDS`, minus the first band's."""
    v = volume - volume.mean(dtype=np.float64)
    power = np.abs(np.fft.rfftn(v)) ** 2
    kz = np.fft.fftfreq(v.shape[0], spacing[0])[:, None, None]
    ky = np.fft.fftfreq(v.shape[1], spacing[1])[None, :, None]
    kx = np.fft.rfftfreq(v.shape[2], spacing[2])[None, None, :]
    band = np.digitize(np.sqrt(kz**2 + ky**2 + kx**2).ravel(), SPECTRUM_BANDS) - 1
    n_bands = len(SPECTRUM_BANDS) - 1
    inside = (band >= 0) & (band < n_bands)
    total = np.bincount(band[inside], weights=power.ravel()[inside], minlength=n_bands)
    count = np.bincount(band[inside], minlength=n_bands)
    log_power = np.log(np.maximum(total / np.maximum(count, 1), 1e-12))
    return log_power - log_power[0]


def noise_level(volume: np.ndarray, spacing: tuple[float, float, float], body: np.ndarray,
                smooth: np.ndarray) -> list[float]:
    """Robust relative residual spread (1.4826 MAD) in flat interior, per smoothing scale."""
    depth = ndimage.distance_transform_edt(body, sampling=spacing)
    flat = ndimage.gaussian_gradient_magnitude(smooth, 1.0) < 0.02 * smooth
    region = (depth > INTERIOR_MM) & (smooth > 0.3) & flat
    out = []
    for scale in NOISE_SCALES_VOXELS:
        residual = volume - ndimage.gaussian_filter(volume, scale)
        rel = residual[region] / smooth[region]
        out.append(float(1.4826 * np.median(np.abs(rel - np.median(rel)))) if rel.size > 100
                   else 0.0)
    return out


def central_band(volume: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``volume`` cut to :data:`BAND_MM` about its activity's centre of mass in y and x;
    unchanged along an axis it already fits (within half a voxel)."""
    index: list[slice] = [slice(None)]
    for axis, band in ((1, BAND_MM[0]), (2, BAND_MM[1])):
        n, step = volume.shape[axis], spacing[axis]
        keep = int(round(band / step))
        if n <= keep:
            index.append(slice(None))
            continue
        centre = activity_centre(volume, axis)
        start = min(max(int(round(centre - (keep - 1) / 2)), 0), n - keep)
        index.append(slice(start, start + keep))
    return volume[tuple(index)]


def image_features(volume_suv: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The :data:`FEATURES_VERSION` vector (:data:`FEATURE_NAMES`) of an SUV volume (z, y, x).

    Raises
    ------
    InferenceError
        No body, or no body outline to measure (e.g. a field of view inside the body).
    """
    volume = np.asarray(volume_suv, dtype=np.float32)
    if volume.ndim != 3 or min(volume.shape) < 8:
        raise InferenceError(f"need a 3-D PET volume of at least 8 voxels a side, got "
                             f"{volume.shape}")
    sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    volume = central_band(volume, sp)
    body, smooth = body_mask(volume, sp)
    median, mean = edge_spread(volume, sp, body, smooth)
    out = np.concatenate([noise_level(volume, sp, body, smooth),
                          [sp[0], max(sp[1], sp[2])], power_spectrum(volume, sp),
                          median, mean]).astype(np.float32)
    assert out.shape == (N_FEATURES,)
    return out
