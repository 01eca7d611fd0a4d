"""The atrium analyzer on a simulated DICOM MR series: series rules, geometry order,
findings (volume, index, band, mask) with an oracle model, and the missing-height path."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F

from qcd.analyzers.atrium.analyzer import AtriumAnalyzer, AtriumRules
from qcd.analyzers.atrium.postprocess import postprocess
from qcd.analyzers.atrium.preprocess import PREPROCESSING_VERSION
from qcd.analyzers.atrium.volume import bsa_mosteller, lavi_band
from qcd.analyzers.base import SeriesInput
from qcd.bundles import Bundle
from qcd.outputs.maskcodec import decode_mask, is_mask_payload
from training.atrium.demo import DemoCase, write_case

SEED = 4242


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small tensors: torch's thread pool only adds overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class OraclePredictor:
    """Returns confident logits of the true mask on the network's padded grid."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = torch.from_numpy(truth).float()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.truth.shape[1:]
        t = F.pad(self.truth, (0, x.shape[3] - w, 0, x.shape[2] - h))
        return ((t - 0.5) * 20)[:, None]


class OracleRuntime:
    def __init__(self, truth: np.ndarray) -> None:
        self.predictor_ = OraclePredictor(truth)
        self.keys: list[str] = []

    def predictor(self, key: str, factory: Callable[[], Any]) -> OraclePredictor:
        self.keys.append(key)
        return self.predictor_


def bundle(tmp_path: Path) -> Bundle:
    spec = {"name": "atrium", "version": "0.0.1", "weights": "weights.pt", "sha256": "0" * 64,
            "labels": ["background", "left_atrium"], "preprocessing": PREPROCESSING_VERSION,
            "input": {"context": 1, "channels": 3, "grid_mm": 1.25}, "base_channels": 8,
            "postprocessing": {"threshold": 0.5, "closing_mm": 2.5, "min_slice_mm2": 20.0}}
    return Bundle("atrium", "0.0.1", tmp_path, spec, "0" * 64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoCase:
    return write_case(tmp_path_factory.mktemp("mr"), SEED)


def headers(demo: DemoCase) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in demo.paths]


def series(demo: DemoCase) -> SeriesInput:
    return SeriesInput(str(headers(demo)[0].SeriesInstanceUID), "MR", tuple(demo.paths))


def test_accepts_a_3d_cardiac_stack_and_says_why_not_otherwise(demo: DemoCase) -> None:
    analyzer = AtriumAnalyzer()
    hs = headers(demo)
    assert analyzer.accepts(hs).ok
    ct = copy.deepcopy(hs)
    for h in ct:
        h.Modality = "CT"
    assert "not an MR" in analyzer.accepts(ct).reason
    assert ">= 20" in analyzer.accepts(hs[:10]).reason
    brain = copy.deepcopy(hs)
    for h in brain:
        h.SeriesDescription = "T2 brain axial"
    assert "description" in analyzer.accepts(brain).reason
    assert AtriumAnalyzer(AtriumRules(description="")).accepts(brain).ok
    thick = copy.deepcopy(hs)
    for h in thick:
        h.ImagePositionPatient = [*h.ImagePositionPatient[:2], h.ImagePositionPatient[2] * 6]
    assert "7.5 mm" in analyzer.accepts(thick).reason
    cine = copy.deepcopy(hs)
    cine[1].ImagePositionPatient = cine[0].ImagePositionPatient
    assert "geometry" in analyzer.accepts(cine).reason
    assert "sequence" in AtriumAnalyzer(AtriumRules(sequence=r"\bSE\b")).accepts(hs).reason
    assert AtriumAnalyzer(AtriumRules(sequence=r"GR|SSFP")).accepts(hs).ok


def test_findings_with_an_oracle_model(demo: DemoCase, tmp_path: Path) -> None:
    runtime = OracleRuntime(demo.label)
    findings = {f.name: f for f in AtriumAnalyzer().analyze(series(demo), bundle(tmp_path),
                                                            runtime)}
    assert runtime.keys == ["atrium/0.0.1:000000000000"]
    expected = postprocess(demo.label.astype(np.float32), demo.spacing)
    volume_ml = float(expected.sum()) * float(np.prod(demo.spacing)) / 1000
    la = findings["la_volume"]
    assert la.unit == "ml" and la.value_num == pytest.approx(volume_ml, abs=0.01)
    assert la.value_num == pytest.approx(demo.params["label_ml"], rel=0.02)
    assert la.payload["spacing_mm"] == [1.25, 1.25, 1.25]
    bsa = bsa_mosteller(round(demo.params["height_m"], 3) * 100,
                        round(demo.params["weight_kg"], 1))
    index = findings["la_volume_index"]
    assert index.unit == "ml/m2" and index.value_num == pytest.approx(volume_ml / bsa, abs=0.01)
    assert index.payload["bsa_m2"] == pytest.approx(bsa, abs=1e-4)
    assert "Mosteller" in index.payload["bsa_formula"]
    assert findings["lavi_band"].value_text == lavi_band(volume_ml / bsa)
    mask = findings["la_mask"]
    assert is_mask_payload(mask.payload) and mask.payload["segment"] == "left_atrium"
    assert np.array_equal(decode_mask(mask.payload["mask"]), expected)
    # frames follow the slice positions (feet to head), not the shuffled instance numbers
    by_uid = {str(h.SOPInstanceUID): h for h in headers(demo)}
    z = [float(by_uid[u].ImagePositionPatient[2]) for u in mask.payload["sop_instance_uids"]]
    assert z == sorted(z) and len(z) == len(demo.paths)
    numbers = [int(by_uid[u].InstanceNumber) for u in mask.payload["sop_instance_uids"]]
    assert numbers != sorted(numbers)


def test_no_index_without_height_and_weight(tmp_path: Path) -> None:
    demo = write_case(tmp_path / "mr", SEED + 1, height_m=None, weight_kg=80)
    findings = {f.name: f for f in AtriumAnalyzer().analyze(
        series(demo), bundle(tmp_path), OracleRuntime(demo.label))}
    assert "la_volume_index" not in findings and "lavi_band" not in findings
    why = findings["la_volume_index_unavailable"]
    assert why.value_text == "PatientSize missing or zero in the header"
    assert findings["la_volume"].value_num > 0 and "la_mask" in findings


def test_nothing_segmented_reports_zero_and_no_mask(demo: DemoCase, tmp_path: Path) -> None:
    findings = {f.name: f for f in AtriumAnalyzer().analyze(
        series(demo), bundle(tmp_path), OracleRuntime(np.zeros_like(demo.label)))}
    assert findings["la_volume"].value_num == 0
    assert "la_not_found" in findings and "la_mask" not in findings


def test_outline_is_the_boundary_of_the_largest_slice() -> None:
    from qcd.analyzers.atrium.analyzer import outline

    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2
    mask = np.zeros((3, 40, 40), dtype=np.uint8)
    mask[0, 18:22, 18:22] = 1
    mask[1] = disc
    got = outline(mask)
    assert got["slice"] == 1 and got["closed"] is False
    radii = [np.hypot(r - 20, c - 20) for r, c in got["points"]]
    assert 9.0 <= min(radii) and max(radii) <= 10.0  # on the rim, none inside
    assert 50 <= len(got["points"]) <= 80  # ~ 2 pi r boundary pixels
