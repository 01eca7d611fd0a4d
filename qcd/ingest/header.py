"""Parse and check an instance's header without decoding its pixels.

Both ingest paths (the SCP and ``qcd import``) come through here, so a dataset is
judged the same way whichever door it used. Every refusal is an
:class:`~qcd.errors.IngestError` with a specific status and comment.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Literal

from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import check_claimed, meta_end
from qcd.ingest.inflate import MIB, inflate
from qcd.uids import is_valid_uid

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_INFLATED = 256 * MIB
"""The default of ``ingest.max_inflated_mb``, in bytes."""
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: first item of encapsulated data
_VRS = {vr.encode() for vr in ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]}


@dataclass(frozen=True)
class InstanceHeader:
    """The header values qcd keeps for routing and dashboards (no patient data)."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    modality: str | None
    body_part: str | None
    manufacturer: str | None
    model_name: str | None
    station_name: str | None
    device_serial: str | None
    institution_name: str | None
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    accession_number: str | None
    study_date: str | None


def parse_header(
    part10: bytes, sop_class_uid: str, sop_uid: str, transfer_syntax: str,
    max_inflated: int = DEFAULT_MAX_INFLATED,
) -> InstanceHeader:
    """Parse the dataset in ``part10`` and check it against what the peer claimed.

    As :func:`parse_dataset`, for a whole file (preamble, File Meta, dataset): the
    data set is what follows the File Meta as pydicom reads it.

    Raises
    ------
    IngestError
        As :func:`parse_dataset`; 0xC210 also for an unreadable File Meta.
    """
    check_claimed(sop_class_uid, sop_uid)
    try:
        start = meta_end(part10)
    except Exception as exc:  # any parser failure means the bytes are not a file
        raise IngestError(status.UNDECODABLE, f"undecodable data set: {type(exc).__name__}") from exc
    return parse_dataset(part10[start:], sop_class_uid, sop_uid, transfer_syntax, max_inflated)


def parse_dataset(
    dataset: bytes, sop_class_uid: str, sop_uid: str, transfer_syntax: str,
    max_inflated: int = DEFAULT_MAX_INFLATED,
) -> InstanceHeader:
    """Parse an encoded data set (no File Meta) and check it against the peer's claims.

    Parameters
    ----------
    dataset
        The data set as received: the C-STORE's data set, or a file's bytes after
        its File Meta.
    sop_class_uid, sop_uid
        The Affected SOP Class/Instance UIDs of the C-STORE request.
    transfer_syntax
        The transfer syntax the dataset is encoded in.
    max_inflated
        The largest size, in bytes, a deflated data set may inflate to
        (``ingest.max_inflated_mb``). It is inflated here, bounded, before pydicom
        sees it; ``dataset`` itself is never changed.

    Raises
    ------
    IngestError
        0xC212 invalid or missing UIDs, 0xA900 SOP class/instance disagreement,
        0xC210 undecodable data (a corrupt or truncated deflate stream too), 0xC211
        short pixel data, 0xC213 pixel encoding that contradicts the transfer syntax,
        0xC214 a deflated data set that inflates beyond ``max_inflated``.
    """
    check_claimed(sop_class_uid, sop_uid)
    try:
        ds = _read(dataset, transfer_syntax, max_inflated)
        _check_complete(ds)
        header = _extract(ds, transfer_syntax)
        _check_pixels(ds, transfer_syntax)
    except IngestError:
        raise
    except Exception as exc:  # any parser failure means the bytes are not a dataset
        raise IngestError(status.UNDECODABLE, f"undecodable data set: {type(exc).__name__}") from exc
    for name, uid in (("Study", header.study_uid), ("Series", header.series_uid)):
        if not is_valid_uid(uid):
            raise IngestError(status.INVALID_UID, f"missing or invalid {name} Instance UID")
    if header.sop_class_uid != sop_class_uid:
        raise IngestError(status.DATASET_SOP_MISMATCH, "SOP Class UID differs from request")
    if header.sop_uid != sop_uid:
        raise IngestError(status.DATASET_SOP_MISMATCH, "SOP Instance UID differs from request")
    return header


