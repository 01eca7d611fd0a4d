"""Real-data training path: label table, DICOM cases, grouped folds, end-to-end CLI run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from qcd.analyzers.earl.phantom import ReconParams, apply_recon
from qcd.analyzers.earl.preprocess import EDGE_CLIP, prepare
from qcd.analyzers.earl.suv import SuvUnavailable
from qcd.bundles import load_bundle
from qcd.errors import InferenceError
from qcd.synth import write_pet_series
from training.earl import real
from training.earl.simulate import render_body
from training.earl.train import main

VOXEL = (4.0, 4.0, 4.0)
SHAPE_MM = (240.0, 160.0, 192.0)  # (60, 40, 48) voxels
FWHM = {"clinical": 4.0, "EARL1": 8.0, "EARL2": 6.0}
# (folder, label, group): every group holds an EARL case, so any training fold has one
CASES = [("p1_a", "clinical", "p1"), ("p1_b", "EARL1", "p1"),
         ("p2_a", "EARL2", "p2"), ("p2_b", "clinical", "p2"),
         ("p3_a", "EARL1", "p3"), ("p3_b", "EARL2", "p3")]


def _volume(label: str, seed: int) -> np.ndarray:
    params = ReconParams(VOXEL, FWHM[label], 0.0, 0.05)
    body = render_body(params, np.random.default_rng(seed), shape_mm=SHAPE_MM)
    return apply_recon(body, params, np.random.default_rng(seed + 100))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Six small PET series written as DICOM, and a label table with relative paths."""
    root = tmp_path_factory.mktemp("real")
    volumes = {}
    for seed, (name, label, _) in enumerate(CASES):
        volumes[name] = _volume(label, seed)
        write_pet_series(volumes[name], VOXEL, root / "series" / name, seed=seed)
    csv = root / "labels.csv"
    csv.write_text("path,label,group\n" + "".join(
        f"series/{name},{label},{group}\n" for name, label, group in CASES))
    return csv, volumes


def _table(tmp_path: Path, text: str) -> Path:
    (tmp_path / "s1").mkdir(exist_ok=True)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_read_label_table_resolves_paths_and_reads_rows(
        dataset: tuple[Path, dict[str, np.ndarray]]) -> None:
    csv, _ = dataset
    rows = real.read_label_table(csv)
    assert [(r.path.name, r.label, r.group) for r in rows] == CASES
    assert all(r.path.is_absolute() and r.path.is_dir() and not r.is_nifti for r in rows)
    assert rows[0].line == 2 and rows[0].units == "suv" and rows[0].voxel_mm is None


@pytest.mark.parametrize(("text", "where"), [
    ("path,label,group\ns1,EARL1,p1\ns1x,EARL1,p2\n", "line 3, column 'path'"),
    ("path,label,group\ns1,EARL3,p1\n", "line 2, column 'label'"),
    ("path,label,group\ns1,EARL1,\n", "line 2, column 'group'"),
    ("path,label\ns1,EARL1\n", "missing column(s) 'group'"),
    ("path,label,group,voxel_mm\ns1,EARL1,p1,\"3,4,4\"\n", "line 2, column 'voxel_mm'"),
    ("path,label,group\ns1,EARL1,p1\ns1,EARL2,p2\n", "line 3, column 'path'"),
    ("path,label,group\n", "no rows"),
])
def test_read_label_table_errors_name_line_and_column(tmp_path: Path, text: str,
                                                      where: str) -> None:
    with pytest.raises(ValueError, match=r"labels\.csv") as info:
        real.read_label_table(_table(tmp_path, text))
    assert where in str(info.value)


def test_label_errors_list_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'EARL3' is not one of clinical, EARL1, EARL2"):
        real.read_label_table(_table(tmp_path, "path,label,group\ns1,EARL3,p1\n"))
    (tmp_path / "a.nii").write_bytes(b"")
    with pytest.raises(ValueError, match="line 2, column 'units'.*not one of suv, bqml"):
        real.read_label_table(_table(tmp_path, "path,label,group,units\na.nii,EARL1,p1,cnts\n"))
    with pytest.raises(ValueError, match="column 'units'.*cannot be converted to SUV"):
        real.read_label_table(_table(tmp_path, "path,label,group,units\na.nii,EARL1,p1,BQML\n"))
    with pytest.raises(ValueError, match="column 'voxel_mm'.*three positive sizes"):
        real.read_label_table(_table(tmp_path, "path,label,group,voxel_mm\na.nii,EARL1,p1,3;4\n"))


