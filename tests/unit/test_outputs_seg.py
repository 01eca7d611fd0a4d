"""Binary DICOM SEG over a source series: round trip, references, frame order, empties."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from qcd.outputs.seg import SERIES_DESCRIPTION, build_seg, read_seg_mask
from qcd.outputs.sr import ModelInfo
from qcd.outputs.write import write_part10
from qcd.synth import SeriesSpec, make_study

MODEL = ModelInfo("atrium", "0.1.0", "cd" * 32)
SIZE = 16


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    paths = make_study(tmp_path_factory.mktemp("mr"),
                       [SeriesSpec("MR", 8, "Cardiac LA 3D bSSFP", "HEART")], size=SIZE)
    return [pydicom.dcmread(p) for p in paths]


def sample_mask(frames: int) -> np.ndarray:
    mask = np.zeros((frames, SIZE, SIZE), bool)
    mask[1, 3:7, 4:10] = True
    mask[2, 5:9, 4:10] = True
    mask[5, 10:14, 2:5] = True   # frames 0, 3, 4, 6, 7 stay empty
    mask[7, 0, 0] = True
    return mask


def build(sources: list[Dataset], mask: np.ndarray, sop_uid: str | None = None) -> Dataset:
    return build_seg(sources, mask, label="Left atrium", property_code=codes.SCT.LeftAtrium,
                     algorithm=MODEL, series_instance_uid="1.2.826.0.1.3680043.10.1499.9.2",
                     sop_instance_uid=sop_uid or "1.2.826.0.1.3680043.10.1499.9.2.1")


def written(ds: Dataset, tmp_path: Path) -> hd.seg.Segmentation:
    return hd.seg.segread(write_part10(ds, tmp_path / "seg.dcm"))


@pytest.mark.parametrize("order", ["instance", "reversed", "shuffled"])
def test_round_trip_in_source_order(sources: list[Dataset], tmp_path: Path, order: str) -> None:
    src = list(sources)
    if order == "reversed":
        src.reverse()
    elif order == "shuffled":
        src = [src[i] for i in np.random.default_rng(3).permutation(len(src))]
    mask = sample_mask(len(src))
    seg = written(build(src, mask), tmp_path)
    assert np.array_equal(read_seg_mask(seg, src), mask)

    # frames: only the non-empty ones (highdicom stores them in spatial order, not in
    # input order); each points at its source and holds that source's mask
    index = {ds.SOPInstanceUID: i for i, ds in enumerate(src)}
    nonempty = [i for i in range(len(src)) if mask[i].any()]
    assert seg.NumberOfFrames == len(nonempty)
    frames = seg.pixel_array.astype(bool)
    referenced = []
    for k, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        i = index[source.ReferencedSOPInstanceUID]
        referenced.append(i)
        assert np.array_equal(frames[k], mask[i])
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        assert z == float(src[i].ImagePositionPatient[2])
    assert sorted(referenced) == nonempty


def test_references_all_sources_and_provenance(sources: list[Dataset], tmp_path: Path) -> None:
    mask = sample_mask(len(sources))
    seg = written(build(sources, mask, sop_uid="1.2.826.0.1.3680043.10.1499.9.2.5"), tmp_path)
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in sources}
    assert seg.SOPInstanceUID == "1.2.826.0.1.3680043.10.1499.9.2.5"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.SeriesDescription == SERIES_DESCRIPTION and len(SERIES_DESCRIPTION) <= 64
    assert seg.SegmentationType == "BINARY"
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Left atrium"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.LeftAtrium.value
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("atrium", "0.1.0")
    assert MODEL.sha256 in algorithm.AlgorithmParameters
    assert any(MODEL.sha256 in e.get("ContributionDescription", "")
               for e in seg.ContributingEquipmentSequence)


def test_all_empty_mask_round_trips(sources: list[Dataset], tmp_path: Path) -> None:
    mask = np.zeros((len(sources), SIZE, SIZE), bool)
    seg = written(build(sources, mask), tmp_path)
    assert seg.NumberOfFrames == len(sources)
    assert not read_seg_mask(seg, sources).any()


def test_read_refuses_unreferenced_sources(sources: list[Dataset], tmp_path: Path) -> None:
    seg = written(build(sources[:4], sample_mask(8)[:4]), tmp_path)
    assert np.array_equal(read_seg_mask(seg, sources[:4][::-1]), sample_mask(8)[:4][::-1])
    with pytest.raises(ValueError, match="does not reference"):
        read_seg_mask(seg, sources)


def test_bad_masks_are_refused(sources: list[Dataset]) -> None:
    mask = sample_mask(len(sources))
    with pytest.raises(TypeError, match="boolean"):
        build(sources, mask.astype(np.uint8))
    with pytest.raises(ValueError, match="shape"):
        build(sources, mask[:-1])
    with pytest.raises(ValueError, match="shape"):
        build(sources, mask.transpose(0, 2, 1)[:, :, :-1])
    with pytest.raises(ValueError, match="at least one"):
        build([], mask[:0])
    other = copy.deepcopy(sources[0])
    other.SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="series"):
        build([*sources[:-1], other], mask)
