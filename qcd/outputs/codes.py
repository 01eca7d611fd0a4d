"""The coded concepts qcd writes into its SR and SEG objects, and their documentation table.

Standard codes (SNOMED CT ``SCT``, DICOM ``DCM``, UCUM) are used wherever one exists;
the private scheme ``99QCD`` only where none does (the EARL classes, the CNN
probabilities, qcd's own flags). ``docs/SR_CODES.md`` is rendered from
:data:`CODE_TABLE` by :func:`code_table_markdown`; a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

QCD_SCHEME = "99QCD"
"""Private coding scheme designator (PS3.16 8.2: ``99`` prefix = local scheme)."""
QCD_SCHEME_NAME = "qcd quality-control daemon private codes"


def qcd_code(value: str, meaning: str) -> Code:
    """A ``99QCD`` code; the value must fit SH (16 chars) and the meaning LO (64)."""
    if not value or len(value) > 16 or "\\" in value:
        raise ValueError(f"99QCD code value {value!r} must be 1-16 characters without '\\'")
    if not meaning or len(meaning) > 64:
        raise ValueError(f"99QCD code meaning {meaning!r} must be 1-64 characters")
    return Code(value, QCD_SCHEME, meaning)


def _ucum(value: str, meaning: str) -> Code:
    return Code(value, "UCUM", meaning)


# --- procedure, analyses (measurement-group finding types) --------------------------
IMAGE_QUALITY_ANALYSIS = codes.SCT.ImageQualityAnalysis           # 133887000
EARL_ASSESSMENT = qcd_code("EARLASSESS", "EARL compliance assessment")
RECON_HEADER_EVIDENCE = qcd_code("RECONHDR", "Reconstruction header evidence")

# --- EARL concept names and values ---------------------------------------------------
EARL_CLASS = qcd_code("EARLCLASS", "EARL compliance class")
EARL1 = qcd_code("EARL1", "EARL1 compliant")
EARL2 = qcd_code("EARL2", "EARL2 compliant")
CLINICAL = qcd_code("CLINICAL", "Clinical reconstruction, not EARL harmonised")
INDETERMINATE = codes.SCT.Indeterminate                           # 82334004
P_EARL = qcd_code("PEARL", "Probability of EARL compliance")
P_EARL2 = qcd_code("PEARL2", "Probability of EARL2")
HEADER_CNN_DISAGREEMENT = qcd_code("HDRCNNDISAGREE", "Header/CNN disagreement")
EARL_EFFECTIVE_FWHM = qcd_code("EARLFWHM", "Estimated effective resolution FWHM")
EARL_PROTOCOL_CAVEAT = qcd_code("EARLPROTCAVEAT", "EARL model weak on this protocol")
SUV_UNAVAILABLE = qcd_code("SUVUNAVAIL", "SUV unavailable")
NOT_APPLICABLE = qcd_code("NOTAPPLICABLE", "Analysis not applicable")

# --- motion (HR-pQCT) -----------------------------------------------------------------
MOTION_ASSESSMENT = qcd_code("MOTIONASSESS", "HR-pQCT motion assessment")
MOTION_GRADE = qcd_code("MOTIONGRADE", "Motion grade (1-5)")
RESCAN_RECOMMENDED = qcd_code("RESCAN", "Rescan recommended")
MOTION_REVIEW = qcd_code("MOTIONREVIEW", "Motion grade needs operator review")
MOTION_ESTIMATE = qcd_code("MOTIONEST", "Periosteal streak index")
MOTION_MAGNITUDE = qcd_code("MOTIONMAG", "Estimated motion magnitude")

# --- chest radiograph flags -------------------------------------------------------------
CHEST_ASSESSMENT = qcd_code("CHESTFLAGS", "Chest radiograph anomaly flags")
URGENT = qcd_code("URGENT", "Urgent finding for operator alert")

# --- left atrium -------------------------------------------------------------------------
LA_ASSESSMENT = qcd_code("LAASSESS", "Left atrium assessment")
LA_VOLUME = codes.SCT.Volume                                      # 118565006
LA_VOLUME_INDEX = qcd_code("LAVI", "Left atrial volume index")
LAVI_BAND = qcd_code("LAVIBAND", "LAVI band (ASE/EACVI 2015)")
LAVI_UNAVAILABLE = qcd_code("LAVIUNAVAIL", "LA volume index unavailable")
LA_NOT_FOUND = qcd_code("LANOTFOUND", "Left atrium not found")

# --- header evidence ------------------------------------------------------------------
HEADER_EXPECTATION = qcd_code("HDREXPECT", "Header-based EARL expectation")
EARL1_LIKE = qcd_code("EARL1LIKE", "EARL1-like reconstruction header")
CLINICAL_LIKE = qcd_code("CLINICALLIKE", "Clinical-like reconstruction header")
RECON_METHOD = qcd_code("RECONMETHOD", "Reconstruction method (header text)")
CONVOLUTION_KERNEL = qcd_code("CONVKERNEL", "Convolution kernel (header text)")
RECON_ITERATIONS = qcd_code("RECONITER", "Reconstruction iterations")
RECON_SUBSETS = qcd_code("RECONSUBSETS", "Reconstruction subsets")
FILTER_FWHM = qcd_code("FILTERFWHM", "Post-reconstruction filter FWHM")
PSF_MODELLING = qcd_code("PSF", "Point spread function modelling")
TOF_RECONSTRUCTION = qcd_code("TOF", "Time-of-flight reconstruction")
SLICE_THICKNESS = codes.DCM.SliceThickness                        # 112225
PIXEL_SPACING = codes.DCM.VerticalPixelSpacing                    # 111066 (row spacing)

# --- generic values -------------------------------------------------------------------
YES = codes.SCT.Yes                                               # 373066001
NO = codes.SCT.No                                                 # 373067005
NORMAL = codes.SCT.Normal                                         # 17621005
MILD = codes.SCT.Mild                                             # 255604002
MODERATE = codes.SCT.Moderate                                     # 6736007
SEVERE = codes.SCT.Severe                                         # 24484000
UNKNOWN = codes.SCT.Unknown                                       # 261665006

# --- algorithm identification and SEG ------------------------------------------------
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence        # 123110
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment              # 109102
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure              # 91723000

# --- units (UCUM) -----------------------------------------------------------------------
NO_UNITS = codes.UCUM.NoUnits                                     # "1"
MILLIMETER = codes.UCUM.Millimeter
MILLILITER = _ucum("ml", "milliliter")
ITERATIONS_UNIT = _ucum("{iterations}", "iterations")
SUBSETS_UNIT = _ucum("{subsets}", "subsets")
GRADE_UNIT = _ucum("{grade}", "grade")
MILLILITER_PER_M2 = _ucum("ml/m2", "milliliter per square meter")


@dataclass(frozen=True)
class CodeRow:
    """One documented code: the code itself and what qcd means by it."""

    code: Code
    definition: str

    @property
    def value(self) -> str:
        return str(self.code.value)

    @property
    def scheme(self) -> str:
        return str(self.code.scheme_designator)

    @property
    def meaning(self) -> str:
        return str(self.code.meaning)


CODE_TABLE: tuple[CodeRow, ...] = (
    CodeRow(IMAGE_QUALITY_ANALYSIS, "Procedure reported (TID 1500) of every qcd report."),
    CodeRow(EARL_ASSESSMENT, "Finding type of the measurement group holding the `earl` "
            "analyzer's results (CNN bundles or the physics-estimate bundle)."),
    CodeRow(EARL_CLASS, "Concept name: the reconstruction class decided by the `earl` "
            "bundle's two-stage rule (CNNs, or the image-derived parameters measured on a "
            "virtual NEMA phantom). Values: EARL1, EARL2, CLINICAL, or SCT 82334004 "
            "Indeterminate."),
    CodeRow(EARL1, "Value of EARL compliance class: meets the EARL1 (EANM Research Ltd "
            "standard 1) harmonisation specification."),
    CodeRow(EARL2, "Value of EARL compliance class: meets the EARL2 specification."),
    CodeRow(CLINICAL, "Value of EARL compliance class: a clinical (non-harmonised) "
            "reconstruction, e.g. PSF with little or no post-filter."),
    CodeRow(INDETERMINATE, "Value of EARL compliance class: EARL-compliant but neither EARL1 "
            "nor EARL2 passed its threshold, or no SUV could be computed."),
    CodeRow(P_EARL, "Measurement (UCUM 1): probability that the reconstruction is "
            "EARL-compliant (EARL1 or EARL2): slice-averaged stage-1 CNN output, or, for a "
            "physics-estimate bundle, the share of virtual-phantom draws around the estimate "
            "that are compliant."),
    CodeRow(P_EARL2, "Measurement (UCUM 1): probability of EARL2 given EARL compliance "
            "(stage-2 CNN, slice-averaged, or the EARL2 share of the compliant phantom "
            "draws); absent when stage 1 said clinical."),
    CodeRow(HEADER_CNN_DISAGREEMENT, "Qualitative evaluation: the header-based expectation and "
            "the model's class (CNN or physics estimate) contradict each other (text answer "
            "says which way)."),
    CodeRow(EARL_EFFECTIVE_FWHM, "Measurement (mm): the estimate of the reconstruction's "
            "effective Gaussian FWHM (physics-estimate bundles, e.g. earl 2.0.0, from "
            "body-outline edge spread, power spectrum and noise; or CNN bundles with "
            "auxiliary outputs); overshoot and noise COV in the payload."),
    CodeRow(EARL_PROTOCOL_CAVEAT, "Qualitative evaluation: the header matches a protocol "
            "family on which the model bundle's own check found stage 1 below 90% (text "
            "answer gives the accuracy); confirm the class with the site's phantom."),
    CodeRow(SUV_UNAVAILABLE, "Qualitative evaluation: SUV could not be computed from the header "
            "(text answer gives the reason); the class is then Indeterminate."),
    CodeRow(NOT_APPLICABLE, "Qualitative evaluation: the analyzer declined the series (text "
            "answer gives the reason)."),
    CodeRow(RECON_HEADER_EVIDENCE, "Finding type of the measurement group with what the PET "
            "header says about the reconstruction (read by rules, not by the CNN)."),
    CodeRow(HEADER_EXPECTATION, "Qualitative evaluation: coarse expectation from the header "
            "alone. Values: EARL1LIKE, CLINICALLIKE, or SCT 261665006 Unknown."),
    CodeRow(EARL1_LIKE, "Value of header-based expectation: post-filter >= 6 mm and no PSF."),
    CodeRow(CLINICAL_LIKE, "Value of header-based expectation: PSF with a post-filter <= 2 mm."),
    CodeRow(RECON_METHOD, "Text answer: the Reconstruction Method (0054,1103) as sent."),
    CodeRow(CONVOLUTION_KERNEL, "Text answer: the Convolution Kernel (0018,1210) as sent."),
    CodeRow(RECON_ITERATIONS, "Measurement (UCUM {iterations}): iterations parsed from the "
            "header."),
    CodeRow(RECON_SUBSETS, "Measurement (UCUM {subsets}): subsets parsed from the header."),
    CodeRow(FILTER_FWHM, "Measurement (UCUM mm): Gaussian post-filter FWHM parsed from the "
            "convolution kernel (0 for all-pass / none)."),
    CodeRow(PSF_MODELLING, "Qualitative evaluation: the header names PSF/resolution "
            "modelling. Value SCT Yes, or SCT Unknown when the header does not say."),
    CodeRow(TOF_RECONSTRUCTION, "Qualitative evaluation: the header names time-of-flight. "
            "Value SCT Yes, or SCT Unknown when the header does not say."),
    CodeRow(SLICE_THICKNESS, "Measurement (mm): Slice Thickness (0018,0050) of the series."),
    CodeRow(PIXEL_SPACING, "Measurement (mm): row spacing, Pixel Spacing (0028,0030) first "
            "value."),
    CodeRow(YES, "Value of yes/no evaluations (PSF, TOF, and flags without a reason text)."),
    CodeRow(UNKNOWN, "Value when the header does not say (expectation, PSF, TOF)."),
    CodeRow(ARTIFICIAL_INTELLIGENCE, "Algorithm family (TID 4019 / SEG Segment Algorithm) of "
            "qcd's CNN models."),
    CodeRow(PROCESSING_EQUIPMENT, "Purpose of reference of the Contributing Equipment item "
            "that names the model (IHE AIR)."),
    CodeRow(ANATOMICAL_STRUCTURE, "Default Segmented Property Category of qcd SEG segments."),
    CodeRow(MOTION_ASSESSMENT, "Finding type of the `motion` analyzer's measurement group."),
    CodeRow(MOTION_GRADE, "Measurement ({grade}): HR-pQCT motion grade 1-5 (Whittier 2020 "
            "scale: 1 no visible motion ... 5 severe streaks) from the ordinal CNN."),
    CodeRow(RESCAN_RECOMMENDED, "Qualitative evaluation: SCT Yes when the grade reaches the "
            "rescan threshold (default 4), SCT No otherwise."),
    CodeRow(MOTION_REVIEW, "Text answer: why the motion grade should be reviewed by an "
            "operator (low confidence, or borderline between 3 and 4)."),
    CodeRow(MOTION_ESTIMATE, "Measurement (1): image-based periosteal streak index reported "
            "beside the CNN (higher = more streaking)."),
    CodeRow(MOTION_MAGNITUDE, "Measurement (um): the CNN's estimate of the rigid motion "
            "magnitude during the acquisition (bundles with a motion head; the grade cut "
            "points are magnitudes too)."),
    CodeRow(CHEST_ASSESSMENT, "Finding type of the `chest` analyzer's measurement group; "
            "each `chest_<label>` probability has an automatic code (see below)."),
    CodeRow(URGENT, "Text answer: the chest labels that fired and are urgent "
            "(e.g. Pneumothorax); raises an operator alert."),
    CodeRow(LA_ASSESSMENT, "Finding type of the `atrium` analyzer's measurement group; it "
            "references segment 1 (Left atrium) of the SEG."),
    CodeRow(LA_VOLUME, "Measurement (ml): left-atrial volume from the segmentation and the "
            "real voxel spacing."),
    CodeRow(LA_VOLUME_INDEX, "Measurement (ml/m2): LA volume / body surface area (Mosteller, "
            "from PatientSize and PatientWeight)."),
    CodeRow(LAVI_BAND, "Qualitative evaluation: ASE/EACVI 2015 band of the LAVI, value SCT "
            "Normal (<= 34), Mild (35-41), Moderate (42-48) or Severe (> 48 ml/m2)."),
    CodeRow(LAVI_UNAVAILABLE, "Text answer: why no LA volume index was computed (height or "
            "weight missing)."),
    CodeRow(LA_NOT_FOUND, "Text answer: the segmentation found no left atrium."),
    CodeRow(NO, "Value of yes/no evaluations that are false (rescan not recommended)."),
    CodeRow(NORMAL, "LAVI band value: normal."),
    CodeRow(MILD, "LAVI band value: mildly enlarged."),
    CodeRow(MODERATE, "LAVI band value: moderately enlarged."),
    CodeRow(SEVERE, "LAVI band value: severely enlarged."),
    CodeRow(GRADE_UNIT, "UCUM annotation unit of the motion grade."),
    CodeRow(MILLILITER_PER_M2, "Unit of the LA volume index."),
    CodeRow(NO_UNITS, "Unit of probabilities and other dimensionless measurements."),
    CodeRow(MILLIMETER, "Unit of lengths (filter FWHM, slice thickness, pixel spacing)."),
    CodeRow(MILLILITER, "Unit of volumes."),
    CodeRow(ITERATIONS_UNIT, "UCUM annotation unit for iteration counts."),
    CodeRow(SUBSETS_UNIT, "UCUM annotation unit for subset counts."),
)

# --- lookups used by the SR builder ------------------------------------------------------
CONCEPTS: Mapping[str, Code] = {
    "earl_class": EARL_CLASS,
    "p_earl": P_EARL,
    "p_earl2": P_EARL2,
    "header_cnn_disagreement": HEADER_CNN_DISAGREEMENT,
    "earl_effective_fwhm": EARL_EFFECTIVE_FWHM,
    "earl_protocol_caveat": EARL_PROTOCOL_CAVEAT,
    "suv_unavailable": SUV_UNAVAILABLE,
    "not_applicable": NOT_APPLICABLE,
    "header_evidence": HEADER_EXPECTATION,
    "motion_grade": MOTION_GRADE,
    "rescan_recommended": RESCAN_RECOMMENDED,
    "motion_review": MOTION_REVIEW,
    "motion_estimate": MOTION_ESTIMATE,
    "motion_magnitude": MOTION_MAGNITUDE,
    "urgent": URGENT,
    "la_volume": LA_VOLUME,
    "la_volume_index": LA_VOLUME_INDEX,
    "lavi_band": LAVI_BAND,
    "la_volume_index_unavailable": LAVI_UNAVAILABLE,
    "la_not_found": LA_NOT_FOUND,
}
"""Finding name -> concept name; other names get :func:`code_from_name`."""

ANALYSES: Mapping[str, Code] = {"earl": EARL_ASSESSMENT, "motion": MOTION_ASSESSMENT,
                                "chest": CHEST_ASSESSMENT, "atrium": LA_ASSESSMENT}
"""Analyzer name -> finding type of its measurement group."""

VALUES: Mapping[str, Code] = {
    "earl1": EARL1,
    "earl2": EARL2,
    "clinical": CLINICAL,
    "indeterminate": INDETERMINATE,
    "earl1-like": EARL1_LIKE,
    "clinical-like": CLINICAL_LIKE,
    "unknown": UNKNOWN,
    "yes": YES,
    "true": YES,
    "no": NO,
    "false": NO,
    "normal": NORMAL,
    "mild": MILD,
    "moderate": MODERATE,
    "severe": SEVERE,
}
"""Finding ``value_text`` (case-insensitive) -> coded value; other texts are text answers."""

UNITS: Mapping[str, Code] = {
    "1": NO_UNITS,
    "mm": MILLIMETER,
    "ml": MILLILITER,
    "{iterations}": ITERATIONS_UNIT,
    "{subsets}": SUBSETS_UNIT,
    "{grade}": GRADE_UNIT,
    "ml/m2": MILLILITER_PER_M2,
}


def code_from_name(name: str) -> Code:
    """A stable ``99QCD`` concept for a finding name that has no entry in :data:`CONCEPTS`.

    The value is the upper-cased name when it fits 16 characters, otherwise its first 9
    characters plus ``_`` and 6 hex digits of its sha1 (so distinct names stay distinct);
    the meaning is the name with underscores as spaces.
    """
    token = re.sub(r"[^A-Z0-9_]", "_", name.upper()).strip("_")
    if not token:
        raise ValueError(f"finding name {name!r} has no letters or digits")
    if len(token) > 16:
        token = f"{token[:9]}_{hashlib.sha1(name.encode()).hexdigest()[:6].upper()}"
    meaning = name.replace("_", " ").strip()
    meaning = (meaning[:1].upper() + meaning[1:])[:64]
    return qcd_code(token, meaning)


def concept_for(name: str) -> Code:
    """The concept name for a finding: from :data:`CONCEPTS` or :func:`code_from_name`."""
    return CONCEPTS.get(name) or code_from_name(name)


def analysis_for(analyzer: str) -> Code:
    """Finding type of an analyzer's measurement group: known, or ``<analyzer> analysis``."""
    return ANALYSES.get(analyzer) or code_from_name(f"{analyzer} analysis")


def unit_code(unit: str | None) -> Code:
    """The UCUM code for a finding's unit; ``None`` means dimensionless (``1``)."""
    if unit is None or unit == "":
        return NO_UNITS
    if len(unit) > 16:
        raise ValueError(f"UCUM unit {unit!r} is longer than 16 characters")
    return UNITS.get(unit) or _ucum(unit, unit)


def code_table_markdown() -> str:
    """:data:`CODE_TABLE` as a Markdown table (the body of ``docs/SR_CODES.md``)."""
    lines = ["| Code value | Scheme | Code meaning | Definition (use in qcd) |",
             "|---|---|---|---|"]
    for row in CODE_TABLE:
        cells = (row.value, row.scheme, row.meaning, row.definition)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
