"""Findings of one analyzer run as a Comprehensive 3D SR (TID 1500 Measurement Report).

The report goes into the study of its source series (highdicom copies patient and
study identity from the sources) and lists every source instance as evidence. Its
observer is the device ``qcd``; the model that made the findings is named by TID 4019
Algorithm Identification in the measurement group (name, version, weights sha256)
and by a Contributing Equipment item, as IHE AIR asks.

Content, one TID 1501 measurement group per kind of finding:

* the analyzer's model findings: numbers become TID 300 measurements (``unit`` as
  UCUM), texts become qualitative evaluations, coded where :data:`codes.VALUES`
  knows the text and a TEXT answer otherwise (TID 1501 row 12 allows coded questions
  with text answers; highdicom has no class for that, see :func:`_text_answer`);
* ``header_evidence``: what the header says about the reconstruction, in its own
  group, since rules and not the CNN produced it;
* a mask finding (:func:`qcd.outputs.maskcodec.is_mask_payload`) is not rendered as
  content: its SEG is. When the SEG is given, the model group becomes a TID 1411
  volumetric ROI group that references segment 1 of the SEG (finding type = the
  segmented property, e.g. SCT Left atrium), so the LA volume is tied to its mask,
  and the SEG is listed as evidence.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import qcd
from qcd.analyzers.base import Finding
from qcd.outputs import codes as qc
from qcd.outputs.maskcodec import is_mask_payload

SERIES_DESCRIPTION = "QCD QC report - machine generated, not for primary diagnosis"
MANUFACTURER = "qcd"
DEVICE_NAME = "qcd"
UNKNOWN_VERSION = "unknown"
"""Recorded when a finding row has a model name but no version (older rows)."""
_UID_NAMESPACE = uuid.UUID("5b0c8a8e-4f4e-5c2a-9a55-71c1d0c0a9e1")
"""Namespace of the name-based (UUID v5) UIDs qcd derives (device, tracking)."""

_HEADER_NUMBERS: tuple[tuple[str, Code, Code], ...] = (
    ("iterations", qc.RECON_ITERATIONS, qc.ITERATIONS_UNIT),
    ("subsets", qc.RECON_SUBSETS, qc.SUBSETS_UNIT),
    ("filter_fwhm_mm", qc.FILTER_FWHM, qc.MILLIMETER),
    ("slice_thickness_mm", qc.SLICE_THICKNESS, qc.MILLIMETER),
    ("pixel_spacing_mm", qc.PIXEL_SPACING, qc.MILLIMETER),
)
_HEADER_TEXTS: tuple[tuple[str, Code], ...] = (
    ("reconstruction_method", qc.RECON_METHOD),
    ("convolution_kernel", qc.CONVOLUTION_KERNEL),
)
_HEADER_FLAGS: tuple[tuple[str, Code], ...] = (
    ("psf", qc.PSF_MODELLING),
    ("tof", qc.TOF_RECONSTRUCTION),
)
_HEADER_FINDINGS = frozenset({"header_evidence"})

FindingData = Finding
"""A stored finding as the SR builder reads it: the analyzers' own value type."""


@dataclass(frozen=True)
class ModelInfo:
    """The model bundle behind a set of findings (``Finding.model_*`` columns)."""

    name: str
    version: str
    sha256: str
    device_uid: str | None = None
    """The model's DICOM Device UID when its bundle declares one; otherwise derived
    from name, version and sha256, so it changes whenever the model does."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelInfo needs a model name")

    def uid(self) -> str:
        """The Device UID: declared, or name-based (stable for identical weights)."""
        return self.device_uid or derived_uid("model", self.name, self.version, self.sha256)

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """The model as Processing Equipment (IHE AIR), the same in every object qcd makes."""
        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=qc.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.name[:64],
            software_versions=self.version or UNKNOWN_VERSION,
            contribution_description=f"model {self.name} {self.version}, weights sha256 "
                                     f"{self.sha256}, device UID {self.uid()}",
        )


def derived_uid(*parts: str) -> str:
    """A ``2.25`` UID from a name-based UUID (PS3.5 B.2): same parts, same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(parts)).int}"


