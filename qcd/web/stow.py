"""STOW-RS (PS3.18 10.5) as a second ingest path: ``POST /dicom-web/studies[/{study}]``.

Each part of the ``multipart/related; type="application/dicom"`` body is a Part 10
file; its data set goes through :meth:`qcd.ingest.service.IngestService.store`
exactly like a C-STORE (same checks, spool, rows and statuses). The answer is a DICOM
JSON data set: ReferencedSOPSequence for the stored instances, FailedSOPSequence with
FailureReason = the qcd status (the C-STORE status table of the README) for the
refused ones. 200 all stored, 202 some refused, 409 none stored.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import split_part10
from qcd.ingest.inflate import inflated_size
from qcd.ingest.service import IngestService

LOGGER = logging.getLogger(__name__)
STOW_AE = "QCD-STOW"
"""Recorded as the calling AE title of instances received by STOW-RS."""
DICOM_JSON = "application/dicom+json"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_CLASS = "00081150"
_REFERENCED_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


class StowRequestError(ValueError):
    """The request as a whole cannot be taken (``status`` is the HTTP status)."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class PartResult:
    sop_class_uid: str
    sop_uid: str
    status: int
    comment: str = ""


def _params(content_type: str) -> tuple[str, dict[str, str]]:
    msg = Message()
    msg["Content-Type"] = content_type
    params = {k.lower(): str(v) for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type(), params


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The parts of a ``multipart/related; type="application/dicom"`` body: (type, bytes).

    Raises
    ------
    StowRequestError
        415 another media type; 400 no boundary, no parts or a malformed body.
    """
    media, params = _params(content_type)
    if media != "multipart/related" or params.get("type", "").lower() != "application/dicom":
        raise StowRequestError(415, 'send multipart/related; type="application/dicom"')
    boundary = params.get("boundary", "").encode("latin-1", "replace")
    if not boundary:
        raise StowRequestError(400, "multipart body without a boundary parameter")
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise StowRequestError(400, "no multipart boundary in the body")
        pos += 2
    parts: list[tuple[str, bytes]] = []
    while True:
        pos += len(delimiter)
        if body[pos:pos + 2] == b"--":
            break  # close delimiter
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise StowRequestError(400, "truncated multipart body (no closing boundary)")
        end = body.find(b"\r\n" + delimiter, eol)
        if end < 0:
            raise StowRequestError(400, "truncated multipart body (no closing boundary)")
        part = body[eol + 2:end]
        head_end = part.find(b"\r\n\r\n")
        if part.startswith(b"\r\n"):
            headers, content = b"", part[2:]
        elif head_end >= 0:
            headers, content = part[:head_end], part[head_end + 4:]
        else:
            raise StowRequestError(400, "multipart part without a header/body separator")
        ctype = "application/dicom"
        for line in headers.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type" and value.strip():
                ctype = _params(value.strip())[0]
        parts.append((ctype, content))
        pos = end + 2
    if not parts:
        raise StowRequestError(400, "the multipart body has no parts")
    return parts


def store_parts(service: IngestService, parts: list[tuple[str, bytes]],
                study_uid: str | None = None, calling_ae: str = STOW_AE) -> list[PartResult]:
    """Store every part through the C-STORE path; one result per part.

    Also used by the audit's WADO-RS retrieve (``calling_ae`` then names that source).
    """
    results: list[PartResult] = []
    for ctype, data in parts:
        if ctype != "application/dicom":
            results.append(PartResult("", "", status.CANNOT_UNDERSTAND,
                                      f"part of type {ctype[:40]}, not application/dicom"))
            continue
        try:
            meta, dataset = split_part10(data)
        except IngestError as exc:
            results.append(PartResult("", "", exc.status, exc.message))
            continue
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        ts = str(meta.TransferSyntaxUID)
        if study_uid is not None and _study_of(data, dataset, ts, service.max_inflated) \
                not in (None, study_uid):
            results.append(PartResult(sop_class, sop_uid, status.DATASET_SOP_MISMATCH,
                                      "Study Instance UID differs from the request URL"))
            continue
        result = service.store(dataset, transfer_syntax=ts,
                               sop_class_uid=sop_class, sop_uid=sop_uid, calling_ae=calling_ae)
        results.append(PartResult(sop_class, sop_uid, result.status, result.comment))
    return results


def _study_of(data: bytes, dataset: bytes, transfer_syntax: str,
              max_inflated: int) -> str | None:
    """The data set's Study Instance UID (None: unreadable, left to the store's checks).

    pydicom inflates a deflated data set whole and unbounded, so its inflated size is
    counted first: a decompression bomb gives None here and the store's 0xC214.
    """
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            inflated_size(dataset, max_inflated)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "") or None
    except Exception:  # the store path judges undecodable data with its own status
        return None


def response(results: list[PartResult]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the DICOM JSON STOW-RS response data set."""
    stored = [r for r in results if r.status == status.SUCCESS]
    failed = [r for r in results if r.status != status.SUCCESS]
    body: dict[str, Any] = {}

    def ref(r: PartResult) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if r.sop_class_uid:
            item[_REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [r.sop_class_uid]}
        if r.sop_uid:
            item[_REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [r.sop_uid]}
        return item

    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [ref(r) for r in stored]}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [
            {**ref(r), _FAILURE_REASON: {"vr": "US", "Value": [r.status]}} for r in failed]}
        for r in failed:
            LOGGER.info("STOW-RS part refused: 0x%04X %s", r.status, r.comment)
    code = 200 if not failed else (409 if not stored else 202)
    return code, body
