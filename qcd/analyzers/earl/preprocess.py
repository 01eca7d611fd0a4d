"""EARL preprocessing: pure array functions shared by the analyzer and ``training/``.

Volumes are ``(z, y, x)`` float32 arrays with a spacing in mm per axis. The steps are
those of Pfaehler et al. (EJNMMI Phys 2022): SUV volume -> common grid -> "edge
image" (image minus its 6 mm FWHM Gaussian blur) -> sagittal slices cropped/padded
to 300 x 200 -> slice selection per stage. Nothing here reads files.

A bundle names its preprocessing version (:data:`PREPROCESSINGS`); the analyzer runs
the one the bundle was trained with. ``earl-pre-1`` resamples linearly to 3 mm, which
smooths 2 and 2.7 mm voxels by an amount that varies with the sampling phase (the
shipped model is least accurate on exactly those voxel sizes); ``earl-pre-2`` resamples
with cubic B-splines instead and ``earl-pre-3`` keeps the native grid. A bundle may also
feed the original voxel size to the net (``input.voxel_input``, :func:`voxel_channels`):
the phantom label itself depends on it through partial volume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

PREPROCESSING_VERSION = "earl-pre-1"
"""The default version for new bundles; a version is never changed once shipped."""
PREPROCESSINGS: dict[str, str] = {
    "earl-pre-1": "3 mm isotropic grid, linear resampling",
    "earl-pre-2": "3 mm isotropic grid, cubic B-spline resampling",
    "earl-pre-3": "native voxel grid, no resampling",
}
"""Every version this qcd can run, with what it does."""
_RESAMPLE_ORDER = {"earl-pre-1": 1, "earl-pre-2": 3}
GRID_MM = 3.0
"""Common isotropic grid: resolves the 4-10 mm FWHM range that separates the classes."""
EDGE_FWHM_MM = 6.0
SLICE_SHAPE = (300, 200)
"""(z, y) of each sagittal slice, as in the seed paper."""
N_SLICES = 10
STAGE2_POOL = 40
EDGE_CLIP = 8.0
"""Edge values (SUV) are clipped to +-EDGE_CLIP and scaled to [-1, 1]."""
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def resample(volume: np.ndarray, spacing: tuple[float, float, float],
             grid_mm: float = GRID_MM, order: int = 1) -> np.ndarray:
    """Spline resampling (``order`` 1 = linear) to an isotropic grid, so the CNN sees one
    voxel size."""
    factors = [s / grid_mm for s in spacing]
    if all(abs(f - 1.0) < 1e-3 for f in factors):
        return volume.astype(np.float32, copy=False)
    return ndimage.zoom(volume.astype(np.float32, copy=False), factors, order=order,
                        mode="nearest", grid_mode=True).astype(np.float32)


def check_version(version: str) -> str:
    if version not in PREPROCESSINGS:
        raise ValueError(f"unknown EARL preprocessing {version!r}; this qcd runs "
                         f"{', '.join(PREPROCESSINGS)}")
    return version


def grid_spacing(version: str, spacing: tuple[float, float, float]
                 ) -> tuple[float, float, float]:
    """Voxel size (z, y, x) mm of the grid the slices are cut from."""
    check_version(version)
    if version == "earl-pre-3":
        return (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    return (GRID_MM, GRID_MM, GRID_MM)


def edge_image(volume: np.ndarray, spacing: tuple[float, float, float],
               fwhm_mm: float = EDGE_FWHM_MM) -> np.ndarray:
    """Image minus its Gaussian blur of ``fwhm_mm`` (converted per axis from mm)."""
    sigma = [fwhm_mm * FWHM_TO_SIGMA / s for s in spacing]
    blurred = ndimage.gaussian_filter(volume.astype(np.float32, copy=False), sigma,
                                      mode="nearest")
    return (volume - blurred).astype(np.float32)


def activity_centre(volume: np.ndarray, axis: int) -> float:
    """Position (in voxels) along ``axis`` of the activity's centre of mass (negative
    values ignored); the middle of the axis when there is no activity."""
    other = tuple(a for a in range(volume.ndim) if a != axis)
    profile = np.clip(volume, 0, None).sum(axis=other, dtype=np.float64)
    total = profile.sum()
    if total <= 0:
        return (volume.shape[axis] - 1) / 2
    return float((profile * np.arange(profile.size)).sum() / total)


def body_center_x(volume: np.ndarray) -> float:
    """x position (in voxels) of the activity's centre of mass: "central" follows the body."""
    return activity_centre(volume, 2)


