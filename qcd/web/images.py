"""Key images of a series as PNG, rendered from the spooled instances.

Which planes are "key" comes from the findings' payloads, so analyzers decide without
the UI knowing them:

- ``stage1_slices_mm`` / ``stage2_slices_mm`` (EARL): sagittal planes, in mm on the
  analyzer's grid from the volume's first column;
- ``key_slices``, ``slices`` or ``slice_indices``: axial slice indices (motion, atrium);
- ``contour``: ``{"slice": k, "points": [[row, col], ...]}`` drawn in red on axial
  slice ``k`` as a closed polyline, or pixel by pixel with ``"closed": false`` (an
  unordered outline such as the boundary of the LA segmentation);
- otherwise the middle axial slice.

PNG is written with zlib alone (no imaging library), windowed on the 1st-99.5th
percentile of the plane.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AXIAL_KEYS = ("key_slices", "slices", "slice_indices")
SAGITTAL_MM_KEYS = ("stage1_slices_mm", "stage2_slices_mm")
MAX_KEY_IMAGES = 6


@dataclass(frozen=True)
class KeyImage:
    """One plane to show: ``plane`` is ``axial`` or ``sagittal``; ``index`` in voxels."""

    plane: str
    index: int
    label: str
    contour: bool = False


def key_images(findings: Sequence[Mapping[str, Any]], n_slices: int | None = None,
               spacing_x: float | None = None) -> list[KeyImage]:
    """The key images named by the findings' payloads (deduplicated, at most six)."""
    out: list[KeyImage] = []
    for f in findings:
        payload = f.get("payload") or {}
        for key in AXIAL_KEYS:
            for i in _ints(payload.get(key))[:3]:
                out.append(KeyImage("axial", i, f"{f.get('name')} slice {i}"))
        for key in SAGITTAL_MM_KEYS:
            values = payload.get(key)
            if isinstance(values, list) and values and spacing_x:
                mid = float(values[len(values) // 2])
                out.append(KeyImage("sagittal", int(round(mid / spacing_x)),
                                    f"{f.get('name')} {key.split('_')[0]} sagittal {mid:g} mm"))
        contour = payload.get("contour")
        if isinstance(contour, Mapping) and isinstance(contour.get("slice"), int):
            out.append(KeyImage("axial", int(contour["slice"]), f"{f.get('name')} contour",
                                contour=True))
    if not out and n_slices:
        out.append(KeyImage("axial", n_slices // 2, "middle slice"))
    seen: set[tuple[str, int, bool]] = set()
    unique = []
    for k in out:
        if (k.plane, k.index, k.contour) not in seen:
            seen.add((k.plane, k.index, k.contour))
            unique.append(k)
    return unique[:MAX_KEY_IMAGES]


def _ints(value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    return [int(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]


def contour_points(findings: Sequence[Mapping[str, Any]],
                   index: int) -> tuple[list[tuple[int, int]], bool]:
    """The contour drawn on axial slice ``index``, and whether it is a closed polyline."""
    for f in findings:
        contour = (f.get("payload") or {}).get("contour")
        if isinstance(contour, Mapping) and contour.get("slice") == index:
            return ([(int(p[0]), int(p[1])) for p in contour.get("points", [])
                     if isinstance(p, (list, tuple)) and len(p) == 2],
                    contour.get("closed", True) is not False)
    return [], True


def plane(volume: np.ndarray, kind: str, index: int) -> np.ndarray:
    """A 2D plane of a (z, y, x) volume; sagittal planes are shown head up.

    Raises
    ------
    ValueError
        Unknown plane or index outside the volume.
    """
    if kind == "axial":
        if not 0 <= index < volume.shape[0]:
            raise ValueError(f"axial index {index} outside 0-{volume.shape[0] - 1}")
        return volume[index]
    if kind == "sagittal":
        if not 0 <= index < volume.shape[2]:
            raise ValueError(f"sagittal index {index} outside 0-{volume.shape[2] - 1}")
        return volume[::-1, :, index]
    raise ValueError(f"plane {kind!r} is not allowed; allowed: axial, sagittal")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Window on the 1st-99.5th percentile."""
    lo, hi = np.percentile(image, [1.0, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def draw_contour(gray: np.ndarray, points: Sequence[tuple[int, int]],
                 closed: bool = True) -> np.ndarray:
    """RGB copy of ``gray`` with ``points`` in red: a closed polyline through them, or,
    with ``closed=False``, the points themselves (an outline given pixel by pixel, e.g.
    the boundary of a segmentation, which has no natural order)."""
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    h, w = gray.shape
    if not closed:
        for r, c in points:
            if 0 <= r < h and 0 <= c < w:
                rgb[r, c] = (255, 0, 0)
        return rgb
    for (r0, c0), (r1, c1) in zip(points, [*points[1:], *points[:1]], strict=False):
        n = max(abs(r1 - r0), abs(c1 - c0), 1)
        rr = np.clip(np.round(np.linspace(r0, r1, n + 1)).astype(int), 0, h - 1)
        cc = np.clip(np.round(np.linspace(c0, c1, n + 1)).astype(int), 0, w - 1)
        rgb[rr, cc] = (255, 0, 0)
    return rgb


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grayscale (H, W) or RGB (H, W, 3) array -> PNG bytes."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        colour, rows = 0, pixels
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        colour, rows = 2, pixels.reshape(pixels.shape[0], -1)
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got {pixels.shape}")
    h, w = pixels.shape[:2]
    raw = np.hstack([np.zeros((h, 1), np.uint8), rows]).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


class VolumeCache:
    """The last few loaded volumes (loading a series costs far more than a plane)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[np.ndarray, tuple[float, float, float]]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def get(self, series_uid: str, paths: Sequence[Path]
            ) -> tuple[np.ndarray, tuple[float, float, float]]:
        with self._lock:
            if series_uid in self._items:
                self._items.move_to_end(series_uid)
                return self._items[series_uid]
        item = _load(paths)
        with self._lock:
            self._items[series_uid] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item


def _load(paths: Sequence[Path]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A geometry-ordered volume, or for projection images (CR, DX) the first frame."""
    import pydicom  # only when images are asked for

    from qcd.analyzers.volume import load_volume
    from qcd.errors import InferenceError

    if len(paths) > 1:
        try:
            volume = load_volume(paths, min_slices=2)
            return volume.array, volume.spacing
        except InferenceError:
            pass
    ds = pydicom.dcmread(paths[0])
    pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    if pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        return pixels, (1.0, 1.0, 1.0)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    return pixels[None], (1.0, 1.0, 1.0)