def _read(dataset: bytes, transfer_syntax: str, max_inflated: int) -> Dataset:
    """The data set; a deflated one is inflated here, bounded (pydicom's inflate is not).

    The encoding is chosen from the transfer syntax as ``dcmread`` chooses it from the
    File Meta; reading the bare data set skips parsing our own File Meta again.
    """
    if not _is_deflated(transfer_syntax):
        _check_encoding(dataset, transfer_syntax)
        implicit_vr, little_endian = _encoding(transfer_syntax)
        # BytesIO shares a bytes object's buffer (no copy)
        return read_dataset(io.BytesIO(dataset), implicit_vr, little_endian)
    inflated = inflate(dataset, max_inflated)
    _check_first_element(inflated[:8], ExplicitVRLittleEndian)
    # what dcmread does once it has inflated; BytesIO shares ``inflated`` (no copy)
    return read_dataset(io.BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) for a data set, as ``pydicom.filereader.read_partial``
    decides them: any transfer syntax it does not single out is explicit VR little endian.
    """
    if transfer_syntax == ImplicitVRLittleEndian:
        return True, True
    if transfer_syntax == ExplicitVRBigEndian:
        return False, False
    if transfer_syntax in PrivateTransferSyntaxes:
        ts = PrivateTransferSyntaxes[PrivateTransferSyntaxes.index(transfer_syntax)]
        return bool(ts.is_implicit_VR), bool(ts.is_little_endian)
    return False, True


def _check_encoding(dataset: bytes, transfer_syntax: str) -> None:
    """Refuse a dataset whose first element contradicts the claimed transfer syntax.

    pydicom would silently guess the other VR encoding; the file we keep must be
    readable by any conforming reader, so a wrong claim is refused instead. (A
    deflated data set is checked once inflated, as Explicit VR Little Endian.)
    """
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        return
    _check_first_element(dataset[:8], ts)


def _check_first_element(head: bytes, ts: UID) -> None:
    if len(head) < 8:
        raise IngestError(status.UNDECODABLE, "data set is shorter than one element")
    claimed: Literal["little", "big"] = "little" if ts.is_little_endian else "big"
    other: Literal["little", "big"] = "big" if claimed == "little" else "little"
    if not _plausible_group(int.from_bytes(head[:2], claimed)):
        if _plausible_group(int.from_bytes(head[:2], other)):
            raise IngestError(status.TRANSFER_SYNTAX_MISMATCH, "byte order differs from the TS")
        raise IngestError(status.UNDECODABLE, "not a DICOM data set (first tag is garbage)")
    has_vr = head[4:6] in _VRS
    if ts.is_implicit_VR and has_vr:
        raise IngestError(status.TRANSFER_SYNTAX_MISMATCH, "explicit VR data, implicit VR TS")
    if not ts.is_implicit_VR and not has_vr:
        raise IngestError(status.TRANSFER_SYNTAX_MISMATCH, "implicit VR data, explicit VR TS")


def _is_deflated(transfer_syntax: str) -> bool:
    ts = UID(transfer_syntax)
    return ts.is_transfer_syntax and ts.is_deflated


def _plausible_group(group: int) -> bool:
    # Data sets open with group 0008 (SOP Common, Specific Character Set etc.).
    return 0x0008 <= group < 0x0100


def _check_complete(ds: Dataset) -> None:
    """pydicom reads a short final value without complaint; qcd does not."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != 0xFFFFFFFF
            and raw.value is not None
            and len(raw.value) < raw.length
        ):
            raise IngestError(status.UNDECODABLE, f"data set truncated in element {Tag(tag)}")
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise IngestError(status.UNDECODABLE, "no SOP Class/Instance UID: truncated or not DICOM")


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _extract(ds: Dataset, transfer_syntax: str) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        transfer_syntax=transfer_syntax,
        modality=(_text(ds, "Modality", 16) or "").upper() or None,
        body_part=_text(ds, "BodyPartExamined"),
        manufacturer=_text(ds, "Manufacturer"),
        model_name=_text(ds, "ManufacturerModelName"),
        station_name=_text(ds, "StationName"),
        device_serial=_text(ds, "DeviceSerialNumber"),
        institution_name=_text(ds, "InstitutionName"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_date=_text(ds, "StudyDate", 8),
    )


def _check_pixels(ds: Dataset, transfer_syntax: str) -> None:
    """Compare Pixel Data with what the header and transfer syntax promise."""
    if "PixelData" not in ds:
        return
    element = ds["PixelData"]
    pixel_data = element.value or b""
    encapsulated = element.is_undefined_length and pixel_data[:4] == _ITEM_TAG
    if UID(transfer_syntax).is_encapsulated:
        if not encapsulated:
            raise IngestError(
                status.TRANSFER_SYNTAX_MISMATCH,
                "compressed transfer syntax but native pixel data",
            )
        return
    if element.is_undefined_length:
        raise IngestError(status.TRANSFER_SYNTAX_MISMATCH, "encapsulated pixel data in native TS")
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    bits = _int(ds, "BitsAllocated") or 0
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if not (rows and cols and bits):
        raise IngestError(status.PIXEL_DATA_MISMATCH, "Pixel Data without Rows/Columns/Bits")
    expected_bits = rows * cols * samples * frames * bits
    expected = (expected_bits + 7) // 8
    if len(pixel_data) < expected:
        raise IngestError(
            status.PIXEL_DATA_MISMATCH,
            f"Pixel Data {len(pixel_data)} bytes, header needs {expected}"[:64],
        )
