"""NEMA IEC body-phantom physics for EARL: render, reconstruct, measure recovery, classify.

The same functions label synthetic reconstructions for training and analyse real phantom
scans in the daemon, so "EARL2" means one thing everywhere: inside both EARL2 bands (RCmax
and RCmean A50, SCIENCE.md 1c) for all six spheres with background COV <= 15 %.
Coordinates are millimetres on the voxel grid, (z, y, x), voxel (i, j, k) centred at
(i*vz, j*vy, k*vx).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from scipy import ndimage, signal

from qcd.analyzers.volume import load_volume
from qcd.errors import InferenceError

Band = tuple[float, float]
Vec3 = tuple[float, float, float]

SPHERE_DIAMETERS_MM: Final = (37, 28, 22, 17, 13, 10)
_TABLE: Final = (  # SCIENCE.md 1c; EARL1 10 mm from the official EARL page
    # EARL1 RCmax   EARL1 RCmean  EARL2 RCmax   EARL2 RCmean  EARL2 RCpeak
    ((0.95, 1.16), (0.76, 0.89), (1.05, 1.29), (0.85, 1.00), (0.99, 1.07)),  # 37 mm
    ((0.91, 1.13), (0.72, 0.85), (1.01, 1.26), (0.82, 0.97), (0.95, 1.07)),  # 28 mm
    ((0.83, 1.09), (0.63, 0.78), (1.01, 1.32), (0.80, 0.99), (0.90, 1.09)),  # 22 mm
    ((0.73, 1.01), (0.57, 0.73), (1.00, 1.38), (0.76, 0.97), (0.75, 0.99)),  # 17 mm
    ((0.59, 0.85), (0.44, 0.60), (0.85, 1.22), (0.63, 0.86), (0.45, 0.69)),  # 13 mm
    ((0.34, 0.57), (0.27, 0.43), (0.52, 0.88), (0.39, 0.61), (0.27, 0.41)),  # 10 mm
)


def _column(k: int) -> Mapping[int, Band]:
    return MappingProxyType({d: row[k] for d, row in zip(SPHERE_DIAMETERS_MM, _TABLE, strict=True)})


EARL1_RCMAX: Final = _column(0)
EARL1_RCMEAN: Final = _column(1)
EARL2_RCMAX: Final = _column(2)
EARL2_RCMEAN: Final = _column(3)
EARL2_RCPEAK: Final = _column(4)
MAX_BACKGROUND_COV: Final = 0.15
LABELS: Final = ("clinical", "EARL1", "EARL2")

FWHM_PER_SIGMA: Final = 2.0 * math.sqrt(2.0 * math.log(2.0))
NOISE_SIGMA_VOXELS: Final = 0.8
RING_RADIUS_MM: Final = 57.2
WALL_MM: Final = 1.0
LUNG_RADIUS_MM: Final = 25.0
ARC_RADIUS_MM: Final = 150.0  # anterior half-disc: the body is 300 mm wide
POSTERIOR_DEPTH_MM: Final = 80.0  # box behind the ring centre: 150 + 80 = 230 mm deep
CORNER_RADIUS_MM: Final = 77.0
PHANTOM_Z_HALF_MM: Final = 60.0
MARGIN_MM: Final = 15.0
PEAK_RADIUS_MM: Final = 6.2  # a 1 mL sphere
BG_EDGE_MM: Final = 20.0  # background voxels keep this far from edges, lung and spheres
BG_SLAB_MM: Final = 20.0  # ... and lie within this distance of the sphere plane
A50_MARGIN_MM: Final = 4.0
_EPS: Final = 1e-9


@dataclass(frozen=True)
class ReconParams:
    """Image-domain model of one reconstruction: voxel grid, resolution, overshoot, noise."""

    voxel_mm: Vec3
    fwhm_mm: float
    overshoot: float = 0.0
    cov: float = 0.0
    noise_fwhm_mm: float = 0.0
    """Gaussian FWHM (mm) that smooths the noise too: a reconstruction's post-filter acts
    on noise and signal alike. 0: noise correlated over :data:`NOISE_SIGMA_VOXELS` only
    (the simulation of the shipped EARL bundle)."""

    def __post_init__(self) -> None:
        if len(self.voxel_mm) != 3 or min(self.voxel_mm) <= 0:
            raise ValueError(f"voxel_mm must be 3 positive sizes (z, y, x), got {self.voxel_mm}")
        if not self.fwhm_mm > 0:
            raise ValueError(f"fwhm_mm must be > 0, got {self.fwhm_mm}")
        if not 0.0 <= self.overshoot <= 1.0:
            raise ValueError(f"overshoot must be in [0, 1], got {self.overshoot}")
        if not 0.0 <= self.cov < 1.0:
            raise ValueError(f"cov must be in [0, 1), got {self.cov}")
        if not 0.0 <= self.noise_fwhm_mm <= self.fwhm_mm:
            raise ValueError(f"noise_fwhm_mm must be in [0, fwhm_mm], got {self.noise_fwhm_mm}")


@dataclass(frozen=True)
class PhantomGeometry:
    """Sphere centres (mm on the voxel grid, ordered as diameters) and true activities."""

    centres_mm: tuple[Vec3, ...]
    diameters_mm: tuple[float, ...]
    sphere_conc: float
    background_conc: float


@dataclass(frozen=True)
class RecoveryCoefficients:
    """Per-sphere recoveries (ordered as ``diameters_mm``) and the background statistics."""

    diameters_mm: tuple[float, ...]
    rc_max: tuple[float, ...]
    rc_mean: tuple[float, ...]
    rc_peak: tuple[float, ...]
    background_cov: float
    background_mean: float


def blur(activity: np.ndarray, params: ReconParams) -> np.ndarray:
    """Gaussian blur of FWHM f with optional DoG overshoot (1+a)G(s) - aG(2s).

    The overshoot mimics the Gibbs ringing of PSF reconstructions; G(2s) is computed as
    G(sqrt(3) s) applied to G(s).
    """
    if activity.ndim != 3:
        raise ValueError(f"activity must be 3-D (z, y, x), got shape {activity.shape}")
    img = np.asarray(activity, dtype=np.float32)
    sigma = [params.fwhm_mm / FWHM_PER_SIGMA / v for v in params.voxel_mm]
    out = ndimage.gaussian_filter(img, sigma, mode="nearest")
    if params.overshoot > 0:
        wide = ndimage.gaussian_filter(out, [s * math.sqrt(3.0) for s in sigma], mode="nearest")
        out = (1.0 + params.overshoot) * out - np.float32(params.overshoot) * wide
    return out.astype(np.float32, copy=False)


def add_noise(image: np.ndarray, cov: float, rng: np.random.Generator,
              filter_sigma_voxels: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Multiply by (1 + cov n), n white noise smoothed by 0.8 voxel and renormalised.

    ``filter_sigma_voxels`` (per axis) smooths the noise further, in quadrature with the
    0.8 voxel: a post-filter's effect on the noise texture. Multiplicative, so the COV of
    a uniform region equals ``cov`` whatever its level.
    """
    if cov <= 0:
        return np.asarray(image, dtype=np.float32)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    sigma = [math.hypot(NOISE_SIGMA_VOXELS, s) for s in filter_sigma_voxels]
    noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    noise *= np.float32(cov / max(float(noise.std()), _EPS))
    noise += 1.0
    noise *= image
    return noise


