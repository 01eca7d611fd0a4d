"""Deflated data sets: inflated by qcd, bounded, before pydicom sees them.

A decompression bomb (hundreds of MB of zeros in one OB element, a few hundred kB once
deflated) is refused with 0xC214 while holding about one chunk of the inflated bytes;
a valid deflated data set parses to the same header as its uncompressed twin; a
corrupt or truncated deflate stream is 0xC210.
"""

from __future__ import annotations

import io
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from qcd.errors import IngestError
from qcd.ingest import inflate as inflate_module
from qcd.ingest import status
from qcd.ingest.filemeta import encode_part10, split_part10
from qcd.ingest.header import DEFAULT_MAX_INFLATED, parse_header
from qcd.ingest.inflate import MIB, inflated_size
from qcd.synth import SeriesSpec, make_study

DEFLATED = str(DeflatedExplicitVRLittleEndian)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BOMB_UID = "1.2.826.0.1.3680043.10.1499.99.1"


def deflate_bomb(mib: int, sop_uid: str = BOMB_UID) -> bytes:
    """A valid deflated CT data set whose private OB element holds ``mib`` MiB of zeros.

    Built from one deflated MiB of zeros repeated (a full flush resets the compressor,
    so every MiB deflates to the same bytes): ~1 kB per MiB, in milliseconds.
    """
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = sop_uid + ".1"
    ds.SeriesInstanceUID = sop_uid + ".2"
    ds.Modality = "CT"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    head = buf.getvalue() + b"\x09\x00\x10\x10OB\x00\x00" + (mib * MIB).to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflater.compress(head) + deflater.flush(zlib.Z_FULL_FLUSH)
    one_mib = deflater.compress(bytes(MIB)) + deflater.flush(zlib.Z_FULL_FLUSH)
    return first + one_mib * mib + deflater.flush()


def _parse(body: bytes, sop_uid: str = BOMB_UID, ts: str = DEFLATED, cls: str = CT_IMAGE,
           **kwargs: Any) -> Any:
    return parse_header(encode_part10(body, ts, cls, sop_uid, "T"), cls, sop_uid, ts, **kwargs)


def _refusal(body: bytes, **kwargs: Any) -> IngestError:
    with pytest.raises(IngestError) as info:
        _parse(body, **kwargs)
    assert info.value.message
    return info.value


def _deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def _deflated_twin(path: Path) -> tuple[bytes, bytes, str, str]:
    """(Explicit VR LE data set, the same deflated, SOP Class UID, SOP Instance UID)."""
    meta, body = split_part10(path.read_bytes())
    if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        deflated, plain = body, zlib.decompress(body, -zlib.MAX_WBITS)
    else:
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        deflated, plain = _deflate(body), body
    return plain, deflated, str(meta.MediaStorageSOPClassUID), \
        str(meta.MediaStorageSOPInstanceUID)


@pytest.fixture(scope="module")
def deflated_mr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [path] = make_study(tmp_path_factory.mktemp("dfl"),
                        [SeriesSpec("MR", 1, "d", "HEART", compression="deflate")], 16)
    return path