def build_sr(
    sources: Sequence[Dataset],
    findings: Sequence[FindingData],
    *,
    analyzer: str,
    model: ModelInfo | None,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 901,
    institution: str | None = None,
    segmentation: Dataset | None = None,
) -> Dataset:
    """Build the TID 1500 report of one analyzer run on one series.

    Parameters
    ----------
    sources : Sequence[pydicom.Dataset]
        The analysed instances (headers suffice, pixels are not read); all are listed
        as evidence, and the first gives patient and study identity.
    findings : Sequence[FindingData]
        The findings of the run, in the order to report them.
    analyzer : str
        Analyzer name (``earl``); becomes ManufacturerModelName and picks the finding type.
    model : ModelInfo | None
        The model bundle used, or None (e.g. a ``not_applicable`` run).
    series_instance_uid, sop_instance_uid : str
        Fixed by the caller when the output is first planned, so that rebuilding or
        resending yields the same instance.
    series_number : int
        Series Number of the SR series.
    institution : str | None
        Institution Name to record, if any.
    segmentation : pydicom.Dataset | None
        The SEG made from the findings' mask, if any: referenced by the model's
        measurement group (segment 1) and listed as evidence.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.Comprehensive3DSR`` (a Dataset), ready for :func:`write_part10`.

    Raises
    ------
    ValueError
        No sources, sources from more than one study, no findings, or a finding that
        cannot be encoded (a non-finite number, a unit that is not UCUM-sized).
    """
    if not sources:
        raise ValueError("build_sr needs at least one source instance")
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in sources}
    if len(studies) != 1:
        raise ValueError(f"sources span {len(studies)} studies; an SR belongs to one study")
    if not findings:
        raise ValueError("build_sr needs at least one finding")

    groups = _groups(findings, analyzer, model, sop_instance_uid, segmentation)
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid("device", DEVICE_NAME, analyzer),
                name=DEVICE_NAME,
                manufacturer_name=MANUFACTURER,
                model_name=analyzer,
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=qc.IMAGE_QUALITY_ANALYSIS,
        imaging_measurements=groups,
    )
    equipment = [] if model is None else [model.contributing_equipment()]
    return hd.sr.Comprehensive3DSR(
        evidence=list(sources) + ([segmentation] if segmentation is not None else []),
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        institution_name=institution,
        contributing_equipment=equipment,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=analyzer[:64],
        software_versions=qcd.__version__,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=qc.QCD_SCHEME, name=qc.QCD_SCHEME_NAME,
            responsible_organization="qcd project")],
    )


def _groups(
    findings: Sequence[FindingData], analyzer: str, model: ModelInfo | None, sop_uid: str,
    segmentation: Dataset | None = None,
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations
          | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    main = [f for f in findings
            if f.name not in _HEADER_FINDINGS and not is_mask_payload(f.payload)]
    header = [f for f in findings if f.name in _HEADER_FINDINGS]
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    if main or segmentation is not None:
        algorithm = None if model is None else hd.sr.AlgorithmIdentification(
            name=model.name, version=model.version or UNKNOWN_VERSION,
            parameters=[f"weights sha256={model.sha256 or 'unknown'}",
                        f"device UID={model.uid()}"],
            family=qc.ARTIFICIAL_INTELLIGENCE, manufacturer=MANUFACTURER)
        groups.append(_group(main, analyzer, qc.analysis_for(analyzer), algorithm,
                             sop_uid, segmentation))
    if header:
        algorithm = hd.sr.AlgorithmIdentification(
            name=f"qcd {analyzer} header reader", version=qcd.__version__,
            manufacturer=MANUFACTURER)
        groups.append(_group(header, f"{analyzer}-header", qc.RECON_HEADER_EVIDENCE,
                             algorithm, sop_uid))
    return groups


def _group(
    findings: Sequence[FindingData], identifier: str, finding_type: Code,
    algorithm: hd.sr.AlgorithmIdentification | None, sop_uid: str,
    segmentation: Dataset | None = None,
) -> (hd.sr.MeasurementsAndQualitativeEvaluations
      | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations):
    measurements: list[hd.sr.Measurement] = []
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    texts: list[hd.sr.TextContentItem] = []
    for f in findings:
        if f.name in _HEADER_FINDINGS:
            _header_content(f, measurements, evaluations, texts)
            continue
        concept = qc.concept_for(f.name)
        if f.value_num is not None:
            measurements.append(_measurement(concept, f.value_num, qc.unit_code(f.unit), f.name))
        if f.value_text is not None:
            _text_value(concept, f.value_text, evaluations, texts)
        if f.value_num is None and f.value_text is None:
            evaluations.append(hd.sr.QualitativeEvaluation(concept, qc.YES))
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid("tracking", sop_uid, identifier), identifier=identifier[:64])
    group: (hd.sr.MeasurementsAndQualitativeEvaluations
            | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
    if segmentation is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type,
            algorithm_id=algorithm,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )
    else:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=_referenced_segment(segmentation),
            finding_type=_segment_property(segmentation) or finding_type,
            algorithm_id=algorithm,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )
    for item in texts:
        _text_answer(group, item)
    return group