def central_indices(volume: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` sagittal (x) indices centred on the body, clipped to the volume."""
    nx = volume.shape[2]
    n = min(n, nx)
    start = int(np.floor(body_center_x(volume) - (n - 1) / 2 + 0.5))
    start = min(max(start, 0), nx - n)
    return np.arange(start, start + n)


def stage1_indices(edge: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Stage 1 (clinical vs EARL): the 10 central sagittal slices."""
    return central_indices(volume, N_SLICES)


def stage2_indices(edge: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Stage 2 (EARL1 vs EARL2): the 10 slices of highest edge intensity among the central 40."""
    pool = central_indices(volume, STAGE2_POOL)
    intensity = np.abs(edge[:, :, pool]).sum(axis=(0, 1))
    best = pool[np.argsort(-intensity, kind="stable")[:N_SLICES]]
    return np.sort(best)


def sagittal_slices(edge: np.ndarray, indices: np.ndarray,
                    shape: tuple[int, int] = SLICE_SHAPE) -> np.ndarray:
    """Sagittal planes ``edge[:, :, i]`` centre-cropped/zero-padded to ``shape``, scaled.

    Returns ``(n, 1, H, W)`` float32 ready for the CNN.
    """
    out = np.zeros((len(indices), 1, *shape), dtype=np.float32)
    for k, i in enumerate(indices):
        plane = edge[:, :, int(i)]
        out[k, 0] = _fit(plane, shape)
    np.clip(out, -EDGE_CLIP, EDGE_CLIP, out=out)
    out /= EDGE_CLIP
    return out


def _fit(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop or zero pad a 2D array to ``shape`` without resizing (no stretching)."""
    result = np.zeros(shape, dtype=np.float32)
    src = [slice(0, 0), slice(0, 0)]
    dst = [slice(0, 0), slice(0, 0)]
    for axis in range(2):
        have, want = plane.shape[axis], shape[axis]
        if have >= want:
            start = (have - want) // 2
            src[axis], dst[axis] = slice(start, start + want), slice(0, want)
        else:
            start = (want - have) // 2
            src[axis], dst[axis] = slice(0, have), slice(start, start + have)
    result[dst[0], dst[1]] = plane[src[0], src[1]]
    return result


def prepare(volume_suv: np.ndarray, spacing: tuple[float, float, float],
            version: str = PREPROCESSING_VERSION
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SUV volume -> (stage-1 slices, stage-1 indices, stage-2 slices, stage-2 indices).

    Indices are x positions on the version's grid; multiply by ``grid_spacing(version,
    spacing)[2]`` for mm.
    """
    check_version(version)
    if version == "earl-pre-3":
        grid = volume_suv.astype(np.float32, copy=False)
    else:
        grid = resample(volume_suv, spacing, order=_RESAMPLE_ORDER[version])
    edge = edge_image(grid, grid_spacing(version, spacing))
    idx1 = stage1_indices(edge, grid)
    idx2 = stage2_indices(edge, grid)
    return sagittal_slices(edge, idx1), idx1, sagittal_slices(edge, idx2), idx2


VOXEL_SCALE_MM = GRID_MM
"""Voxel sizes enter the net divided by this (about 1 for PET voxels)."""


def voxel_channels(slices: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(n, 1, H, W) slices -> (n, 3, H, W): two constant planes with the series' original
    in-plane and slice voxel size (mm / ``VOXEL_SCALE_MM``), read by nets with
    ``voxel_input`` (see :class:`qcd.analyzers.earl.model.EdgeNet`)."""
    n, _, h, w = slices.shape
    out = np.empty((n, 3, h, w), dtype=slices.dtype)
    out[:, :1] = slices
    out[:, 1] = float(max(spacing[1], spacing[2])) / VOXEL_SCALE_MM
    out[:, 2] = float(spacing[0]) / VOXEL_SCALE_MM
    return out


def model_inputs(volume_suv: np.ndarray, spacing: tuple[float, float, float],
                 spec: Mapping[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`prepare` as a bundle's ``model.json`` asks for it (version, voxel input)."""
    s1, idx1, s2, idx2 = prepare(volume_suv, spacing,
                                 str(spec.get("preprocessing", PREPROCESSING_VERSION)))
    if (spec.get("input") or {}).get("voxel_input"):
        s1, s2 = voxel_channels(s1, spacing), voxel_channels(s2, spacing)
    return s1, idx1, s2, idx2
