"""From stored pixels to the chest model's input: pure functions shared with ``training/chest``.

Two steps, kept apart so that simulated images (which are born as display values)
enter at the second one:

1. :func:`to_display` (numpy, one image): Modality rescale (slope/intercept), VOI
   windowing (linear, linear-exact or sigmoid, DICOM PS3.3 C.11.2.1.2) and
   MONOCHROME1 inversion, giving values in [0, 1] with bone and soft tissue bright,
   air dark (MONOCHROME2 polarity) whatever the modality wrote.
2. :func:`prepare_batch` (torch, a batch of same-shape images): pad to a square
   (the aspect ratio is kept: a 35x43 cm cassette is not stretched into a square
   chest), resize with antialiasing to the model's input size, then normalise each
   image by its own 1st/99th percentiles to [-1, 1] over the image area (the padding
   is set to -1 afterwards), so exposure, detector and window choices matter less.

:func:`read_radiograph` reads a DICOM file; it imports pydicom when called, so this
module imports only numpy and torch (training runs without pydicom).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qcd.errors import InferenceError

PREPROCESSING_VERSION = "chest-pre-1"
PERCENTILES = (0.01, 0.99)
"""Per-image quantiles mapped to -1 and +1 by :func:`prepare_batch`."""
PAD_VALUE = -1.0
"""Normalised value of the padding (as dark as the darkest 1% of the image)."""


@dataclass(frozen=True)
class DisplayHeader:
    """The header values that decide how stored pixels become display values."""

    photometric: str = "MONOCHROME2"
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    voi_function: str = "LINEAR"
    """``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID`` (VOI LUT Function, 0028,1056)."""


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise InferenceError(f"window width {width} < 1 is invalid for a LINEAR VOI")
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def to_display(pixels: np.ndarray, header: DisplayHeader) -> np.ndarray:
    """Stored values -> display values in [0, 1], bright = attenuating (float32).

    Without a window in the header the image's own 0.5/99.5 percentiles are used,
    as a viewer's "auto window" would.

    Raises
    ------
    InferenceError
        Not a 2D greyscale image, an unknown photometric interpretation, or no contrast.
    """
    if pixels.ndim != 2:
        raise InferenceError(f"expected a 2D greyscale image, got shape {pixels.shape}")
    if header.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InferenceError(f"photometric interpretation {header.photometric!r} is not "
                             "supported; a radiograph is MONOCHROME1 or MONOCHROME2")
    x = pixels.astype(np.float64) * header.rescale_slope + header.rescale_intercept
    if header.window_center is not None and header.window_width is not None:
        y = _window(x, header.window_center, header.window_width, header.voi_function.upper())
    else:
        lo, hi = np.percentile(x, (0.5, 99.5))
        if hi - lo <= 0:
            raise InferenceError("the image has no contrast (constant pixel values)")
        y = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if header.photometric == "MONOCHROME1":  # minimum value is white: invert after VOI
        y = 1.0 - y
    return y.astype(np.float32)


def pad_to_square(x: torch.Tensor, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) symmetrically to (..., L, L), L = max(H, W); also return (top, left)."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    padded = F.pad(x, (left, side - w - left, top, side - h - top), value=value)
    return padded, (top, left)


def prepare_batch(display: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) display values -> (B, 1, size, size) normalised model input (float32).

    Raises
    ------
    InferenceError
        An image with no contrast within its percentiles.
    """
    if display.ndim != 3:
        raise ValueError(f"expected (B, H, W), got {tuple(display.shape)}")
    x = display.float().unsqueeze(1)
    ones = torch.ones_like(x[:1])
    x, _ = pad_to_square(x, 0.0)
    mask, _ = pad_to_square(ones, 0.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    mask = F.interpolate(mask, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0] > 0.5
    inside = x[:, 0][:, mask]  # (B, N): the image area, same for the whole batch
    q = torch.quantile(inside, torch.tensor(PERCENTILES, device=x.device), dim=1)  # (2, B)
    lo, hi = q[0].view(-1, 1, 1, 1), q[1].view(-1, 1, 1, 1)
    if bool(((hi - lo) <= 1e-6).any()):
        raise InferenceError("the image has no contrast within its 1st-99th percentiles")
    out = ((x - lo) / (hi - lo) * 2.0 - 1.0).clamp(-2.0, 2.0)
    return torch.where(mask, out, torch.full_like(out, PAD_VALUE))


def input_spacing_mm(shape: tuple[int, int], spacing_mm: float | None, size: int) -> float | None:
    """Pixel size of the model input, given the image's shape and its (square) spacing."""
    if spacing_mm is None:
        return None
    return spacing_mm * max(shape) / size


@dataclass(frozen=True)
class Radiograph:
    """A frontal radiograph read from DICOM, as display values plus what was found."""

    display: np.ndarray
    """(rows, columns) float32 in [0, 1], MONOCHROME2 polarity."""
    spacing_mm: tuple[float, float] | None
    """(row, column) spacing: Pixel Spacing, else Imager Pixel Spacing (at the detector)."""
    spacing_source: str
    header: DisplayHeader
    voi: str
    """Which VOI was applied: ``window``, ``voi_lut_sequence`` or ``auto``."""


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None  # several windows: the first is the default
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def header_from(ds: Any) -> DisplayHeader:
    """The display-relevant values of a pydicom dataset (first window when several)."""
    return DisplayHeader(
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
        rescale_slope=_first(ds.get("RescaleSlope")) or 1.0,
        rescale_intercept=_first(ds.get("RescaleIntercept")) or 0.0,
        window_center=_first(ds.get("WindowCenter")),
        window_width=_first(ds.get("WindowWidth")),
        voi_function=str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper(),
    )


def spacing_from(ds: Any) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and the attribute it came from."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2 and float(value[0]) > 0:
                return (float(value[0]), float(value[1])), keyword
        except (TypeError, ValueError):
            continue
    return None, "none"


def read_radiograph(path: str | Path) -> Radiograph:
    """Read a CR/DX file into display values (pydicom imported here, not at module level).

    A VOI LUT Sequence (a table rather than a window) is applied with pydicom's
    ``apply_voi_lut``; a window centre/width goes through :func:`to_display`.

    Raises
    ------
    InferenceError
        Unreadable file or pixel data, a colour or multi-frame image.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad pixel data
        raise InferenceError(f"cannot read pixel data of {Path(path).name}: {exc}") from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InferenceError("colour radiographs are not supported (SamplesPerPixel != 1)")
    if pixels.ndim == 3:
        raise InferenceError(f"multi-frame image ({pixels.shape[0]} frames); expected one frame")
    header = header_from(ds)
    spacing, source = spacing_from(ds)
    if "VOILUTSequence" in ds and header.window_center is None:
        lut = apply_voi_lut(apply_modality_lut(pixels, ds), ds)  # modality LUT first
        display = to_display(np.asarray(lut), DisplayHeader(photometric=header.photometric))
        voi = "voi_lut_sequence"
    else:
        display = to_display(pixels, header)
        voi = "window" if header.window_center is not None else "auto"
    return Radiograph(display, spacing, source, header, voi)
