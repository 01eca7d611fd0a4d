"""Part 10 framing: the preamble and File Meta qcd writes in front of every received data
set, and the reading of it back.

The data set bytes are never re-encoded: qcd's File Meta is prefixed to them exactly as
the sender encoded them, and :func:`split_part10` separates the two again.
"""

from __future__ import annotations

import functools
import io

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from qcd import __version__
from qcd.errors import IngestError
from qcd.ingest import status
from qcd.uids import is_valid_uid

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1499.1"
"""qcd's implementation class UID (written in the File Meta of spooled files)."""
IMPLEMENTATION_VERSION = f"QCD_{__version__}"[:16]


def encode_part10(
    dataset_bytes: bytes,
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae: str | None,
) -> bytes:
    """Prefix the encoded dataset with a preamble and our File Meta Information.

    The dataset bytes are kept exactly as received. (The C-STORE path writes
    :func:`encode_file_meta` and the data set to the spool as two parts instead,
    which saves a copy of the whole data set.)

    Raises
    ------
    IngestError
        0xC212: a claimed SOP Class/Instance UID is empty or invalid (pydicom's File
        Meta writer would fail on it with an exception of its own).
    """
    return encode_file_meta(transfer_syntax, sop_class_uid, sop_instance_uid,
                            calling_ae) + dataset_bytes


def encode_file_meta(
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    calling_ae: str | None,
) -> bytes:
    """The preamble, "DICM" and our File Meta Information, as pydicom writes them.

    pydicom's writer costs ~0.3 ms an instance; only the SOP Instance UID differs
    between the instances of one sender, so pydicom encodes the rest once per
    (SOP class, transfer syntax, calling AE) and the UID element is spliced in.

    Raises
    ------
    IngestError
        0xC212: a claimed SOP Class/Instance UID is empty or invalid.
    """
    check_claimed(sop_class_uid, sop_instance_uid)
    head, tail = _meta_template(sop_class_uid, transfer_syntax, calling_ae or None)
    value = sop_instance_uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"  # UI is padded with NUL to an even length
    element = _INSTANCE_UID_TAG + len(value).to_bytes(2, "little") + value
    group_length = int.from_bytes(head[_GROUP_LENGTH], "little") + len(element)
    return b"".join((head[: _GROUP_LENGTH.start], group_length.to_bytes(4, "little"),
                     head[_GROUP_LENGTH.stop :], element, tail))


_INSTANCE_UID_TAG = b"\x02\x00\x03\x00UI"  # (0002,0003) UI, explicit VR little endian
_GROUP_LENGTH = slice(140, 144)  # value of (0002,0000) UL: preamble 128 + "DICM" + 8


@functools.lru_cache(maxsize=256)
def _meta_template(
    sop_class_uid: str, transfer_syntax: str, calling_ae: str | None
) -> tuple[bytes, bytes]:
    """pydicom's encoding of our File Meta, split around (0002,0003), which is left out.

    The group length in ``head`` counts everything but the left-out element.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID("1.2")  # placeholder, cut out below
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    encoded = buf.getvalue()
    start = encoded.index(_INSTANCE_UID_TAG, _GROUP_LENGTH.stop)
    end = start + len(_INSTANCE_UID_TAG) + 2 + int.from_bytes(encoded[start + 6 : start + 8],
                                                                "little")
    group_length = int.from_bytes(encoded[_GROUP_LENGTH], "little") - (end - start)
    head = (encoded[: _GROUP_LENGTH.start] + group_length.to_bytes(4, "little")
            + encoded[_GROUP_LENGTH.stop : start])
    return head, encoded[end:]


def split_part10(data: bytes) -> tuple[FileMetaDataset, bytes]:
    """Split a Part 10 file into its File Meta and the dataset bytes as stored.

    Raises
    ------
    IngestError
        No DICM prefix or an unreadable File Meta group (0xC210).
    """
    fp = io.BytesIO(data)
    try:
        pydicom.filereader.read_preamble(fp, False)
        meta = pydicom.filereader._read_file_meta_info(fp)
        # decode every raw element now, those inside sequences too: a bad VR or length
        # must fail here, not when a caller turns an element into a string
        for _ in meta.iterall():
            pass
        ts = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:  # pydicom raises many types on bad input
        raise IngestError(status.UNDECODABLE, f"not a DICOM Part 10 file: {exc}"[:64]) from exc
    if not ts:
        raise IngestError(status.UNDECODABLE, "File Meta has no Transfer Syntax UID")
    if not is_valid_uid(ts) or not UID(ts).is_transfer_syntax:
        raise IngestError(status.UNDECODABLE, "File Meta Transfer Syntax UID is not one")
    return meta, data[fp.tell() :]


def check_claimed(sop_class_uid: str, sop_uid: str) -> None:
    """Refuse (0xC212) SOP Class/Instance UIDs claimed by a C-STORE or a File Meta that
    are not valid UIDs: they name spool files and File Meta elements."""
    for name, uid in (("SOP Class", sop_class_uid), ("SOP Instance", sop_uid)):
        if not is_valid_uid(uid):
            raise IngestError(status.INVALID_UID, f"invalid Affected {name} UID")


def meta_end(part10: bytes) -> int:
    """Where the data set starts: after the File Meta as pydicom reads it."""
    fp = io.BytesIO(part10)  # shares part10's buffer, no copy
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return fp.tell()
