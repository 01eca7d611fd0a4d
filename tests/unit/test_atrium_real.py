"""The minimal NIfTI-1 reader and the MSD Task02_Heart / LASC layout, on tiny files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training.atrium.real import find_pairs, load_cases, read_nifti


def write_nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray, *, endian: str = "<",
                datatype: int = 4, slope: float = 0.0, sform: bool = True) -> Path:
    """A single-file NIfTI-1 of ``data_xyz`` (array indexed [x, y, z]) with ``affine``."""
    hdr = bytearray(352)
    struct.pack_into(endian + "i", hdr, 0, 348)
    dims = [3, *data_xyz.shape, 1, 1, 1, 1]
    struct.pack_into(endian + "8h", hdr, 40, *dims)
    dtype = {4: "i2", 16: "f4", 2: "u1"}[datatype]
    struct.pack_into(endian + "2h", hdr, 70, datatype, np.dtype(dtype).itemsize * 8)
    pixdim = [1.0, *np.linalg.norm(affine[:3, :3], axis=0), 1, 1, 1, 1]
    struct.pack_into(endian + "8f", hdr, 76, *pixdim)
    struct.pack_into(endian + "f", hdr, 108, 352.0)
    struct.pack_into(endian + "2f", hdr, 112, slope, 0.0)
    struct.pack_into(endian + "2h", hdr, 252, 0, 1 if sform else 0)
    for i in range(3):
        struct.pack_into(endian + "4f", hdr, 280 + 16 * i, *affine[i])
    hdr[344:348] = b"n+1\x00"
    body = np.asarray(data_xyz, dtype=np.dtype(endian + dtype)).tobytes(order="F")
    raw = bytes(hdr) + body
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def volume_xyz() -> np.ndarray:
    return np.arange(4 * 3 * 2, dtype=np.int16).reshape((4, 3, 2), order="F")


def test_lps_affine_keeps_axes_and_reads_spacing(tmp_path: Path) -> None:
    # x -> left, y -> posterior (RAS -x, -y), z -> superior: already the DICOM order
    aff = np.diag([-0.7, -0.8, 2.5, 1.0])
    vol = read_nifti(write_nifti(tmp_path / "a.nii", volume_xyz(), aff))
    assert vol.array.shape == (2, 3, 4) and vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert np.array_equal(vol.array, volume_xyz().transpose(2, 1, 0))


def test_ras_affine_is_flipped_to_lps(tmp_path: Path) -> None:
    aff = np.diag([1.25, 1.25, 1.37, 1.0])  # MSD-like: x -> right, y -> anterior
    vol = read_nifti(write_nifti(tmp_path / "b.nii.gz", volume_xyz(), aff, endian=">"))
    expected = volume_xyz().transpose(2, 1, 0)[:, ::-1, ::-1]
    assert np.array_equal(vol.array, expected)
    assert vol.spacing == pytest.approx((1.37, 1.25, 1.25))


def test_permuted_axes_and_scaling(tmp_path: Path) -> None:
    # voxel i runs superior, j runs left, k runs posterior (a sagittal-ish storage)
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2], aff[3, 3] = 2.0, -1.0, -1.5, 1.0
    data = volume_xyz()
    vol = read_nifti(write_nifti(tmp_path / "c.nii", data, aff, slope=0.5))
    # target (z=S, y=P, x=L) = (i, k, j)
    assert np.allclose(vol.array, data.transpose(0, 2, 1) * 0.5)
    assert vol.spacing == pytest.approx((2.0, 1.5, 1.0))


def test_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\0" * 400)
    with pytest.raises(ValueError, match="NIfTI-1"):
        read_nifti(bad)
    short = tmp_path / "short.nii"
    short.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="short"):
        read_nifti(short)
    four_d = write_nifti(tmp_path / "4d.nii", volume_xyz(), np.eye(4))
    raw = bytearray(four_d.read_bytes())
    struct.pack_into("<8h", raw, 40, 4, 4, 3, 2, 5, 1, 1, 1)
    four_d.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="3D"):
        read_nifti(four_d)


def test_msd_layout_pairs_and_cases(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    aff = np.diag([1.25, 1.25, 1.37, 1.0])
    for name in ("la_003", "la_004"):
        write_nifti(tmp_path / "imagesTr" / f"{name}.nii.gz", volume_xyz() * 10, aff)
        write_nifti(tmp_path / "labelsTr" / f"{name}.nii.gz",
                    (volume_xyz() > 12).astype(np.uint8), aff, datatype=2)
    (tmp_path / "imagesTr" / "._la_003.nii.gz").write_bytes(b"mac resource fork")
    write_nifti(tmp_path / "imagesTr" / "la_009.nii.gz", volume_xyz(), aff)  # no label
    assert [p[0] for p in find_pairs(tmp_path)] == ["la_003", "la_004"]
    cases = load_cases(tmp_path)
    assert len(cases) == 2 and cases[0].label.dtype == bool
    assert cases[0].label.sum() == (volume_xyz() > 12).sum()
    assert cases[0].image.dtype == np.float32 and cases[0].spacing == pytest.approx(
        (1.37, 1.25, 1.25))
    with pytest.raises(FileNotFoundError):
        find_pairs(tmp_path / "nothing")