def _referenced_segment(seg: Dataset) -> hd.sr.ReferencedSegment:
    """Segment 1 of ``seg``, built by hand (``from_segmentation`` fails on one segment in
    highdicom 0.28, RECIPES pitfall 5)."""
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=1,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series))


def _segment_property(seg: Dataset) -> hd.sr.CodedConcept | None:
    """The Segmented Property Type of segment 1 (e.g. SCT Left atrium), if recorded."""
    try:
        item = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    except (AttributeError, IndexError):
        return None
    return hd.sr.CodedConcept(str(item.CodeValue), str(item.CodingSchemeDesignator),
                              str(item.CodeMeaning))


def _measurement(concept: Code, value: float, unit: Code, what: str) -> hd.sr.Measurement:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"finding {what!r} has a non-finite value {value!r}")
    return hd.sr.Measurement(name=concept, value=number, unit=unit)


def _text_value(concept: Code, text: str, evaluations: list[hd.sr.QualitativeEvaluation],
                texts: list[hd.sr.TextContentItem]) -> None:
    known = qc.VALUES.get(text.strip().lower())
    if known is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(concept, known))
    elif text.strip():
        texts.append(hd.sr.TextContentItem(
            name=concept, value=text,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    else:
        evaluations.append(hd.sr.QualitativeEvaluation(concept, qc.YES))


def _header_content(f: FindingData, measurements: list[hd.sr.Measurement],
                    evaluations: list[hd.sr.QualitativeEvaluation],
                    texts: list[hd.sr.TextContentItem]) -> None:
    """The header evidence: expectation (coded), numbers, PSF/TOF, the raw header texts."""
    if f.value_text is not None:
        _text_value(qc.concept_for(f.name), f.value_text, evaluations, texts)
    payload = f.payload or {}
    for key, concept, unit in _HEADER_NUMBERS:
        value = payload.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            measurements.append(_measurement(concept, value, unit, f"{f.name}.{key}"))
    for key, concept in _HEADER_FLAGS:
        if key in payload:
            evaluations.append(hd.sr.QualitativeEvaluation(
                concept, qc.YES if payload[key] is True else qc.UNKNOWN))
    for key, concept in _HEADER_TEXTS:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            texts.append(hd.sr.TextContentItem(
                name=concept, value=value,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def _text_answer(group: hd.sr.MeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations,
                 item: hd.sr.TextContentItem) -> None:
    """Append a TEXT qualitative evaluation (TID 1501 row 12, a coded question with a
    text answer) to a measurement group.

    highdicom 0.28 only builds CODE evaluations (ImagingDataCommons/highdicom#124), so
    the item, itself built by highdicom, is added to the group container's content.
    """
    container = group[0]
    if "ContentSequence" not in container:
        container.ContentSequence = hd.sr.ContentSequence([item])
    else:
        container.ContentSequence.append(item)
