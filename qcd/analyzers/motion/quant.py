"""An image-based quantitative motion estimate, reported beside the CNN grade.

Raw projections are not in a DICOM export, so Sode's projection-based QME cannot be
computed. Instead, the *periosteal streak index*: motion smears the cortex and throws
streaks that start tangentially at it, so the 1 mm band of soft tissue just outside
the periosteum departs from the soft-tissue level. The index is the mean absolute
departure in that band divided by the noise (high-pass RMS) of soft tissue more than
2.5 mm from bone, so a noisy still scan does not read as motion. Dimensionless; in the
simulation it rises with motion magnitude for a given phantom, but its baseline varies
between subjects (Spearman vs magnitude is in the model card): it is a second
opinion, not a grade.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcd.analyzers.motion.preprocess import MODEL_PIXEL_MM


def _blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    r = max(1, int(3 * sigma_px))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device).float() / sigma_px) ** 2)
    k = (k / k.sum()).to(x.dtype)
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def streak_index(slices: torch.Tensor, pixel_mm: float = MODEL_PIXEL_MM) -> float:
    """Mean periosteal streak index of preprocessed slices (n, 1, S, S) (bone ~1, air ~0)."""
    x = slices.float()
    bone = _blur(x, 0.5 / pixel_mm) > 0.5
    band = _dilate(bone, max(1, round(1.0 / pixel_mm))) & ~bone
    far = ~_dilate(bone, max(1, round(2.5 / pixel_mm))) & (_blur(x, 0.25 / pixel_mm) > 0.05)
    high = x - _blur(x, 0.25 / pixel_mm)
    detail = _blur(x, 0.12 / pixel_mm)
    values = []
    for i in range(x.shape[0]):
        if int(band[i].sum()) < 50 or int(far[i].sum()) < 50:
            continue
        soft = x[i][far[i]].mean()
        noise = float(high[i][far[i]].pow(2).mean().sqrt())
        departure = float((detail[i][band[i]] - soft).abs().mean())
        values.append(departure / max(noise, 1e-4))
    return float(sum(values) / len(values)) if values else float("nan")