def apply_recon(activity: np.ndarray, params: ReconParams, rng: np.random.Generator
                ) -> np.ndarray:
    """The image-domain reconstruction model: :func:`blur`, then :func:`add_noise`.

    Shared by the phantom and the simulated patients, so that a label measured on the
    phantom holds for the patient image made with the same parameters.
    """
    return recon_noise(blur(activity, params), params, rng)


def noise_filter_sigma(params: ReconParams) -> list[float]:
    """Per-axis sigma (voxels) of ``params.noise_fwhm_mm``, the post-filter on the noise."""
    return [params.noise_fwhm_mm / FWHM_PER_SIGMA / v for v in params.voxel_mm]


def recon_noise(blurred: np.ndarray, params: ReconParams, rng: np.random.Generator
                ) -> np.ndarray:
    """:func:`add_noise` as ``params`` describe it: the one place the noise parameters are
    read, for the patient images and the phantom labels alike."""
    return add_noise(blurred, params.cov, rng, noise_filter_sigma(params))


def _subsamples(lo: int, hi: int, step: float, ss: int) -> np.ndarray:
    """Coordinates (mm) of ``ss`` evenly spaced points inside each voxel lo..hi-1."""
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    return ((np.arange(lo, hi)[:, None] + sub[None, :]) * step).ravel()


