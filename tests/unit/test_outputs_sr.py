"""The TID 1500 SR built from findings: content, provenance, evidence, dcmtk, durability."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import qcd
from qcd.analyzers.earl.evidence import read_evidence
from qcd.errors import ExportError
from qcd.outputs import codes as qc
from qcd.outputs.sr import SERIES_DESCRIPTION, FindingData, ModelInfo, build_sr
from qcd.outputs.write import write_part10
from qcd.synth import write_pet_series

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelInfo("earl", "1.0.0", "b3cd51cd609696541ca431c743effd5a3cb451b8bd7e8c14689614a7078e0db7")
P_EARL, P_EARL2 = 0.8723456789012345, 0.6412


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    out = tmp_path_factory.mktemp("pet")
    volume = np.ones((6, 12, 12), np.float32)
    paths = write_pet_series(volume, (3.0, 4.0, 4.0), out, kernel="XYZ Gauss7.00")
    return [pydicom.dcmread(p) for p in paths]


def earl_findings(src: Dataset) -> list[FindingData]:
    """What the earl analyzer stores for an EARL2 verdict with a contradicting header."""
    evidence = read_evidence(src)
    return [
        FindingData("header_evidence", value_text=evidence.hint(), payload=evidence.to_dict()),
        FindingData("earl_class", value_text="EARL2",
                    payload={"p_earl": round(P_EARL, 4), "p_earl2": P_EARL2,
                             "thresholds": {"stage1": 0.5, "earl2": 0.6, "earl1": 0.6}}),
        FindingData("p_earl", value_num=P_EARL, unit="1"),
        FindingData("p_earl2", value_num=P_EARL2, unit="1"),
        FindingData("header_cnn_disagreement", value_text="EARL1-like vs EARL2",
                    payload={"cnn": "EARL2"}),
    ]


def build(sources: list[Dataset], findings: list[FindingData], model: ModelInfo | None = MODEL,
          sop_uid: str | None = None) -> Dataset:
    return build_sr(sources, findings, analyzer="earl", model=model,
                    series_instance_uid="1.2.826.0.1.3680043.10.1499.9.1",
                    sop_instance_uid=sop_uid or "1.2.826.0.1.3680043.10.1499.9.1.1",
                    institution="qcd demo site")


def groups(path: Path) -> tuple[Any, list[Any]]:
    """The SR read back by highdicom, and its TID 1501 measurement groups."""
    sr: Any = hd.sr.srread(path)
    return sr, sr.content.get_image_measurement_groups()


def evaluation(group: Any, concept: Code) -> Any:
    (item,) = group.get_qualitative_evaluations(name=concept)
    return item.value


def text_answers(group: Any) -> dict[str, str]:
    return {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS"}


def test_sr_round_trip_earl(sources: list[Dataset], tmp_path: Path) -> None:
    sop_uid = "1.2.826.0.1.3680043.10.1499.9.1.7"
    path = write_part10(build(sources, earl_findings(sources[0]), sop_uid=sop_uid),
                        tmp_path / "out" / "sr.dcm")
    sr, (main, header) = groups(path)

    # identity: same study and patient, SR series of its own, the UID we fixed
    assert sr.SOPInstanceUID == sop_uid
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.PatientID == sources[0].PatientID
    assert sr.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert sr.SeriesDescription == SERIES_DESCRIPTION
    assert "machine generated" in sr.SeriesDescription and len(sr.SeriesDescription) <= 64
    assert (sr.Manufacturer, sr.ManufacturerModelName) == ("qcd", "earl")
    assert sr.SoftwareVersions == qcd.__version__
    assert sr.InstitutionName == "qcd demo site"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99QCD"

    # evidence: every source instance
    referenced = {ins.ReferencedSOPInstanceUID
                  for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for ins in series.ReferencedSOPSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}

    # the class, coded
    assert main.finding_type == qc.EARL_ASSESSMENT
    klass = evaluation(main, qc.EARL_CLASS)
    assert (klass.value, klass.scheme_designator, klass.meaning) == (
        "EARL2", "99QCD", "EARL2 compliant")
    # the probabilities, exactly, without unit
    values = {m.name.value: (m.value, m.unit.value) for m in main.get_measurements()}
    assert values == {"PEARL": (P_EARL, "1"), "PEARL2": (P_EARL2, "1")}
    assert text_answers(main) == {"HDRCNNDISAGREE": "EARL1-like vs EARL2"}

    # provenance: TID 4019 in the group, Contributing Equipment, device observer
    algorithm = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
                 for item in main[0].ContentSequence
                 if item.RelationshipType == "HAS CONCEPT MOD" and item.ValueType == "TEXT"}
    assert algorithm["Algorithm Name"] == MODEL.name
    assert algorithm["Algorithm Version"] == MODEL.version
    assert f"weights sha256={MODEL.sha256}" in [
        item.TextValue for item in main[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    model_equipment = [e for e in sr.ContributingEquipmentSequence
                       if e.Manufacturer == "qcd"]
    assert model_equipment[0].ManufacturerModelName == "earl"
    assert model_equipment[0].SoftwareVersions == "1.0.0"
    assert MODEL.sha256 in model_equipment[0].ContributionDescription
    (observer,) = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)
    assert observer.observer_identifying_attributes.name == "qcd"

    # the header evidence, in its own group (rules, not the CNN)
    assert header.finding_type == qc.RECON_HEADER_EVIDENCE
    numbers = {m.name.value: (m.value, m.unit.value) for m in header.get_measurements()}
    assert numbers == {"RECONITER": (4.0, "{iterations}"), "RECONSUBSETS": (8.0, "{subsets}"),
                       "FILTERFWHM": (7.0, "mm"), "112225": (3.0, "mm"),
                       "111066": (4.0, "mm")}
    assert evaluation(header, qc.HEADER_EXPECTATION) == qc.EARL1_LIKE
    assert evaluation(header, qc.PSF_MODELLING) == qc.UNKNOWN
    assert text_answers(header) == {"RECONMETHOD": "OSEM3D 4i8s", "CONVKERNEL": "XYZ Gauss7.00"}


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk dsrdump not installed")
def test_dsrdump_accepts_the_sr(sources: list[Dataset], tmp_path: Path) -> None:
    path = write_part10(build(sources, earl_findings(sources[0])), tmp_path / "sr.dcm")
    result = subprocess.run(["dsrdump", str(path)], check=False, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "EARL2 compliant" in result.stdout
    assert "Probability of EARL compliance" in result.stdout
    assert "E:" not in result.stderr and "W:" not in result.stderr, result.stderr


def test_rebuild_is_the_same_instance(sources: list[Dataset]) -> None:
    """Fixed UIDs in, the same SOP instance and tracking UIDs out (a resend is no new object)."""
    a = build(sources, earl_findings(sources[0]))
    b = build(sources, earl_findings(sources[0]))
    assert a.SOPInstanceUID == b.SOPInstanceUID

    def tracking(ds: Dataset) -> list[str]:
        sr: Any = hd.sr.Comprehensive3DSR.from_dataset(ds)
        return [g[0].ContentSequence[1].UID for g in sr.content.get_image_measurement_groups()]

    assert tracking(a) == tracking(b)
    assert tracking(a) != tracking(build(sources, earl_findings(sources[0]),
                                         sop_uid="1.2.826.0.1.3680043.10.1499.9.1.2"))


def test_suv_unavailable_is_indeterminate_with_reason(sources: list[Dataset],
                                                      tmp_path: Path) -> None:
    findings = [
        FindingData("suv_unavailable", value_text="no PatientWeight"),
        FindingData("earl_class", value_text="indeterminate",
                    payload={"reason": "no SUV: no PatientWeight"}),
    ]
    _, (main,) = groups(write_part10(build(sources, findings), tmp_path / "sr.dcm"))
    assert evaluation(main, qc.EARL_CLASS) == qc.INDETERMINATE
    assert text_answers(main) == {"SUVUNAVAIL": "no PatientWeight"}
    assert main.get_measurements() == []


def test_not_applicable_without_model(sources: list[Dataset], tmp_path: Path) -> None:
    findings = [FindingData("not_applicable", value_text="not a PET (PT) series")]
    sr, (main,) = groups(write_part10(build(sources, findings, model=None), tmp_path / "sr.dcm"))
    assert text_answers(main) == {"NOTAPPLICABLE": "not a PET (PT) series"}
    assert not any(item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"
                   for item in main[0].ContentSequence)
    assert [e.Manufacturer for e in sr.ContributingEquipmentSequence if e.Manufacturer == "qcd"] == []


def test_unknown_findings_fall_back_to_private_codes(sources: list[Dataset],
                                                     tmp_path: Path) -> None:
    findings = [
        FindingData("bone_grade", value_num=4, unit="{grade}"),
        FindingData("rescan", value_text="yes"),
        FindingData("la_volume_index_per_body_surface", value_num=41.5, unit="ml/m2"),
    ]
    sr = build_sr(sources, findings, analyzer="bonescan", model=MODEL,
                  series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    _, (main,) = groups(write_part10(sr, tmp_path / "sr.dcm"))
    assert main.finding_type == qc.code_from_name("bonescan analysis")
    values = {m.name.value: (m.name.scheme_designator, m.value, m.unit.value)
              for m in main.get_measurements()}
    long = qc.code_from_name("la_volume_index_per_body_surface")
    assert len(long.value) == 16 and long.value != qc.code_from_name("la_volume_index_other").value
    assert values == {"BONE_GRADE": ("99QCD", 4.0, "{grade}"),
                      long.value: ("99QCD", 41.5, "ml/m2")}
    assert evaluation(main, qc.code_from_name("rescan")) == qc.YES


@pytest.mark.parametrize("bad", ["no sources", "two studies", "no findings", "nan"])
def test_bad_input_is_refused(sources: list[Dataset], bad: str) -> None:
    src, findings = list(sources), earl_findings(sources[0])
    if bad == "no sources":
        src = []
    elif bad == "two studies":
        other = copy.deepcopy(sources[0])
        other.StudyInstanceUID = "1.2.3.4"
        src.append(other)
    elif bad == "no findings":
        findings = []
    else:
        findings.append(FindingData("p_other", value_num=float("nan")))
    with pytest.raises(ValueError):
        build(src, findings)


def test_code_doc_is_in_step_with_the_table() -> None:
    doc = (ROOT / "docs" / "SR_CODES.md").read_text()
    assert qc.code_table_markdown() in doc
    values = [(row.scheme, row.value) for row in qc.CODE_TABLE]
    assert len(values) == len(set(values))
    assert all(len(row.value) <= 16 and len(row.meaning) <= 64 for row in qc.CODE_TABLE)


def test_write_part10_is_atomic(sources: list[Dataset], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b" / "sr.dcm"
    ds = build(sources, earl_findings(sources[0]))
    write_part10(ds, target)
    first = target.read_bytes()
    assert pydicom.dcmread(target).file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert os.listdir(target.parent) == ["sr.dcm"]

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ExportError, match="No space left"):
        write_part10(build(sources, earl_findings(sources[0])[:2]), target)
    assert target.read_bytes() == first  # the old file is untouched
    assert os.listdir(target.parent) == ["sr.dcm"]  # and no temp file is left
