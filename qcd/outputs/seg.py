"""A binary mask over a source series as a DICOM SEG (one segment), and back.

The mask is (frames, rows, cols) bool in the order of ``sources`` (one frame per
source instance, RECIPES pitfall 7). highdicom drops empty frames from the pixel data
but the SEG still references every source, and :func:`read_seg_mask` restores the
full stack, zeros included, in the order of the sources given to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import qcd
from qcd.outputs import codes as qc
from qcd.outputs.maskcodec import decode_mask
from qcd.outputs.sr import MANUFACTURER, UNKNOWN_VERSION, ModelInfo

SERIES_DESCRIPTION = "QCD segmentation - machine generated, not for primary diagnosis"
SEGMENT_NUMBER = 1
SEGMENTS: Mapping[str, tuple[str, Code]] = {
    "left_atrium": ("Left atrium", codes.SCT.LeftAtrium),         # SCT 82471001
}
"""Segment keys a mask finding may name -> (Segment Label, Segmented Property Type)."""


def build_seg(
    sources: Sequence[Dataset],
    mask: np.ndarray,
    *,
    label: str,
    property_code: Code | hd.sr.CodedConcept,
    algorithm: ModelInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 902,
    category_code: Code | hd.sr.CodedConcept = qc.ANATOMICAL_STRUCTURE,
) -> Dataset:
    """Build a one-segment BINARY Segmentation of ``sources``.

    Parameters
    ----------
    sources : Sequence[pydicom.Dataset]
        Single-frame source images of one series, with pixel geometry.
    mask : numpy.ndarray
        ``(len(sources), Rows, Columns)`` bool; frame ``i`` belongs to ``sources[i]``.
    label : str
        Segment Label (e.g. ``Left atrium``), at most 64 characters.
    property_code : Code
        Segmented Property Type (e.g. ``codes.SCT.LeftAtrium``).
    algorithm : ModelInfo
        The model that produced the mask; recorded as the segment's Algorithm
        Identification (name, version, weights sha256) and Contributing Equipment.
    series_instance_uid, sop_instance_uid : str
        Fixed by the caller so that a resend is the same instance.
    series_number : int
        Series Number of the SEG series.
    category_code : Code
        Segmented Property Category; anatomical structure by default.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.seg.Segmentation``.

    Raises
    ------
    ValueError
        No sources, sources from several series, a label that is empty or too long, or
        a mask of the wrong shape.
    TypeError
        A mask that is not boolean (an int or float mask is ambiguous: cast it yourself).
    """
    if not sources:
        raise ValueError("build_seg needs at least one source instance")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in sources}
    if len(series) != 1:
        raise ValueError(f"sources span {len(series)} series; a SEG covers one series")
    if not label or len(label) > 64:
        raise ValueError(f"segment label {label!r} must be 1-64 characters")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be boolean, got dtype {mask.dtype}")
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if mask.shape != expected:
        raise ValueError(f"mask shape {mask.shape} does not match the sources {expected} "
                         "(frames, rows, cols)")
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=label,
        segmented_property_category=category_code,
        segmented_property_type=property_code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name,
            family=qc.ARTIFICIAL_INTELLIGENCE,
            version=algorithm.version or UNKNOWN_VERSION,
            source=MANUFACTURER,
            parameters={"weights_sha256": algorithm.sha256, "device_uid": algorithm.uid()},
        ),
    )
    equipment = algorithm.contributing_equipment()
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=qcd.__version__,
        device_serial_number="0",
        series_description=SERIES_DESCRIPTION,
        content_label="QCD_SEG",
        content_description=f"{label} by {algorithm.name} {algorithm.version}"[:64],
        contributing_equipment=[equipment],
        # an all-empty mask keeps its frames (highdicom would revert with a warning)
        omit_empty_frames=bool(mask.any()),
    )


def build_mask_seg(
    sources: Sequence[Dataset],
    payload: Mapping[str, Any],
    *,
    algorithm: ModelInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 902,
) -> Dataset:
    """The SEG of a mask finding (payload format: :mod:`qcd.outputs.maskcodec`).

    ``sources`` may come in any order (headers suffice): frames follow the payload's
    ``sop_instance_uids``, which is the slice order the analyzer segmented in.

    Raises
    ------
    ValueError
        An unknown segment key, a mask that does not decode or does not match its
        UID list, or a UID that is not among ``sources``.
    """
    key = str(payload.get("segment", ""))
    if key not in SEGMENTS:
        raise ValueError(f"segment {key!r} is unknown; known: {', '.join(SEGMENTS)}")
    label, code = SEGMENTS[key]
    uids = [str(u) for u in payload["sop_instance_uids"]]
    mask = decode_mask(payload["mask"])
    if mask.ndim != 3 or mask.shape[0] != len(uids):
        raise ValueError(f"mask {mask.shape} does not have one frame per UID ({len(uids)})")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise ValueError(f"{len(missing)} masked instance(s) are not among the sources "
                         f"(first {missing[0]})")
    return build_seg([by_uid[u] for u in uids], mask, label=label, property_code=code,
                     algorithm=algorithm, series_instance_uid=series_instance_uid,
                     sop_instance_uid=sop_instance_uid, series_number=series_number)


def read_seg_mask(ds: Dataset, sources: Sequence[Dataset]) -> np.ndarray:
    """The segment-1 mask of a SEG as ``(len(sources), Rows, Columns)`` bool.

    Frames follow the order of ``sources``; sources whose frame was omitted as empty
    read back as zeros.

    Raises
    ------
    ValueError
        ``ds`` is not a Segmentation, or does not reference one of ``sources``.
    """
    seg = ds if isinstance(ds, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(ds)
    uids = [str(s.SOPInstanceUID) for s in sources]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    missing = [u for u in uids if u not in referenced]
    if missing:
        raise ValueError(f"the SEG does not reference {len(missing)} of the sources "
                         f"(first {missing[0]})")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[SEGMENT_NUMBER])
    return np.asarray(pixels[..., 0] > 0)
