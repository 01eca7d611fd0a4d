"""Atrium preprocessing: pure tensor functions shared by the analyzer and ``training/``.

A volume is ``(z, y, x)`` float32 in scanner units with a spacing in mm per axis. Steps:

1. intensity: divide by the volume's 99.5th percentile and clip to [0, 1.5]. bSSFP
   blood and fat are the brightest tissues, so blood lands near 0.8-1.0 whatever the
   receiver gain; a *volume*-wide scale (not per slice) keeps slices above and below
   the heart from being stretched into false bright blood;
2. in-plane resampling to the training grid (:data:`GRID_MM`, bilinear) so the network
   always sees anatomy at the scale it learnt; the slice axis is left alone;
3. 2.5D input: each slice with its ``CONTEXT`` neighbours on either side as channels
   (clamped at the ends), which tells a pulmonary vein from a round blood pool;
4. zero padding to a multiple of 16 (four 2x poolings).

:func:`restore` maps the network's probabilities back onto the original slice grid.
Only torch and numpy are imported here (training runs without pydicom).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PREPROCESSING_VERSION = "atrium-pre-1"
"""Bumped whenever a step below changes; recorded in the model bundle."""
GRID_MM = 1.25
"""In-plane pixel size the network works at (the simulated and MSD Heart grid)."""
CONTEXT = 1
"""Neighbour slices on each side in the 2.5D input (channels = 2 * CONTEXT + 1)."""
PERCENTILE = 99.5
CLIP = 1.5
MULTIPLE = 16


@dataclass(frozen=True)
class Prepared:
    """Network input and what :func:`restore` needs to undo the geometry steps."""

    x: torch.Tensor
    """(z, 2 * context + 1, H, W) float32, padded."""
    grid_shape: tuple[int, int]
    """(h, w) after resampling, before padding."""
    original_shape: tuple[int, int]
    """(rows, cols) of the source slices."""


def normalise(volume: torch.Tensor) -> torch.Tensor:
    """Scale by the volume's 99.5th percentile and clip to [0, CLIP]."""
    v = volume.float()
    flat = v.reshape(-1)
    if flat.numel() > 2_000_000:  # quantile has a size limit; a strided sample is enough
        flat = flat[:: flat.numel() // 2_000_000 + 1]
    top = torch.quantile(flat, PERCENTILE / 100.0)
    if not torch.isfinite(top) or float(top) <= 0:
        return torch.zeros_like(v)
    return (v / top).clamp(0.0, CLIP)


def grid_shape(shape: tuple[int, int], spacing_yx: tuple[float, float]) -> tuple[int, int]:
    """In-plane size on the :data:`GRID_MM` grid (at least 16 pixels per side)."""
    return (max(MULTIPLE, round(shape[0] * spacing_yx[0] / GRID_MM)),
            max(MULTIPLE, round(shape[1] * spacing_yx[1] / GRID_MM)))


def stack_context(slices: torch.Tensor, context: int = CONTEXT) -> torch.Tensor:
    """(z, H, W) -> (z, 2 * context + 1, H, W): each slice with its neighbours (clamped)."""
    z = slices.shape[0]
    idx = torch.arange(z, device=slices.device)
    offsets = torch.arange(-context, context + 1, device=slices.device)
    nb = (idx[:, None] + offsets[None, :]).clamp(0, z - 1)
    return slices[nb]


def pad_to(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Zero-pad the last two axes at the far end up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


def prepare(volume: np.ndarray | torch.Tensor, spacing: tuple[float, float, float],
            context: int = CONTEXT) -> Prepared:
    """Volume (z, y, x) with spacing (dz, dy, dx) in mm -> network input."""
    v = torch.as_tensor(volume)
    if v.ndim != 3 or min(v.shape) < 1:
        raise ValueError(f"expected a (z, y, x) volume, got shape {tuple(v.shape)}")
    original = (int(v.shape[1]), int(v.shape[2]))
    target = grid_shape(original, (spacing[1], spacing[2]))
    v = normalise(v)
    if target != original:
        v = F.interpolate(v[:, None], size=target, mode="bilinear", align_corners=False)[:, 0]
    return Prepared(pad_to(stack_context(v, context)).contiguous(), target, original)


def restore(prob: torch.Tensor, prepared: Prepared) -> np.ndarray:
    """(z, H, W) probabilities on the padded grid -> (z, rows, cols) float32 on the source grid."""
    h, w = prepared.grid_shape
    p = prob[:, :h, :w].float()
    if (h, w) != prepared.original_shape:
        p = F.interpolate(p[:, None], size=prepared.original_shape, mode="bilinear",
                          align_corners=False)[:, 0]
    return p.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
