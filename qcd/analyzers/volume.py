"""Reading a single-frame series into a 3D volume with its real geometry.

Slices are ordered by their position along the slice normal (from
ImagePositionPatient and ImageOrientationPatient), never by file order or instance
number; spacing comes from PixelSpacing and the slice positions, never assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from qcd.errors import InferenceError

_TOL_MM = 0.01


@dataclass(frozen=True)
class Volume:
    """A (z, y, x) float32 volume in the modality's units (rescale applied)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    """mm between voxel centres along (z, y, x)."""
    first: Dataset
    """Header of the first slice along z (no pixel data needed from it)."""
    headers: tuple[Dataset, ...]
    """Every slice's header in z order, without its pixel data (that is in ``array``)."""


def load_volume(paths: Sequence[Path], min_slices: int = 2) -> Volume:
    """Read, check and stack a series.

    Raises
    ------
    InferenceError
        Multi-frame or missing geometry, mixed orientations, sizes or in-plane
        spacings, duplicate or unevenly spaced slice positions, fewer than
        ``min_slices`` slices.
    """
    datasets = [pydicom.dcmread(p) for p in paths]
    if len(datasets) < min_slices:
        raise InferenceError(f"series has {len(datasets)} slice(s); at least {min_slices} needed")
    for ds in datasets:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise InferenceError("multi-frame images are not supported by this analyzer")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise InferenceError(f"slice without {keyword}: geometry unknown")
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    spacing_yx = tuple(float(v) for v in datasets[0].PixelSpacing)
    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    for ds in datasets[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), orientation,
                           atol=1e-4):
            raise InferenceError("series mixes image orientations")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise InferenceError("series mixes image sizes")
        if not np.allclose([float(v) for v in ds.PixelSpacing], spacing_yx, atol=1e-4):
            raise InferenceError("series mixes pixel spacings")
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float)))
                          for ds in datasets])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    gaps = np.diff(positions)
    if np.any(gaps < _TOL_MM):
        raise InferenceError("two slices share one position (duplicate or mixed series)")
    dz = float(np.median(gaps))
    if np.any(np.abs(gaps - dz) > max(0.05 * dz, _TOL_MM)):
        raise InferenceError(f"uneven slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm)")
    ordered = [datasets[i] for i in order]
    array = np.empty((len(ordered), *shape), dtype=np.float32)
    for k, ds in enumerate(ordered):
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        array[k] = ds.pixel_array.astype(np.float32) * slope + intercept
        # The headers outlive this call (findings, SR/SEG references, harmonised copies),
        # the pixels live on in ``array``: drop the encoded bytes and pydicom's cached
        # decoded array (deleting PixelData resets it), ~1 volume-sized copy less at peak.
        del ds.PixelData
    return Volume(array, (dz, spacing_yx[0], spacing_yx[1]), ordered[0], tuple(ordered))
