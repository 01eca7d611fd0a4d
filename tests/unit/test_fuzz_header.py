"""Property-based fuzzing of the ingest parse path (File Meta and data set).

Whatever bytes a peer sends, the C-STORE handler must answer with one specific
refusal status or accept a data set whose UIDs are the ones claimed; any other
exception would become a generic 0x0110 and hide the cause. Hypothesis mutates
real files (truncation, byte flips, insertions, deletions) and also feeds raw bytes.
Examples per property: ``QCD_FUZZ_EXAMPLES`` (default 200; docs/RELIABILITY.md lists
the long runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import encode_part10, split_part10
from qcd.ingest.header import parse_header
from qcd.synth import SeriesSpec, make_study

REAL = sorted((Path(__file__).parents[1] / "data" / "real-transfer-syntaxes").glob("*.dcm"))
EXAMPLES = int(os.environ.get("QCD_FUZZ_EXAMPLES", "200"))
REFUSALS = {status.UNDECODABLE, status.PIXEL_DATA_MISMATCH, status.INVALID_UID,
            status.TRANSFER_SYNTAX_MISMATCH, status.DATASET_SOP_MISMATCH,
            status.INFLATED_TOO_LARGE}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _seeds() -> list[bytes]:
    out = Path(os.environ.get("PYTEST_TMP", "/tmp")) / "qcd-fuzz-seeds"
    if not out.exists() or not any(out.rglob("*.dcm")):
        make_study(out, [SeriesSpec("CT", 1, "x", "CHEST"), SeriesSpec("PT", 1, "p")], 8)
    return [p.read_bytes() for p in sorted(out.rglob("*.dcm"))] + [p.read_bytes() for p in REAL[:3]]


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with a few truncations, flips, insertions or deletions."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


def _check(data: bytes) -> None:
    """Split then parse as the handler does; only specific refusals may escape."""
    try:
        meta, body = split_part10(data)
    except IngestError as exc:
        assert exc.status == status.UNDECODABLE and exc.message
        return
    ts = str(meta.TransferSyntaxUID)
    cls = str(meta.get("MediaStorageSOPClassUID", "1.2.3"))
    uid = str(meta.get("MediaStorageSOPInstanceUID", "1.2.3.4"))
    try:
        header = parse_header(encode_part10(body, ts, cls, uid, "FUZZ"), cls, uid, ts)
    except IngestError as exc:
        assert exc.status in REFUSALS, f"unexpected status {exc.status:#06x}: {exc.message}"
        assert exc.message
        return
    assert header.sop_uid == uid and header.sop_class_uid == cls


@FUZZ
@given(mutated())
def test_mutated_files_get_a_specific_answer(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.binary(max_size=600))
def test_raw_bytes_get_a_specific_answer(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.binary(max_size=300))
def test_garbage_after_a_valid_preamble_is_undecodable(tail: bytes) -> None:
    _check(b"\x00" * 128 + b"DICM" + tail)


@pytest.mark.parametrize("cut", [0, 1, 127, 128, 131, 132, 140, 200])
def test_truncated_prefixes_are_undecodable(cut: int) -> None:
    with pytest.raises(IngestError) as info:
        split_part10(SEEDS[0][:cut])
    assert info.value.status == status.UNDECODABLE