def test_bomb_beyond_the_default_limit_is_refused_holding_one_chunk() -> None:
    bomb = deflate_bomb(520)  # 520 MiB once inflated, ~540 kB on the wire
    assert len(bomb) < 1 << 20
    part10 = encode_part10(bomb, DEFLATED, CT_IMAGE, BOMB_UID, "T")
    tracemalloc.start()
    try:
        with pytest.raises(IngestError) as info:
            parse_header(part10, CT_IMAGE, BOMB_UID, DEFLATED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status == status.INFLATED_TOO_LARGE == 0xC214
    assert info.value.message == "inflated size exceeds ingest.max_inflated_mb (256 MiB)"
    assert len(info.value.message) <= 64  # it becomes the LO Error Comment
    # pydicom alone peaked at ~2x the inflated size (docs/RELIABILITY.md); now ~1 chunk
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB while refusing a 520 MiB bomb"


def test_zlib_is_never_asked_for_more_than_the_limit_plus_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[int] = []
    real_decompressobj, real_decompress = zlib.decompressobj, zlib.decompress

    class Spy:
        def __init__(self, wbits: int) -> None:
            self.inner = real_decompressobj(wbits)

        def decompress(self, data: Any, max_length: int = 0) -> bytes:
            asked.append(max_length)
            return self.inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    def one_shot(data: Any, wbits: int, bufsize: int) -> bytes:
        asked.append(bufsize)
        return real_decompress(data, wbits, bufsize)

    monkeypatch.setattr(inflate_module.zlib, "decompressobj", Spy)
    monkeypatch.setattr(inflate_module.zlib, "decompress", one_shot)
    limit = MIB + 12345
    error = _refusal(deflate_bomb(8), max_inflated=limit)
    assert error.status == status.INFLATED_TOO_LARGE
    assert "ingest.max_inflated_mb" in error.message
    assert asked and all(0 < n <= limit + 1 for n in asked), asked  # 0 would be unlimited
    assert sum(asked) <= limit + 1  # the output of every call, at most, together
    asked.clear()
    assert _parse(deflate_bomb(1), max_inflated=2 * MIB).modality == "CT"  # within: accepted
    assert all(0 < n <= 2 * MIB + 1 for n in asked)


def test_limit_is_inclusive() -> None:
    bomb = deflate_bomb(1)
    size = len(zlib.decompress(bomb, -zlib.MAX_WBITS))
    assert _parse(bomb, max_inflated=size).sop_uid == BOMB_UID
    assert _refusal(bomb, max_inflated=size - 1).status == status.INFLATED_TOO_LARGE
    assert inflated_size(bomb, size) == size
    with pytest.raises(ValueError):
        inflated_size(bomb, 0)


def test_valid_deflated_data_set_stays_within_twice_its_inflated_size() -> None:
    body = deflate_bomb(64)  # valid: 64 MiB, under the default limit
    part10 = encode_part10(body, DEFLATED, CT_IMAGE, BOMB_UID, "T")
    before = bytes(part10)
    tracemalloc.start()
    try:
        header = parse_header(part10, CT_IMAGE, BOMB_UID, DEFLATED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.sop_uid == BOMB_UID and header.transfer_syntax == DEFLATED
    assert part10 == before  # what the spool keeps is what came in
    assert peak < 2.2 * 64 * MIB, f"peak {peak / MIB:.0f} MiB for a 64 MiB data set"


@pytest.mark.parametrize("source", ["synthetic MR (deflated)", "pydicom image_dfl.dcm",
                                    "real MR 1.dcm, deflated here"])
def test_valid_deflated_data_set_parses_like_its_uncompressed_twin(
    deflated_mr: Path, source: str
) -> None:
    path = {"synthetic MR (deflated)": deflated_mr,
            "pydicom image_dfl.dcm": Path(str(get_testdata_file("image_dfl.dcm"))),
            "real MR 1.dcm, deflated here":
                Path(__file__).parents[1] / "data" / "real-transfer-syntaxes" / "1.dcm"}[source]
    plain, deflated, cls, uid = _deflated_twin(path)
    part10 = encode_part10(deflated, DEFLATED, cls, uid, "CT1")
    got = parse_header(part10, cls, uid, DEFLATED)
    want = _parse(plain, uid, str(ExplicitVRLittleEndian), cls)
    assert vars(got) == {**vars(want), "transfer_syntax": DEFLATED}
    assert split_part10(part10)[1] == deflated  # stored exactly as received
    # pydicom reading the stored file (as the analyzers will) sees the same data set
    ds = pydicom.dcmread(io.BytesIO(part10))
    assert ds.SOPInstanceUID == uid and ds.get("Modality") == got.modality


def test_pad_byte_after_the_deflate_stream_is_accepted(deflated_mr: Path) -> None:
    plain, _, cls, uid = _deflated_twin(deflated_mr)
    assert _parse(_deflate(plain) + b"\x00", uid, cls=cls).sop_uid == uid  # PS3.5 A.5 pad


@pytest.mark.parametrize("cut", [0, 1, 2, 10, -200, -2, -1])
def test_truncated_deflate_stream_is_undecodable(deflated_mr: Path, cut: int) -> None:
    plain, _, cls, uid = _deflated_twin(deflated_mr)
    deflated = _deflate(plain)  # pydicom's own stream ends in a pad byte; this one does not
    assert len(deflated) > 400
    error = _refusal(deflated[:cut], sop_uid=uid, cls=cls)
    assert error.status == status.UNDECODABLE
    assert "deflate" in error.message


def test_truncated_bomb_is_undecodable_not_too_large() -> None:
    bomb = deflate_bomb(16)
    error = _refusal(bomb[: len(bomb) // 2], max_inflated=DEFAULT_MAX_INFLATED)
    assert (error.status, error.message) == (status.UNDECODABLE,
                                              "deflate stream truncated (no final block)")


@pytest.mark.parametrize("junk", [b"\xff" * 64, bytes(range(256)) * 4])
def test_corrupt_deflate_stream_is_undecodable(junk: bytes) -> None:
    error = _refusal(junk)
    assert error.status == status.UNDECODABLE
    assert error.message.startswith("corrupt deflate stream")


def test_uncompressed_data_claimed_as_deflated_is_undecodable(deflated_mr: Path) -> None:
    plain, _, cls, uid = _deflated_twin(deflated_mr)
    assert _refusal(plain, sop_uid=uid, cls=cls).status == status.UNDECODABLE


def test_implicit_vr_data_set_inside_the_deflate_stream_is_a_mismatch(
    deflated_mr: Path
) -> None:
    ds = pydicom.dcmread(deflated_mr)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    error = _refusal(_deflate(buf.getvalue()), sop_uid=str(ds.SOPInstanceUID),
                     cls=str(ds.SOPClassUID))
    assert error.status == status.TRANSFER_SYNTAX_MISMATCH  # pydicom would have guessed


def test_qcd_analyze_grouping_uses_the_configured_inflate_limit(tmp_path: Path) -> None:
    from qcd.analyze import group_series

    path = tmp_path / "bomb.dcm"
    path.write_bytes(encode_part10(deflate_bomb(3), DEFLATED, CT_IMAGE, BOMB_UID, "T"))
    series, skipped = group_series([tmp_path], max_inflated=2 * MIB)
    assert series == {} and len(skipped) == 1 and "0xC214" in skipped[0]
    series, skipped = group_series([tmp_path], max_inflated=4 * MIB)
    assert skipped == [] and list(series) == [BOMB_UID + ".2"]
