"""HR-pQCT motion preprocessing: pure torch/numpy, shared by the analyzer and ``training/``.

Steps (after Walle et al., Bone 2023, adapted): pick ``n`` equally spaced axial slices
of the stack -> resample each to ``MODEL_PIXEL_MM`` (antialiased) -> crop/pad a
``INPUT_SIZE`` square centred on the bone (centroid of the dense pixels, so the
field follows the radius/tibia rather than the scan centre) -> robust intensity
normalisation per slice (0.5th percentile -> 0, 99.8th -> 1, clipped to [-0.25, 1.25]).

The normalisation is unit-agnostic (attenuation, HU or mg HA/cm3 all work), which is
why no fixed density window is used: Scanco exports differ in units between sites.
Nothing here reads files or imports pydicom.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PREPROCESSING_VERSION = "motion-pre-1"
"""Bumped whenever any step below changes; recorded in the model bundle."""
MODEL_PIXEL_MM = 0.122
"""Model grid: 2 x the XtremeCT II voxel (60.7 um), finer than Walle's ~180 um input."""
INPUT_SIZE = 192
"""Pixels per side of the model input: a 23.4 mm field around the bone."""
N_SLICES = 8
LOW_PCT, HIGH_PCT = 0.005, 0.998
CLIP = (-0.25, 1.25)


def pick_slices(n_z: int, n: int = N_SLICES) -> np.ndarray:
    """``n`` equally spaced slice indices: the centres of ``n`` equal blocks of the stack."""
    if n_z < 1 or n < 1:
        raise ValueError(f"need at least one slice and n >= 1, got n_z={n_z}, n={n}")
    n = min(n, n_z)
    return np.floor((np.arange(n) + 0.5) * n_z / n).astype(np.int64)


def _resample(x: torch.Tensor, pixel_mm: float) -> torch.Tensor:
    """(n, H, W) -> (n, H', W') at MODEL_PIXEL_MM (antialiased bilinear, area-preserving)."""
    factor = pixel_mm / MODEL_PIXEL_MM
    if abs(factor - 1.0) < 1e-3:
        return x
    if abs(factor - 0.5) < 1e-3 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
        return F.avg_pool2d(x[:, None], 2)[:, 0]  # the common 61 um case: exact 2x2 mean
    size = (max(1, round(x.shape[-2] * factor)), max(1, round(x.shape[-1] * factor)))
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False,
                         antialias=factor < 1)[:, 0]


def _centre(x: torch.Tensor) -> tuple[int, int]:
    """Row/column of the centroid of bone: pixels of the slices' mean above halfway between
    the median (air/soft tissue) and the 99.5th percentile (bone), whatever the bone's area."""
    img = x.mean(dim=0)
    sample = img.reshape(-1)[:: max(1, img.numel() // 200_000)]
    q = torch.quantile(sample, torch.tensor([0.5, 0.995], device=x.device))
    w = (img > q[0] + 0.5 * (q[1] - q[0])).float()
    total = w.sum().clamp_min(1.0)
    rows = torch.arange(img.shape[0], device=x.device, dtype=torch.float32)
    cols = torch.arange(img.shape[1], device=x.device, dtype=torch.float32)
    r = (w.sum(dim=1) * rows).sum() / total
    c = (w.sum(dim=0) * cols).sum() / total
    return int(round(float(r))), int(round(float(c)))


def _crop(x: torch.Tensor, centre: tuple[int, int], size: int) -> torch.Tensor:
    """``size`` x ``size`` window around ``centre``; outside the image is the 0.5th percentile."""
    n, h, w = x.shape
    fill = torch.quantile(x.reshape(n, -1)[:, :: max(1, h * w // 100_000)], LOW_PCT, dim=1)
    out = fill[:, None, None].expand(n, size, size).clone()
    top, left = centre[0] - size // 2, centre[1] - size // 2
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, h), min(left + size, w)
    if r1 > r0 and c1 > c0:
        out[:, r0 - top:r1 - top, c0 - left:c1 - left] = x[:, r0:r1, c0:c1]
    return out


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Per slice: 0.5th percentile -> 0, 99.8th -> 1, clipped to ``CLIP``."""
    flat = x.reshape(x.shape[0], -1)
    q = torch.quantile(flat, torch.tensor([LOW_PCT, HIGH_PCT], device=x.device), dim=1)
    lo, hi = q[0][:, None, None], q[1][:, None, None]
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(*CLIP)


def prepare_slices(slices: torch.Tensor | np.ndarray, pixel_mm: float,
                   size: int = INPUT_SIZE) -> torch.Tensor:
    """(n, H, W) axial slices of one stack -> (n, 1, size, size) float32 model input.

    Works on any device; ``pixel_mm`` is the in-plane pixel size of the slices.
    """
    x = torch.as_tensor(slices, dtype=torch.float32)
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"expected (n, H, W) slices, got shape {tuple(x.shape)}")
    if not pixel_mm > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_mm}")
    x = _resample(x, pixel_mm)
    x = _crop(x, _centre(x), size)
    return normalise(x)[:, None].contiguous()


def prepare(volume: np.ndarray, spacing: tuple[float, float, float], n: int = N_SLICES
            ) -> tuple[torch.Tensor, np.ndarray]:
    """(z, y, x) volume -> (model input (n, 1, S, S), slice indices used)."""
    idx = pick_slices(volume.shape[0], n)
    pixel = float(np.sqrt(spacing[1] * spacing[2]))
    return prepare_slices(np.ascontiguousarray(volume[idx]), pixel), idx