def _ball_fractions(lo: Sequence[int], hi: Sequence[int], voxel: Vec3, centre: Sequence[float],
                    radii: Sequence[float], ss: int = 4) -> list[np.ndarray]:
    """Fraction of each voxel of the box lo..hi inside balls of ``radii`` about ``centre``."""
    d2 = [(_subsamples(lo[a], hi[a], voxel[a], ss) - centre[a]) ** 2 for a in range(3)]
    r2 = d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :]
    shape = (hi[0] - lo[0], ss, hi[1] - lo[1], ss, hi[2] - lo[2], ss)
    return [(r2 <= r * r).reshape(shape).mean(axis=(1, 3, 5), dtype=np.float32) for r in radii]


def _bounds(centre: Sequence[float], radius: float, voxel: Vec3, shape: Sequence[int]
            ) -> tuple[list[int], list[int]]:
    """Index range [lo, hi) per axis of the voxels within ``radius`` (+1 voxel) of ``centre``."""
    lo = [max(math.floor((centre[a] - radius) / voxel[a]) - 1, 0) for a in range(3)]
    hi = [min(math.ceil((centre[a] + radius) / voxel[a]) + 2, shape[a]) for a in range(3)]
    if any(h <= low for low, h in zip(lo, hi)):
        raise InferenceError(f"sphere at {centre} mm lies outside the volume")
    return lo, hi


