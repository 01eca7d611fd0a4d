"""Reading real scans for site retraining: the grade table, NIfTI-1 and DICOM stacks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.motion.real import load_scans, load_stack, read_grade_table, read_nifti, \
    split_by_group


def write_nifti(path: Path, volume_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                slope: float = 1.0, inter: float = 0.0) -> None:
    """A minimal NIfTI-1 single file (int16), x fastest, as written by common tools."""
    nz, ny, nx = volume_zyx.shape
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<2h", hdr, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", hdr, 76, 1.0, spacing_zyx[2], spacing_zyx[1], spacing_zyx[0],
                     1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352.0)
    struct.pack_into("<2f", hdr, 112, slope, inter)
    hdr[344:348] = b"n+1\x00"
    data = bytes(hdr) + b"\x00" * 4 + volume_zyx.astype("<i2").tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def phantom_volume(nz: int = 12) -> np.ndarray:
    vol = np.zeros((nz, 96, 96), dtype=np.int16)
    yy, xx = np.mgrid[:96, :96]
    vol[:, (yy - 48) ** 2 + (xx - 48) ** 2 < 40 ** 2] = 100
    vol[:, ((yy - 48) / 30) ** 2 + ((xx - 48) / 22) ** 2 < 1] = 1000
    vol += np.arange(nz, dtype=np.int16)[:, None, None]
    return vol


def test_nifti_reader_roundtrip(tmp_path: Path) -> None:
    vol = phantom_volume()
    for name in ("a.nii", "b.nii.gz"):
        write_nifti(tmp_path / name, vol, (0.0607, 0.061, 0.062), slope=2.0, inter=-5.0)
        got, spacing = read_nifti(tmp_path / name)
        assert got.shape == vol.shape
        assert np.allclose(got, vol * 2.0 - 5.0)
        assert spacing == pytest.approx((0.0607, 0.061, 0.062))
    (tmp_path / "bad.nii").write_bytes(b"\x00" * 400)
    with pytest.raises(ValueError, match="not a NIfTI-1"):
        read_nifti(tmp_path / "bad.nii")


def test_grade_table_validation(tmp_path: Path) -> None:
    write_nifti(tmp_path / "s1.nii", phantom_volume(), (0.06, 0.06, 0.06))
    write_nifti(tmp_path / "s2.nii.gz", phantom_volume(), (0.06, 0.06, 0.06))
    table = tmp_path / "grades.csv"
    table.write_text("path,grade,group,voxel_mm\ns1.nii,2,p1,\ns2.nii.gz,4,p2,\"0.08,0.08,0.08\"\n")
    rows = read_grade_table(table)
    assert [(r.grade, r.group) for r in rows] == [(2, "p1"), (4, "p2")]
    assert rows[1].voxel_mm == (0.08, 0.08, 0.08)
    assert load_stack(rows[1])[1] == (0.08, 0.08, 0.08)
    x, grades, groups = load_scans(rows)
    assert x.shape == (2, 8, 1, 192, 192) and grades.tolist() == [2, 4]
    for bad, match in (("path,grade,group\ns1.nii,6,p1\n", "grade"),
                       ("path,grade,group\ns1.nii,2,\n", "group"),
                       ("path,grade,group\nmissing.nii,2,p1\n", "path"),
                       ("path,grade\ns1.nii,2\n", "missing column"),
                       ("path,grade,group\ns1.nii,2,p1\ns1.nii,3,p1\n", "twice")):
        table.write_text(bad)
        with pytest.raises(ValueError, match=match):
            read_grade_table(table)


def test_dicom_folder_is_read_like_the_analyzer(tmp_path: Path) -> None:
    from training.motion.demo import write_stack

    vol = phantom_volume(16).astype(np.float32) / 1000.0 * 1.28  # attenuation-like values
    write_stack(vol, 0.0607, tmp_path / "scan", "HR-pQCT test")
    table = tmp_path / "grades.csv"
    table.write_text("path,grade,group\nscan,3,p9\n")
    rows = read_grade_table(table)
    got, spacing = load_stack(rows[0])
    assert got.shape == (16, 96, 96)
    assert spacing == pytest.approx((0.0607, 0.0607, 0.0607), abs=1e-4)


def test_split_keeps_groups_together() -> None:
    groups = ["a", "a", "b", "c", "c", "d", "e"]
    train, test = split_by_group(groups, 0.4, seed=1)
    assert sorted(train + test) == list(range(len(groups)))
    assert not {groups[i] for i in train} & {groups[i] for i in test}


def test_site_retraining_writes_a_loadable_bundle(tmp_path: Path) -> None:
    import torch

    from qcd.analyzers.motion.analyzer import load_model
    from qcd.bundles import load_bundle
    from training.motion.train import main

    torch.set_num_threads(1)
    lines = ["path,grade,group"]
    for i in range(5):
        write_nifti(tmp_path / f"s{i}.nii", phantom_volume(), (0.061, 0.061, 0.061))
        lines.append(f"s{i}.nii,{1 + i % 5},p{i}")
    (tmp_path / "grades.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "models" / "motion" / "9.0.0"
    assert main(["--real-labels", str(tmp_path / "grades.csv"), "--epochs", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    bundle = load_bundle(tmp_path / "models", "motion")
    assert bundle.path == out
    load_model(bundle)
    assert "real graded scans" in (out / "MODEL_CARD.md").read_text()


def test_a_bundle_with_a_motion_head_reports_the_magnitude(tmp_path: Path,
                                                           cpu_runtime: Any) -> None:
    """A (random-weight) bundle trained with ``--variants head`` runs through the
    analyzer: the grade still comes from the ordinal columns, and the fifth output
    becomes a ``motion_magnitude`` finding in um."""
    import torch

    import json

    from qcd.analyzers.base import SeriesInput
    from qcd.analyzers.motion.analyzer import MotionAnalyzer
    from qcd.analyzers.motion.model import MotionNet
    from qcd.analyzers.motion.preprocess import PREPROCESSING_VERSION
    from qcd.bundles import load_bundle
    from qcd.hashing import sha256_file
    from training.motion.demo import write_stack

    torch.manual_seed(0)
    out = tmp_path / "models" / "motion" / "9.0.0"
    out.mkdir(parents=True)
    torch.save(MotionNet(8, motion_head=True).state_dict(), out / "weights.pt")
    (out / "model.json").write_text(json.dumps({
        "name": "motion", "version": "9.0.0", "architecture": "motionnet-ordinal+motion",
        "weights": "weights.pt", "sha256": sha256_file(out / "weights.pt"),
        "labels": ["1", "2", "3", "4", "5"], "preprocessing": PREPROCESSING_VERSION,
        "input": {"slices": 8, "width": 8, "motion_head": True},
        "grade_edges_um": [60.0, 150.0, 300.0, 600.0]}))
    (out / "MODEL_CARD.md").write_text("# test bundle: random weights\n")
    bundle = load_bundle(tmp_path / "models", "motion")
    paths = write_stack(phantom_volume(16).astype(np.float32) / 1000.0 * 1.28, 0.0607,
                        tmp_path / "scan", "HR-pQCT test")
    findings = MotionAnalyzer().analyze(SeriesInput("1.2.3", "CT", tuple(paths)), bundle,
                                        cpu_runtime)
    found = {f.name: f for f in findings}
    assert found["motion_grade"].value_num in (1.0, 2.0, 3.0, 4.0, 5.0)
    magnitude = found["motion_magnitude"]
    assert magnitude.unit == "um" and magnitude.value_num is not None
    assert magnitude.value_num > 0
    assert magnitude.payload is not None and magnitude.payload["grade_edges_um"]
