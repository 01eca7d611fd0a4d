"""Header checks: every malformed input gets its own specific status."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    encode_file_meta,
    encode_part10,
    split_part10,
)
from qcd.ingest.header import parse_dataset, parse_header
from qcd.synth import SeriesSpec, make_study

REAL = Path(__file__).parents[1] / "data" / "real-transfer-syntaxes"


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [path] = make_study(tmp_path_factory.mktemp("ct"), [SeriesSpec("CT", 1, "x", "CHEST")], 16)
    return path


def _parse(body: bytes, ts: str, sop_class: str, sop_uid: str) -> object:
    return parse_header(encode_part10(body, ts, sop_class, sop_uid, "T"), sop_class, sop_uid, ts)


def _split(path: Path) -> tuple[bytes, str, str, str]:
    return _split_bytes(path.read_bytes())


def _split_bytes(data: bytes) -> tuple[bytes, str, str, str]:
    meta, body = split_part10(data)
    return (body, str(meta.TransferSyntaxUID), str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID))


def _status_of(body: bytes, ts: str, sop_class: str, sop_uid: str) -> int:
    with pytest.raises(IngestError) as info:
        _parse(body, ts, sop_class, sop_uid)
    assert info.value.message  # always a specific comment
    return info.value.status


def test_good_header_is_extracted_without_patient_data(ct_file: Path) -> None:
    body, ts, cls, uid = _split(ct_file)
    h = _parse(body, ts, cls, uid)
    assert h.modality == "CT" and h.body_part == "CHEST"  # type: ignore[attr-defined]
    assert h.sop_uid == uid and h.transfer_syntax == ts  # type: ignore[attr-defined]
    assert not any("QCD^DEMO" in str(v) for v in vars(h).values())


@pytest.mark.parametrize("path", sorted(REAL.glob("*.dcm")), ids=lambda p: p.name)
def test_real_vendor_files_in_nine_transfer_syntaxes_pass(path: Path) -> None:
    body, ts, cls, uid = _split(path)
    assert _parse(body, ts, cls, uid).modality == "MR"  # type: ignore[attr-defined]


@pytest.mark.parametrize("keep", [10, 100, 300, -200, -1])
def test_truncated_data_set(ct_file: Path, keep: int) -> None:
    body, ts, cls, uid = _split(ct_file)
    assert _status_of(body[:keep], ts, cls, uid) == status.UNDECODABLE


def test_pydicom_truncated_test_file() -> None:
    body, ts, cls, uid = _split(Path(get_testdata_file("MR_truncated.dcm")))
    assert _status_of(body, ts, cls, uid) == status.UNDECODABLE


def test_garbage_bytes(ct_file: Path) -> None:
    _, ts, cls, uid = _split(ct_file)
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert _status_of(garbage, ts, cls, uid) == status.UNDECODABLE
    assert _status_of(b"", ts, cls, uid) == status.UNDECODABLE


def test_pixel_data_shorter_than_rows_times_columns(ct_file: Path) -> None:
    ds = pydicom.dcmread(ct_file)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # well-formed, just too short
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body, ts, cls, uid = _split_bytes(buf.getvalue())
    assert _status_of(body, ts, cls, uid) == status.PIXEL_DATA_MISMATCH


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        ("1.2.840.10008.1.2", status.TRANSFER_SYNTAX_MISMATCH),  # implicit VR claim
        ("1.2.840.10008.1.2.2", status.TRANSFER_SYNTAX_MISMATCH),  # big endian claim
        ("1.2.840.10008.1.2.4.50", status.TRANSFER_SYNTAX_MISMATCH),  # JPEG claim, native data
        ("1.2.840.10008.1.2.1.99", status.UNDECODABLE),  # deflate claim, not deflated
    ],
)
def test_wrong_transfer_syntax_claims(ct_file: Path, claimed: str, expected: int) -> None:
    body, _, cls, uid = _split(ct_file)
    assert _status_of(body, claimed, cls, uid) == expected


def test_compressed_data_claimed_as_native() -> None:
    body, _, cls, uid = _split(REAL / "4.dcm")  # RLE
    assert _status_of(body, ExplicitVRLittleEndian, cls, uid) == status.TRANSFER_SYNTAX_MISMATCH


def test_request_and_data_set_must_agree(ct_file: Path) -> None:
    body, ts, cls, uid = _split(ct_file)
    assert _status_of(body, ts, "1.2.840.10008.5.1.4.1.1.4", uid) == status.DATASET_SOP_MISMATCH
    assert _status_of(body, ts, cls, "1.2.3.4") == status.DATASET_SOP_MISMATCH
    assert _status_of(body, ts, cls, "1.2.3/../4") == status.INVALID_UID


def test_invalid_study_uid_in_data_set(ct_file: Path) -> None:
    ds = pydicom.dcmread(ct_file)
    ds.StudyInstanceUID = "1.2.3/../../../../tmp"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body, ts, cls, uid = _split_bytes(buf.getvalue())
    assert _status_of(body, ts, cls, uid) == status.INVALID_UID


def test_split_part10_refuses_non_part10() -> None:
    with pytest.raises(IngestError) as info:
        split_part10(b"not dicom at all" * 20)
    assert info.value.status == status.UNDECODABLE


def test_encode_part10_keeps_data_set_bytes(ct_file: Path) -> None:
    body, ts, cls, uid = _split(ct_file)
    again = split_part10(encode_part10(body, ts, cls, uid, "CT1"))
    assert again[1] == body
    assert again[0].SourceApplicationEntityTitle == "CT1"


def _pydicom_part10_meta(ts: str, cls: str, uid: str, ae: str | None) -> bytes:
    """The File Meta as pydicom's writer encodes it (what encode_file_meta must match)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(cls)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if ae:
        meta.SourceApplicationEntityTitle = ae
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


_COMPONENT = st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,8}", fullmatch=True))
_UIDS = st.lists(_COMPONENT, min_size=2, max_size=12).map(".".join).filter(lambda u: len(u) <= 64)


@given(uid=_UIDS, cls=_UIDS,
       ts=st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"]),
       ae=st.one_of(st.none(), st.just(""), st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)))
def test_file_meta_is_byte_identical_to_pydicoms(uid: str, cls: str, ts: str,
                                                 ae: str | None) -> None:
    assert encode_file_meta(ts, cls, uid, ae) == _pydicom_part10_meta(ts, cls, uid, ae)


@pytest.mark.parametrize("path", sorted(REAL.glob("*.dcm")), ids=lambda p: p.name)
def test_parse_dataset_reads_the_bare_data_set_as_parse_header_reads_the_file(
        path: Path) -> None:
    body, ts, cls, uid = _split(path)
    assert parse_dataset(body, cls, uid, ts) == _parse(body, ts, cls, uid)


def test_parse_dataset_refuses_like_parse_header(ct_file: Path) -> None:
    body, ts, cls, uid = _split(ct_file)
    for bad in (body[:100], body[:-200], b"", body.replace(b"CHEST", b"CH\x00ST")):
        outcomes = []
        for parse in (lambda: parse_dataset(bad, cls, uid, ts), lambda: _parse(bad, ts, cls, uid)):
            try:
                outcomes.append(parse())
            except IngestError as exc:
                outcomes.append(exc.status)
        assert outcomes[0] == outcomes[1]
    with pytest.raises(IngestError) as info:
        parse_dataset(body, cls, "1.2/../3", ts)
    assert info.value.status == status.INVALID_UID