def _body_section(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """D-shaped IEC body section: anterior half-disc, posterior box with rounded corners."""
    ax = np.abs(dx)
    front = (dy <= 0) & (dy**2 + dx**2 <= ARC_RADIUS_MM**2)
    cy, cx = POSTERIOR_DEPTH_MM - CORNER_RADIUS_MM, ARC_RADIUS_MM - CORNER_RADIUS_MM
    back = (dy > 0) & (dy <= POSTERIOR_DEPTH_MM) & (ax <= ARC_RADIUS_MM)
    back &= (dy <= cy) | (ax <= cx) | ((dy - cy) ** 2 + (ax - cx) ** 2 <= CORNER_RADIUS_MM**2)
    return front | back


def render_phantom(params: ReconParams, rng: np.random.Generator, *,
                   sphere_to_background: float = 10.0) -> tuple[np.ndarray, PhantomGeometry]:
    """The IEC phantom as a reconstruction with ``params`` shows it (float32, background 1)."""
    activity, geometry = phantom_activity(params, rng, sphere_to_background=sphere_to_background)
    return apply_recon(activity, params, rng), geometry


def phantom_activity(params: ReconParams, rng: np.random.Generator, *,
                     sphere_to_background: float = 10.0) -> tuple[np.ndarray, PhantomGeometry]:
    """True IEC phantom activity on the params' grid, partial volume by 4x supersampling.

    Background 1.0, spheres ``sphere_to_background`` inside 1 mm cold walls, cold lung
    insert. The phantom sits at a random sub-voxel offset, so that labels average over
    sampling phases as real acquisitions do. Only +-60 mm about the sphere plane is made.
    """
    voxel = params.voxel_mm
    extent = (2 * PHANTOM_Z_HALF_MM, ARC_RADIUS_MM + POSTERIOR_DEPTH_MM + 2 * MARGIN_MM,
              2 * (ARC_RADIUS_MM + MARGIN_MM))
    shape = tuple(math.ceil(e / v) for e, v in zip(extent, voxel))
    jitter = rng.uniform(-0.5, 0.5, 3) * np.asarray(voxel)
    cz = (shape[0] - 1) * voxel[0] / 2 + jitter[0]
    cy = (shape[1] * voxel[1] - extent[1] - voxel[1]) / 2 + MARGIN_MM + ARC_RADIUS_MM + jitter[1]
    cx = (shape[2] - 1) * voxel[2] / 2 + jitter[2]
    ss = 4
    dy = _subsamples(0, shape[1], voxel[1], ss)[:, None] - cy
    dx = _subsamples(0, shape[2], voxel[2], ss)[None, :] - cx
    section = _body_section(dy, dx) & (dy**2 + dx**2 > LUNG_RADIUS_MM**2)
    bg2d = section.reshape(shape[1], ss, shape[2], ss).mean(axis=(1, 3), dtype=np.float32)
    act = np.broadcast_to(bg2d, shape).copy()
    sphere = float(sphere_to_background)
    centres: list[Vec3] = []
    for i, diameter in enumerate(SPHERE_DIAMETERS_MM):
        angle = math.pi / 2 + i * math.pi / 3
        c = (float(cz), float(cy - RING_RADIUS_MM * math.sin(angle)),
             float(cx + RING_RADIUS_MM * math.cos(angle)))
        centres.append(c)
        r_in = diameter / 2
        lo, hi = _bounds(c, r_in + WALL_MM, voxel, shape)
        f_in, f_out = _ball_fractions(lo, hi, voxel, c, (r_in, r_in + WALL_MM), ss)
        box = tuple(slice(low, h) for low, h in zip(lo, hi))
        act[box] = act[box] * (1.0 - f_out) + np.float32(sphere) * f_in
    diameters = tuple(float(d) for d in SPHERE_DIAMETERS_MM)
    return act, PhantomGeometry(tuple(centres), diameters, sphere, 1.0)


def _local_box(centre: Vec3, radius: float, voxel: Vec3, shape: Sequence[int]
               ) -> tuple[tuple[slice, ...], np.ndarray]:
    """Slices of a box about ``centre`` and the squared distance (mm^2) of its voxel centres."""
    lo, hi = _bounds(centre, radius, voxel, shape)
    d = [(np.arange(lo[a], hi[a]) * voxel[a] - centre[a]) ** 2 for a in range(3)]
    r2 = d[0][:, None, None] + d[1][None, :, None] + d[2][None, None, :]
    return tuple(slice(low, h) for low, h in zip(lo, hi)), r2


def _peak_kernel(voxel: Vec3) -> np.ndarray:
    """Partial-volume weights of a 1 mL ball centred on a voxel centre."""
    half = [math.ceil(PEAK_RADIUS_MM / v + 0.5) for v in voxel]
    return _ball_fractions([-h for h in half], [h + 1 for h in half], voxel, (0.0, 0.0, 0.0),
                           (PEAK_RADIUS_MM,), ss=5)[0]


def a50_mean(region: np.ndarray, background: float,
             peak_index: tuple[int, ...] | None = None) -> float:
    """EARL A50 mean: voxels >= bg + 0.5 (max - bg) connected to the maximum.

    ``region`` is the sphere neighbourhood; voxels outside it should be -inf or NaN.
    """
    values = np.where(np.isfinite(region), region, -np.inf)
    if peak_index is None:
        peak_index = tuple(int(i) for i in np.unravel_index(np.argmax(values), values.shape))
    peak = float(values[peak_index])
    labels, _ = ndimage.label(values >= background + 0.5 * (peak - background))
    return float(values[labels == labels[peak_index]].mean())


def _background_voxels(volume: np.ndarray, voxel: Vec3, geometry: PhantomGeometry) -> np.ndarray:
    """Warm-background voxels within 2 cm of the sphere plane and 2 cm from any edge."""
    z0 = float(np.mean([c[0] for c in geometry.centres_mm]))
    k0 = max(math.floor((z0 - BG_SLAB_MM) / voxel[0]), 0)
    slab = volume[k0:max(math.ceil((z0 + BG_SLAB_MM) / voxel[0]) + 1, k0)]
    if slab.shape[0] == 0:
        raise InferenceError("sphere plane lies outside the volume")
    body = ndimage.gaussian_filter(slab.mean(axis=0), [4.0 / v for v in voxel[1:]])
    body = body > 0.5 * geometry.background_conc
    inside = ndimage.distance_transform_edt(body, sampling=voxel[1:]) >= BG_EDGE_MM
    yy = np.arange(volume.shape[1])[:, None] * voxel[1]
    xx = np.arange(volume.shape[2])[None, :] * voxel[2]
    for (_, y, x), d in zip(geometry.centres_mm, geometry.diameters_mm):
        inside &= (yy - y) ** 2 + (xx - x) ** 2 >= (d / 2 + WALL_MM + BG_EDGE_MM) ** 2
    values = slab[:, inside]
    if values.size < 50:
        raise InferenceError(f"only {values.size} background voxels; is this an IEC phantom?")
    return values.ravel()


def measure_rc(volume: np.ndarray, voxel_mm: Vec3, geometry: PhantomGeometry
               ) -> RecoveryCoefficients:
    """RCmax, RCmean (A50, background adapted), RCpeak per sphere, and the background COV.

    RCmax is the hottest voxel whose centre lies in the sphere; A50 averages the voxels
    connected to it above bg + 0.5 (max - bg) within 4 mm (or a voxel) of the sphere, bg
    being the measured background. RCpeak is the highest 1 mL ball mean centred on a
    voxel of the sphere (PERCIST-style): centring it on the max voxel is ambiguous on
    flat tops and drifts towards the sphere edge under noise.
    """
    if volume.ndim != 3:
        raise InferenceError(f"phantom volume must be 3-D, got shape {volume.shape}")
    voxel = (float(voxel_mm[0]), float(voxel_mm[1]), float(voxel_mm[2]))
    bg_values = _background_voxels(volume, voxel, geometry).astype(np.float64)
    bg_mean = float(bg_values.mean())
    if bg_mean <= 0:
        raise InferenceError(f"background mean is {bg_mean}; expected a warm background")
    kernel = _peak_kernel(voxel)
    kernel /= kernel.sum()
    margin = max(A50_MARGIN_MM, max(voxel))
    true = geometry.sphere_conc
    rc_max, rc_mean, rc_peak = [], [], []
    for centre, diameter in zip(geometry.centres_mm, geometry.diameters_mm):
        r = diameter / 2
        box, r2 = _local_box(centre, r + PEAK_RADIUS_MM + max(voxel), voxel, volume.shape)
        sub = volume[box].astype(np.float64)
        voi = r2 <= r * r
        voi.flat[np.argmin(r2)] = True  # a sphere smaller than a voxel still has its voxel
        top = tuple(int(i) for i in np.unravel_index(np.argmax(np.where(voi, sub, -np.inf)),
                                                     sub.shape))
        rc_max.append(float(sub[top]) / true)
        near = np.where(r2 <= (r + margin) ** 2, sub, -np.inf)
        rc_mean.append(a50_mean(near, bg_mean, top) / true)
        means = signal.fftconvolve(sub, kernel, mode="same")  # the kernel is symmetric
        rc_peak.append(float(means[voi].max()) / true)
    return RecoveryCoefficients(tuple(geometry.diameters_mm), tuple(rc_max), tuple(rc_mean),
                                tuple(rc_peak), float(bg_values.std() / bg_mean), bg_mean)


def _inside(values: Sequence[float], diameters: Sequence[float],
            bands: Mapping[int, Band]) -> list[bool]:
    return [bands[round(d)][0] - _EPS <= v <= bands[round(d)][1] + _EPS
            for v, d in zip(values, diameters)]


def _check_diameters(rc: RecoveryCoefficients) -> None:
    if tuple(round(d) for d in rc.diameters_mm) != SPHERE_DIAMETERS_MM:
        raise ValueError(f"expected spheres {SPHERE_DIAMETERS_MM}, got {rc.diameters_mm}")


def classify(rc: RecoveryCoefficients) -> str:
    """'EARL2', 'EARL1' or 'clinical': RCmax and RCmean bands of all spheres, COV <= 15 %."""
    _check_diameters(rc)
    if rc.background_cov > MAX_BACKGROUND_COV + _EPS:
        return "clinical"
    d = rc.diameters_mm
    if all(_inside(rc.rc_max, d, EARL2_RCMAX) + _inside(rc.rc_mean, d, EARL2_RCMEAN)):
        return "EARL2"
    if all(_inside(rc.rc_max, d, EARL1_RCMAX) + _inside(rc.rc_mean, d, EARL1_RCMEAN)):
        return "EARL1"
    return "clinical"


_BANDS: Final = {"EARL1": (EARL1_RCMAX, EARL1_RCMEAN), "EARL2": (EARL2_RCMAX, EARL2_RCMEAN)}


def rc_margin(rc: RecoveryCoefficients, band: str) -> float:
    """Smallest signed distance of any RCmax or RCmean to the nearest edge of ``band``.

    For each sphere and each of RCmax and RCmean with band ``[lo, hi]`` the signed
    distance is ``min(rc - lo, hi - rc)``: positive inside the band (the room left before
    the nearer edge), negative outside (how far the RC lies beyond the edge it crossed).
    The result is the minimum over the 12 values, in RC units. It is >= 0 exactly when
    every RC lies in the band: then it is how far the closest RC may move before the
    phantom leaves the band; when negative, its size is how far the worst RC has to move
    to bring the phantom inside. RCpeak and the background COV are not part of it (the
    class does not use RCpeak, and the COV limit is in other units).

    Parameters
    ----------
    rc
        Recoveries of the six IEC spheres.
    band
        ``"EARL1"`` or ``"EARL2"``.

    Raises
    ------
    ValueError
        ``band`` is not ``EARL1`` or ``EARL2``, or the spheres are not the six IEC ones.
    """
    if band not in _BANDS:
        raise ValueError(f"band must be one of {sorted(_BANDS)}, got {band!r}")
    _check_diameters(rc)
    rc_bands = _BANDS[band]
    return min(min(v - bands[round(d)][0], bands[round(d)][1] - v)
               for values, bands in zip((rc.rc_max, rc.rc_mean), rc_bands, strict=True)
               for v, d in zip(values, rc.diameters_mm, strict=True))


def class_margin(rc: RecoveryCoefficients) -> float:
    """:func:`rc_margin` for the band that decides :func:`classify`'s answer.

    EARL2 and EARL1 phantoms get the margin of their own band (>= 0). A clinical phantom
    gets the margin of the nearer of the two bands, ``max(rc_margin(rc, "EARL1"),
    rc_margin(rc, "EARL2"))``: negative, and its size is how far its RCs lie from becoming
    EARL-compliant. It is >= 0 only for a phantom that is clinical because its background
    COV exceeds 15 % while its RCs lie in a band. The size is thus the RC distance from
    the clinical/EARL decision (stage 1); a label with a small one may flip when the
    same reconstruction's phantom is measured again (new sub-voxel position and noise).
    """
    label = classify(rc)
    if label in _BANDS:
        return rc_margin(rc, label)
    return max(rc_margin(rc, band) for band in _BANDS)


def band_report(rc: RecoveryCoefficients) -> list[dict[str, Any]]:
    """Per sphere: the three RCs and whether each lies in each EARL band (JSON-ready)."""
    _check_diameters(rc)
    d = rc.diameters_mm
    flags = {"earl1_rc_max": _inside(rc.rc_max, d, EARL1_RCMAX),
             "earl1_rc_mean": _inside(rc.rc_mean, d, EARL1_RCMEAN),
             "earl2_rc_max": _inside(rc.rc_max, d, EARL2_RCMAX),
             "earl2_rc_mean": _inside(rc.rc_mean, d, EARL2_RCMEAN),
             "earl2_rc_peak": _inside(rc.rc_peak, d, EARL2_RCPEAK)}
    return [{"diameter_mm": float(d[i]), "rc_max": rc.rc_max[i], "rc_mean": rc.rc_mean[i],
             "rc_peak": rc.rc_peak[i], **{k: v[i] for k, v in flags.items()}}
            for i in range(len(d))]


def _estimate_background(smooth: np.ndarray) -> float:
    """Median of the warm phantom body; hot spheres are <1 % of it, air and lung fall out."""
    level = float(np.percentile(smooth, 99.0))
    for _ in range(3):
        warm = smooth[(smooth > 0.5 * level) & (smooth < 1.5 * level)]
        level = float(np.median(warm)) if warm.size else 0.0
    if not level > 0:
        raise InferenceError("no warm phantom background found")
    return level


def find_spheres(volume: np.ndarray, voxel_mm: Vec3, *,
                 sphere_to_background: float = 10.0) -> PhantomGeometry:
    """Locate the six hot spheres of a real IEC phantom scan.

    The sphere plane is where the hot excess peaks along z. The spheres are the in-plane
    local maxima (at most one per 30 mm) with the largest integrated excess, which grows
    with sphere volume whatever the resolution; diameters are assigned in that order.
    Centres are centroids of the upper half of each blob; the sphere activity is
    ``sphere_to_background`` times the background measured as in :func:`measure_rc`.
    """
    if volume.ndim != 3 or min(volume.shape) < 3 or not np.isfinite(volume).all():
        raise InferenceError(f"phantom volume must be finite and 3-D, got shape {volume.shape}")
    voxel = (float(voxel_mm[0]), float(voxel_mm[1]), float(voxel_mm[2]))
    vol = np.asarray(volume, dtype=np.float32)
    smooth = ndimage.gaussian_filter(vol, [2.5 / v for v in voxel], mode="nearest")
    bg = _estimate_background(smooth)
    profile = np.clip(smooth - 1.5 * bg, 0, None).sum(axis=(1, 2))
    if not profile.max() > 0:
        raise InferenceError("no hot spheres found above 1.5x background")
    plane = int(np.argmax(profile))
    ry, rx = (12.0 / v for v in voxel[1:])
    fy, fx = np.ogrid[-int(ry):int(ry) + 1, -int(rx):int(rx) + 1]
    img = smooth[plane]
    peaks = ndimage.maximum_filter(img, footprint=(fy / ry) ** 2 + (fx / rx) ** 2 <= 1) == img
    candidates = [(plane * voxel[0], j * voxel[1], k * voxel[2])
                  for j, k in np.argwhere(peaks & (img > 1.5 * bg))]
    masses = []
    for c in candidates:
        box, r2 = _local_box(c, 20.0, voxel, vol.shape)
        masses.append(float(((vol[box] - bg) * (r2 <= 400.0)).sum()))
    order: list[int] = []  # noisy large spheres have several maxima: one per 30 mm
    for i in np.argsort(masses)[::-1]:
        if all(math.dist(candidates[i], candidates[j]) > 30.0 for j in order):
            order.append(int(i))
    if len(order) < len(SPHERE_DIAMETERS_MM):
        raise InferenceError(f"found {len(order)} hot spheres, expected 6")
    centres: list[Vec3] = []
    for i, diameter in zip(order, SPHERE_DIAMETERS_MM):
        c = candidates[i]
        for _ in range(3):
            box, r2 = _local_box(c, diameter / 2 + 5.0, voxel, vol.shape)
            sub = np.where(r2 <= (diameter / 2 + 5.0) ** 2, smooth[box], -np.inf)
            w = np.clip(sub - (bg + 0.5 * (float(sub.max()) - bg)), 0, None).ravel()
            cen = (np.indices(sub.shape).reshape(3, -1) * w).sum(axis=1) / w.sum()
            c = ((box[0].start + cen[0]) * voxel[0], (box[1].start + cen[1]) * voxel[1],
                 (box[2].start + cen[2]) * voxel[2])
        centres.append((float(c[0]), float(c[1]), float(c[2])))
    diameters = tuple(float(d) for d in SPHERE_DIAMETERS_MM)
    rough = PhantomGeometry(tuple(centres), diameters, sphere_to_background * bg, bg)
    background = float(_background_voxels(vol, voxel, rough).mean())
    return PhantomGeometry(rough.centres_mm, diameters, sphere_to_background * background,
                           background)


@dataclass(frozen=True)
class PhantomReport:
    """Result of one phantom series: recoveries, class and the per-sphere band table."""

    rc: RecoveryCoefficients
    label: str
    bands: list[dict[str, Any]]
    voxel_mm: Vec3
    geometry: PhantomGeometry

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"label": self.label, "background_cov": self.rc.background_cov,
                "background_mean": self.rc.background_mean, "voxel_mm": list(self.voxel_mm),
                "sphere_conc": self.geometry.sphere_conc, "spheres": self.bands,
                "centres_mm": [list(c) for c in self.geometry.centres_mm]}


