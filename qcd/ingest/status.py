"""C-STORE status codes qcd answers with (PS3.4 Annex B.2.3 and GG.4).

Failure codes in the 0xCxxx "Cannot understand" range are specific so that a
modality's log tells the operator what was wrong.
"""

from __future__ import annotations

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
"""Refused: out of resources (spool below its free-space floor, disk full)."""
DATASET_SOP_MISMATCH = 0xA900
"""Error: data set does not match SOP class."""
CANNOT_UNDERSTAND = 0xC000
UNDECODABLE = 0xC210
"""The data set could not be parsed (truncated, garbage, wrong transfer syntax)."""
PIXEL_DATA_MISMATCH = 0xC211
"""Pixel Data length does not match Rows x Columns x frames x samples x bits."""
INVALID_UID = 0xC212
"""A Study/Series/SOP Instance UID is missing or not a valid DICOM UID."""
TRANSFER_SYNTAX_MISMATCH = 0xC213
"""The pixel data encoding contradicts the negotiated transfer syntax."""
INFLATED_TOO_LARGE = 0xC214
"""A deflated data set inflates beyond ``ingest.max_inflated_mb`` (a decompression bomb).

A "cannot understand" failure, not "out of resources": the same bytes would be
refused again, so a sender must not retry them."""
DATABASE_UNAVAILABLE = 0xA701
"""Refused: the instance could not be recorded in the database."""
PROCESSING_FAILURE = 0x0110

NAMES = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Out of resources",
    DATASET_SOP_MISMATCH: "Dataset does not match SOP class",
    CANNOT_UNDERSTAND: "Cannot understand",
    UNDECODABLE: "Cannot understand: undecodable data set",
    PIXEL_DATA_MISMATCH: "Cannot understand: pixel data length mismatch",
    INVALID_UID: "Cannot understand: invalid UID",
    TRANSFER_SYNTAX_MISMATCH: "Cannot understand: transfer syntax mismatch",
    INFLATED_TOO_LARGE: "Cannot understand: inflated data set too large",
    DATABASE_UNAVAILABLE: "Out of resources: database unavailable",
    PROCESSING_FAILURE: "Processing failure",
}
