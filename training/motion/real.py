"""Real site data for the motion CNN: a grade table, DICOM or NIfTI stacks, preprocessed.

The grade table is a CSV with one row per scan (stack)::

    path,grade,group,voxel_mm
    site1/pat001_radius,2,pat001,
    site1/pat001_tibia,4,pat001,
    site2/pat017.nii.gz,3,pat017,"0.0607,0.0607,0.0607"

``path`` is a DICOM series folder (every non-hidden file one slice) or a NIfTI-1 file
(``.nii`` / ``.nii.gz``), relative to the CSV's folder or absolute; ``grade`` is the
operator's 1-5 grade; ``group`` the patient id (a patient's scans never straddle train
and test); ``voxel_mm`` ("z,y,x") is optional and overrides a NIfTI header's pixdim.
NIfTI is read by a minimal numpy reader (no nibabel needed): axes are taken as stored
(x fastest, z = slices), the orientation matrices are ignored - motion grading is
indifferent to in-plane flips. Slices are preprocessed by the daemon's own
:func:`qcd.analyzers.motion.preprocess.prepare`.
"""

from __future__ import annotations

import csv
import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qcd.analyzers.motion.preprocess import N_SLICES, prepare

REQUIRED_COLUMNS = ("path", "grade", "group")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8"}


@dataclass(frozen=True)
class GradeRow:
    path: Path
    grade: int
    group: str
    voxel_mm: tuple[float, float, float] | None = None
    line: int = 0

    @property
    def is_nifti(self) -> bool:
        return self.path.name.lower().endswith(NIFTI_SUFFIXES)


def read_grade_table(csv_path: str | Path) -> list[GradeRow]:
    """Validate the whole table before any image is read.

    Raises
    ------
    ValueError
        Missing column, grade not an integer 1-5, empty group, a path that does not
        exist, a bad voxel_mm, a path listed twice, or no rows; the message names the
        line and column.
    """
    csv_path = Path(csv_path)
    rows: list[GradeRow] = []
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected "
                             f"{', '.join(REQUIRED_COLUMNS)} (optional: voxel_mm), got {header}")
        reader.fieldnames = header
        for raw in reader:
            line = reader.line_num
            cell = {k: (raw.get(k) or "").strip() for k in (*REQUIRED_COLUMNS, "voxel_mm")}

            def bad(column: str, message: str, line: int = line) -> ValueError:
                return ValueError(f"{csv_path}, line {line}, column '{column}': {message}")

            if cell["grade"] not in {"1", "2", "3", "4", "5"}:
                raise bad("grade", f"{cell['grade']!r} is not a motion grade 1-5")
            if not cell["group"]:
                raise bad("group", "empty; expected a patient id")
            path = Path(cell["path"]).expanduser()
            path = (path if path.is_absolute() else csv_path.parent / path).resolve()
            nifti = path.name.lower().endswith(NIFTI_SUFFIXES)
            if not cell["path"] or not (path.is_file() if nifti else path.is_dir()):
                raise bad("path", f"{path} is not a DICOM folder or .nii/.nii.gz file")
            voxel = None
            if cell["voxel_mm"]:
                try:
                    v = [float(p) for p in cell["voxel_mm"].replace(";", ",").split(",")]
                except ValueError:
                    v = []
                if len(v) != 3 or not all(math.isfinite(x) and x > 0 for x in v):
                    raise bad("voxel_mm", f"{cell['voxel_mm']!r} is not 'z,y,x' in mm")
                voxel = (v[0], v[1], v[2])
            if any(r.path == path for r in rows):
                raise bad("path", f"{path} is listed twice")
            rows.append(GradeRow(path, int(cell["grade"]), cell["group"], voxel, line))
    if not rows:
        raise ValueError(f"{csv_path}: no rows below the header")
    return rows


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI-1 file -> ((z, y, x) float32 with scl_slope/inter applied, spacing z, y, x mm).

    Raises
    ------
    ValueError
        Not NIfTI-1 (bad sizeof_hdr or magic), not 3-D, unsupported datatype, or
        truncated data.
    """
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    if len(raw) < 352:
        raise ValueError(f"{path}: too short for a NIfTI-1 header")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348 or raw[344:347] not in (b"n+1", b"ni1"):
        raise ValueError(f"{path}: not a NIfTI-1 file (sizeof_hdr/magic)")
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    ndim = dim[0]
    shape = [d for d in dim[1:1 + ndim]]
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got dims {dim[1:1 + ndim]}")
    if datatype not in _NIFTI_DTYPES:
        raise ValueError(f"{path}: unsupported NIfTI datatype {datatype}")
    dtype = np.dtype(endian + _NIFTI_DTYPES[datatype])
    count = int(np.prod(shape))
    if len(raw) < offset + count * dtype.itemsize:
        raise ValueError(f"{path}: data shorter than the header's {shape} x {dtype}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    volume = data.reshape(shape[::-1]).astype(np.float32)  # Fortran order: (z, y, x)
    if slope not in (0.0,) and math.isfinite(slope):
        volume = volume * np.float32(slope) + np.float32(inter if math.isfinite(inter) else 0)
    spacing = (abs(float(pixdim[3])), abs(float(pixdim[2])), abs(float(pixdim[1])))
    return volume, spacing


def load_stack(row: GradeRow) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The (z, y, x) volume and spacing (mm) of one row, as the analyzer would read it."""
    if row.is_nifti:
        volume, spacing = read_nifti(row.path)
        if row.voxel_mm is not None:
            spacing = row.voxel_mm
        if not all(s > 0 and math.isfinite(s) for s in spacing):
            raise ValueError(f"{row.path}: no usable voxel size in the header; give "
                             "voxel_mm 'z,y,x' in the grade table")
        return volume, spacing
    from qcd.analyzers.volume import load_volume

    files = sorted(p for p in row.path.iterdir() if p.is_file() and not p.name.startswith("."))
    vol = load_volume(files, min_slices=N_SLICES)
    return vol.array, vol.spacing


def load_scans(rows: list[GradeRow], n_slices: int = N_SLICES
               ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """(scans, n_slices, 1, S, S) float16 model inputs, grades, groups."""
    xs, grades, groups = [], [], []
    for r in rows:
        volume, spacing = load_stack(r)
        x, _ = prepare(volume, spacing, n_slices)
        if x.shape[0] != n_slices:
            raise ValueError(f"{r.path}: {x.shape[0]} slices; at least {n_slices} needed")
        xs.append(x.half())
        grades.append(r.grade)
        groups.append(r.group)
    return torch.stack(xs), np.array(grades), groups


def split_by_group(groups: list[str], test_fraction: float, seed: int
                   ) -> tuple[list[int], list[int]]:
    """(train, test) indices; whole groups go to one side."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    n_test = max(1, int(round(test_fraction * len(names))))
    test_groups = {names[i] for i in order[:n_test]}
    train = [i for i, g in enumerate(groups) if g not in test_groups]
    test = [i for i, g in enumerate(groups) if g in test_groups]
    return train, test