def test_load_case_reads_dicom_as_the_analyzer_does(
        dataset: tuple[Path, dict[str, np.ndarray]]) -> None:
    csv, volumes = dataset
    row = real.read_label_table(csv)[1]
    case = real.load_case(row)
    assert case.s1.shape == case.s2.shape == (10, 1, 300, 200)
    assert case.s1.dtype == np.float16 and case.label == "EARL1"
    assert case.params == {"source": str(row.path), "group": "p1", "spacing": list(VOXEL)}
    s1, _, s2, _ = prepare(volumes[row.path.name], VOXEL)
    # 16-bit storage: one step is at most max(SUV)/32767 per voxel, scaled by 1/EDGE_CLIP;
    # the case itself is float16 (relative precision 2**-11)
    step = float(volumes[row.path.name].max()) / 32767 / EDGE_CLIP
    for got, want in ((case.s1, s1), (case.s2, s2)):
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2**-10, atol=2 * step)
    assert np.abs(s1).max() > 100 * step  # the comparison is not trivially of zeros


def test_load_case_without_suv_names_the_series(tmp_path: Path) -> None:
    paths = write_pet_series(np.ones((30, 8, 8), np.float32), VOXEL, tmp_path / "nosuv")
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.PatientWeight
        ds.save_as(p)
    row = real.LabelRow(tmp_path / "nosuv", "clinical", "p1", line=7)
    with pytest.raises(SuvUnavailable, match=r"nosuv \(label table line 7\).*PatientWeight"):
        real.load_case(row)


def test_load_case_refuses_a_folder_that_is_not_one_series(tmp_path: Path) -> None:
    write_pet_series(np.ones((30, 8, 8), np.float32), VOXEL, tmp_path / "mixed")
    (tmp_path / "mixed" / "notes.txt").write_text("not DICOM")
    with pytest.raises(InferenceError, match=r"mixed \(label table line 4\): not one readable"):
        real.load_case(real.LabelRow(tmp_path / "mixed", "EARL1", "p1", line=4))


def test_nifti_without_nibabel_says_how_to_get_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "case.nii.gz").write_bytes(b"")
    row = real.read_label_table(_table(tmp_path, "path,label,group\ncase.nii.gz,EARL2,p1\n"))[0]
    assert row.is_nifti
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import fails even if installed
    with pytest.raises(ImportError, match="reading NIfTI needs nibabel: pip install nibabel"):
        real.load_case(row)


def test_grouped_folds_keep_groups_whole_and_cover_every_case_once() -> None:
    groups = ["a", "a", "a", "b", "c", "c", "d", "e", "e", "f", "g", "a"]
    folds = real.grouped_folds(groups, k=3, seed=1)
    assert len(folds) == 3
    tests = [t for _, t in folds]
    assert sorted(i for t in tests for i in t) == list(range(len(groups)))
    for train, test in folds:
        assert sorted(train + test) == list(range(len(groups)))
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    sizes = sorted(len(t) for t in tests)
    assert sizes[-1] - sizes[0] <= 4  # balanced up to the largest group
    assert folds == real.grouped_folds(groups, k=3, seed=1)
    with pytest.raises(ValueError, match="at least 8 groups.*has 7"):
        real.grouped_folds(groups, k=8)
    with pytest.raises(ValueError, match="k must be >= 2"):
        real.grouped_folds(groups, k=1)


def test_cli_cross_validates_then_writes_a_verified_bundle(
        dataset: tuple[Path, dict[str, np.ndarray]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    csv, _ = dataset
    out = tmp_path / "models" / "earl" / "1.0.0"
    assert main(["--real-labels", str(csv), "--cv", "2", "--epochs", "1", "--workers", "1",
                 "--device", "cpu", "--seed", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    cv = json.loads((out / "cross_validation.json").read_text())
    assert printed == cv
    assert cv["k"] == 2 and len(cv["folds"]) == 2 and cv["n_cases"] == 6
    assert sum(f["n_cases"] for f in cv["folds"]) == 6 == cv["pooled"]["n_cases"]
    assert set(cv["mean"]) >= {"stage1_accuracy", "stage2_accuracy", "accuracy_per_class"}
    assert "p1" not in json.dumps(cv)  # group ids (maybe patient ids) stay out of the outputs
    bundle = load_bundle(tmp_path / "models", "earl")
    spec = bundle.spec
    assert (out / "weights.pt").is_file() and bundle.version == "1.0.0"
    assert spec["training"]["data"] == {
        "kind": "real PET", "label_table": "labels.csv", "n_cases": 6, "n_groups": 3,
        "label_counts": {"clinical": 2, "EARL1": 2, "EARL2": 2},
        "formats": {"dicom": 6, "nifti": 0}}
    assert spec["training"]["n_train_cases"] == 6
    assert spec["metrics"] == {"cross_validated_real": cv}
    assert "held_out_simulated" not in spec["metrics"]
    assert "cross-validation" in (out / "MODEL_CARD.md").read_text()
