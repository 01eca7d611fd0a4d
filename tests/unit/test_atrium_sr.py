"""The LA mask finding becomes a SEG; the SR's volume group references it (TID 1411)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from qcd.analyzers.base import Finding
from qcd.outputs.codes import concept_for
from qcd.outputs.maskcodec import mask_payload
from qcd.outputs.reports import report_uids, seg_uids
from qcd.outputs.seg import build_mask_seg, read_seg_mask
from qcd.outputs.sr import ModelInfo, build_sr
from qcd.outputs.write import write_part10
from qcd.synth import SeriesSpec, make_study

MODEL = ModelInfo("atrium", "1.0.0", "ab" * 32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    paths = make_study(tmp_path_factory.mktemp("mr"),
                       [SeriesSpec("MR", 8, "Cardiac LA 3D bSSFP", "HEART")], size=16)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]  # as ReportBuilder


def findings(order: list[pydicom.Dataset], mask: np.ndarray) -> list[Finding]:
    return [Finding("la_volume", value_num=12.5, unit="ml"),
            Finding("la_volume_index", value_num=6.25, unit="ml/m2"),
            Finding("lavi_band", value_text="normal"),
            Finding("la_mask", payload=mask_payload(
                mask, [str(s.SOPInstanceUID) for s in order], "left_atrium"))]


def test_seg_and_sr_round_trip(sources: list[pydicom.Dataset], tmp_path: Path) -> None:
    order = sources[::-1]  # the analyzer's slice order need not be the file order
    mask = np.zeros((8, 16, 16), bool)
    mask[2:5, 4:9, 3:8] = True
    found = findings(order, mask)
    seg = build_mask_seg(sources, found[-1].payload, algorithm=MODEL,
                         series_instance_uid="1.2.826.0.1.3680043.10.1499.7.1",
                         sop_instance_uid="1.2.826.0.1.3680043.10.1499.7.1.1")
    seg_back = hd.seg.segread(write_part10(seg, tmp_path / "seg.dcm"))
    assert np.array_equal(read_seg_mask(seg_back, order), mask)
    assert seg_back.SegmentSequence[0].SegmentLabel == "Left atrium"

    sr = build_sr(sources, found, analyzer="atrium", model=MODEL,
                  series_instance_uid="1.2.826.0.1.3680043.10.1499.7.2",
                  sop_instance_uid="1.2.826.0.1.3680043.10.1499.7.2.1", segmentation=seg)
    path = write_part10(sr, tmp_path / "sr.dcm")
    back = hd.sr.srread(path)
    (group,) = back.content.get_volumetric_roi_measurement_groups()
    assert group.finding_type.value == codes.SCT.LeftAtrium.value
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values == {concept_for("la_volume").value: (12.5, "ml"),
                      concept_for("la_volume_index").value: (6.25, "ml/m2")}
    # the mask travels as the SEG, not as SR content
    assert concept_for("la_mask").value not in str(back)
    evidence = {r.ReferencedSOPInstanceUID for s in back.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    if shutil.which("dsrdump"):
        dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=True)
        assert "Referenced Segment" in dump.stdout and "82471001" in dump.stdout


def test_mask_mismatch_is_refused(sources: list[pydicom.Dataset]) -> None:
    mask = np.zeros((8, 16, 16), bool)
    payload = findings(sources, mask)[-1].payload
    with pytest.raises(ValueError, match="not among the sources"):
        build_mask_seg(sources[:4], payload, algorithm=MODEL, series_instance_uid="1.2.3",
                       sop_instance_uid="1.2.3.4")
    with pytest.raises(ValueError, match="segment"):
        build_mask_seg(sources, {**payload, "segment": "spleen"}, algorithm=MODEL,
                       series_instance_uid="1.2.3", sop_instance_uid="1.2.3.4")


def test_seg_uids_are_stable_and_distinct_from_the_sr() -> None:
    assert seg_uids("1.2.3", "atrium", 1) == seg_uids("1.2.3", "atrium", 1)
    assert seg_uids("1.2.3", "atrium", 2) != seg_uids("1.2.3", "atrium", 1)
    assert set(seg_uids("1.2.3", "atrium", 1)).isdisjoint(report_uids("1.2.3", "atrium", 1))
