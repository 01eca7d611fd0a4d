"""Real labelled cardiac MR in the MSD Task02_Heart / LASC 2013 NIfTI layout.

    <root>/imagesTr/la_003.nii.gz   <root>/labelsTr/la_003.nii.gz   (same file names)

nibabel is not a dependency, so :func:`read_nifti` is a small NIfTI-1 reader (single
file ``.nii`` or ``.nii.gz``, either byte order, the common integer and float types,
scl_slope/scl_inter). Volumes are turned into the daemon's convention: ``(z, y, x)``
with x towards patient left, y towards posterior, z towards the head (DICOM LPS axial),
using the sform (or qform) axis directions; oblique affines are snapped to the nearest
axes, never resampled. MSD ships macOS ``._*`` files beside the data; they are skipped.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
           1024: "i8", 1280: "u8"}


@dataclass(frozen=True)
class NiftiVolume:
    array: np.ndarray
    """(z, y, x) in LPS axial order (see module docstring), float32 or the label dtype."""
    spacing: tuple[float, float, float]
    """(dz, dy, dx) in mm."""


def _affine(hdr: bytes, endian: str) -> np.ndarray:
    """4x4 voxel -> RAS mm affine from the sform, else the qform, else pixdim only."""
    pixdim = struct.unpack(endian + "8f", hdr[76:108])
    qform_code, sform_code = struct.unpack(endian + "2h", hdr[252:256])
    if sform_code > 0:
        rows = [struct.unpack(endian + "4f", hdr[280 + 16 * i:296 + 16 * i]) for i in range(3)]
        return np.vstack([np.array(rows), [0, 0, 0, 1]])
    aff = np.eye(4)
    if qform_code > 0:
        b, c, d, qx, qy, qz = struct.unpack(endian + "6f", hdr[256:280])
        a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                      [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                      [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        aff[:3, :3] = r * np.array([pixdim[1], pixdim[2], pixdim[3] * qfac])
        aff[:3, 3] = (qx, qy, qz)
    else:
        aff[:3, :3] = np.diag(pixdim[1:4])
    return aff


def read_nifti(path: str | Path) -> NiftiVolume:
    """Read a 3D NIfTI-1 file into the daemon's (z, y, x) LPS-axial convention.

    Raises
    ------
    ValueError
        Not NIfTI-1 single-file, not 3D (a 4th axis longer than 1), unsupported type.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 352:
        raise ValueError(f"{path}: too short for a NIfTI-1 header")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348:
        raise ValueError(f"{path}: not a NIfTI-1 file (sizeof_hdr != 348)")
    if raw[344:348] not in (b"n+1\x00", b"n+1 "):
        raise ValueError(f"{path}: only single-file NIfTI-1 (.nii) is supported")
    dim = struct.unpack(endian + "8h", raw[40:56])
    if dim[0] < 3 or any(d > 1 for d in dim[4:1 + dim[0]]):
        raise ValueError(f"{path}: expected a 3D volume, dim = {dim[:1 + dim[0]]}")
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    if datatype not in _DTYPES:
        raise ValueError(f"{path}: NIfTI datatype {datatype} is not supported")
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    nx, ny, nz = dim[1], dim[2], dim[3]
    dtype = np.dtype(endian + _DTYPES[datatype])
    data = np.frombuffer(raw, dtype=dtype, count=nx * ny * nz, offset=vox_offset)
    array = data.reshape((nz, ny, nx))  # NIfTI is x-fastest: C order (z, y, x)
    if slope not in (0.0, 1.0) or inter != 0.0:
        array = array.astype(np.float32) * (slope or 1.0) + inter
    return _to_lps_axial(np.array(array), _affine(raw[:348], endian))


def _to_lps_axial(array: np.ndarray, affine: np.ndarray) -> NiftiVolume:
    """Permute and flip (z, y, x) so that x -> left, y -> posterior, z -> superior."""
    cols = affine[:3, :3]  # column i: RAS direction (mm) of voxel axis i (i = x, y, z)
    world_of = [int(np.argmax(np.abs(cols[:, i]))) for i in range(3)]
    if sorted(world_of) != [0, 1, 2]:
        raise ValueError("affine does not map voxel axes onto distinct world axes")
    spacing_ijk = [float(np.linalg.norm(cols[:, i])) for i in range(3)]
    # voxel axis i sits at array axis 2 - i; wanted: world S at axis 0, P at 1, L at 2
    wanted = {2: 0, 1: 1, 0: 2}  # RAS world axis -> target array axis
    perm = [0, 0, 0]
    for i in range(3):
        perm[wanted[world_of[i]]] = 2 - i
    out = np.transpose(array, perm)
    # LPS wants +L (= -R), +P (= -A), +S: flip where the voxel axis points the other way
    for target, source in enumerate(perm):
        i = 2 - source
        w = world_of[i]
        sign = cols[w, i]
        if (w in (0, 1) and sign > 0) or (w == 2 and sign < 0):
            out = np.flip(out, axis=target)
    spacing = tuple(spacing_ijk[2 - perm[a]] for a in range(3))
    return NiftiVolume(np.ascontiguousarray(out), (spacing[0], spacing[1], spacing[2]))


@dataclass(frozen=True)
class RealCase:
    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]


def find_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, image, label) for every labelled image under ``root`` (MSD layout)."""
    root = Path(root)
    pairs = []
    for image in sorted((root / "imagesTr").glob("*.nii*")):
        if image.name.startswith("._"):
            continue
        label = root / "labelsTr" / image.name
        if label.is_file():
            pairs.append((image.name.split(".nii")[0], image, label))
    if not pairs:
        raise FileNotFoundError(f"no imagesTr/labelsTr pairs under {root}")
    return pairs


def load_cases(root: str | Path) -> list[RealCase]:
    """Every labelled case; the LA label is any non-zero voxel (MSD label 1)."""
    cases = []
    for name, image_path, label_path in find_pairs(root):
        image, label = read_nifti(image_path), read_nifti(label_path)
        if image.array.shape != label.array.shape:
            raise ValueError(f"{name}: image {image.array.shape} and label "
                             f"{label.array.shape} differ")
        cases.append(RealCase(name, image.array.astype(np.float32), label.array > 0,
                              image.spacing))
    return cases
