"""From per-slice probabilities to one plausible 3D left-atrium mask (pure numpy/scipy).

The seed's ad-hoc clean-up made principled, in this order:

1. threshold the probability at ``threshold`` (0.5: the loss is calibrated BCE+Dice);
2. morphological closing with a small physical structuring element (radius
   ``closing_mm`` in-plane; along z only when slices are thin enough for a neighbour
   to be within that radius), done on a padded copy so borders are not eroded: it
   fills pinholes and one-pixel gaps left by the valve or thin-walled PV ostia;
3. empty-slice suppression: a slice whose mask is smaller than ``min_slice_mm2`` is
   cleared; the LA is at least a few square centimetres wherever it is cut, so such
   specks are noise or the tips of neighbouring vessels;
4. the largest 3D connected component (26-connectivity) is kept: there is one LA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from qcd.analyzers.atrium.preprocess import prepare, restore


@dataclass(frozen=True)
class PostprocessSettings:
    threshold: float = 0.5
    closing_mm: float = 2.5
    min_slice_mm2: float = 20.0


def structuring_element(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """An ellipsoidal (z, y, x) element of physical radius ``radius_mm`` (at least 1 voxel)."""
    radii = [int(np.floor(radius_mm / s)) for s in spacing]
    radii = [max(r, 0) for r in radii]
    if radii[1] == 0 and radii[2] == 0:
        radii[1] = radii[2] = 1
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing, strict=True))
    element = np.asarray(dist <= 1.0 + 1e-9)
    element[tuple(r for r in radii)] = True
    return element


def close(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Binary closing that treats the outside as background without eroding the border."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    element = structuring_element(spacing, radius_mm)
    pad = [(r, r) for r in (np.array(element.shape) // 2)]
    padded = np.pad(mask, pad)
    closed = ndimage.binary_closing(padded, structure=element)
    return np.asarray(closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape,
                                                                          strict=True))])


def suppress_small_slices(mask: np.ndarray, spacing: tuple[float, float, float],
                          min_mm2: float) -> np.ndarray:
    """Clear slices whose segmented area is below ``min_mm2``."""
    area = mask.reshape(mask.shape[0], -1).sum(axis=1) * spacing[1] * spacing[2]
    out = mask.copy()
    out[area < min_mm2] = False
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component (empty in, empty out)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def postprocess(prob: np.ndarray, spacing: tuple[float, float, float],
                settings: PostprocessSettings = PostprocessSettings()) -> np.ndarray:
    """(z, y, x) probabilities -> (z, y, x) bool mask, steps 1-4 of the module docstring."""
    if prob.ndim != 3:
        raise ValueError(f"expected (z, y, x) probabilities, got shape {prob.shape}")
    mask = prob >= settings.threshold
    mask = close(mask, spacing, settings.closing_mm)
    mask = suppress_small_slices(mask, spacing, settings.min_slice_mm2)
    return largest_component(mask)


def segment(predict: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray | torch.Tensor,
            spacing: tuple[float, float, float], context: int,
            settings: PostprocessSettings = PostprocessSettings(),
            ) -> tuple[np.ndarray, np.ndarray]:
    """The whole per-volume pipeline: prepare -> ``predict`` (logits) -> restore -> clean.

    ``predict`` maps a (z, C, H, W) float32 tensor to (z, 1, H, W) logits (the engine's
    batching predictor in the daemon, the bare model in training). Returns the
    probabilities and the final mask, both (z, y, x) on the volume's own grid.
    """
    prepared = prepare(volume, spacing, context)
    logits = predict(prepared.x)
    prob = restore(torch.sigmoid(logits.float()[:, 0]), prepared)
    return prob, postprocess(prob, spacing, settings)