def analyze_phantom_series(paths: Sequence[Path], sphere_to_background: float = 10.0
                           ) -> PhantomReport:
    """Read a PET IEC phantom series, find its spheres, measure RCs and classify it.

    :func:`qcd.analyzers.volume.load_volume` orders slices along the slice normal and
    applies the rescale; units cancel in the RCs.
    """
    vol = load_volume(paths, min_slices=3)
    if vol.first.get("Modality") != "PT":
        raise InferenceError(f"phantom series is {vol.first.get('Modality')!r}, expected 'PT'")
    geometry = find_spheres(vol.array, vol.spacing, sphere_to_background=sphere_to_background)
    rc = measure_rc(vol.array, vol.spacing, geometry)
    return PhantomReport(rc, classify(rc), band_report(rc), vol.spacing, geometry)


def mean_rc(rcs: Sequence[RecoveryCoefficients]) -> RecoveryCoefficients:
    """Element-wise mean of several measurements of the same phantom."""
    def avg(name: str) -> tuple[float, ...]:
        return tuple(float(v) for v in np.mean([getattr(r, name) for r in rcs], axis=0))
    return RecoveryCoefficients(rcs[0].diameters_mm, avg("rc_max"), avg("rc_mean"), avg("rc_peak"),
                                float(np.mean([r.background_cov for r in rcs])),
                                float(np.mean([r.background_mean for r in rcs])))


def expected_rc(params: ReconParams, rng: np.random.Generator, positions: int,
                noise_draws: int) -> RecoveryCoefficients:
    """The IEC phantom's RCs under ``params``, averaged over ``positions`` random sub-voxel
    placements times ``noise_draws`` noise realisations (one when noise-free).

    One definition for the training labels (``training/earl/simulate.py``) and the audit's
    band table (``qcd/audit/resolution.py``), so the two cannot drift apart.
    """
    rcs = []
    for _ in range(positions):
        activity, geometry = phantom_activity(params, rng)
        blurred = blur(activity, params)
        for _ in range(noise_draws if params.cov > 0 else 1):
            rcs.append(measure_rc(recon_noise(blurred, params, rng), params.voxel_mm, geometry))
    return mean_rc(rcs)
