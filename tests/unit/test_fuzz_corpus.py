"""Replay the crashes the atheris fuzzers found (``tests/data/fuzz/<target>/``).

Plain calls of the same targets the harnesses in ``tests/fuzz/`` drive, without
atheris, so the default test run keeps every fixed crash fixed. Each file is one input
that once broke the target's contract (docs/RELIABILITY.md, "Coverage-guided fuzzing").
"""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import encode_part10
from qcd.ingest.header import parse_header
from qcd.ingest.inflate import MIB
from tests.fuzz.targets import BASIC, HttpTarget, cstore_input, parse_one
from tests.unit.test_header_deflate import BOMB_UID, CT_IMAGE, DEFLATED, deflate_bomb

CORPUS = Path(__file__).parents[1] / "data" / "fuzz"
PARSE = sorted((CORPUS / "parse").iterdir())
HTTP = sorted((CORPUS / "http").iterdir())


@pytest.mark.parametrize("path", PARSE, ids=[p.name for p in PARSE])
def test_parse_corpus(path: Path) -> None:
    """Each former crash now parses or is refused with a listed status: ``parse_one``
    asserts that contract and raises on anything else."""
    parse_one(path.read_bytes())


@pytest.fixture(scope="module")
def http() -> Iterator[HttpTarget]:
    target = HttpTarget()
    yield target
    target.close()


@pytest.mark.parametrize("path", HTTP, ids=[p.name for p in HTTP])
def test_http_corpus(http: HttpTarget, path: Path) -> None:
    reply = http.one(path.read_bytes())
    assert reply.startswith(b"HTTP/1.")


@pytest.mark.parametrize(("cls", "uid"), [("", ""), ("", "1.2.3"), ("1.2.3", " "),
                                          ("1.2.3", "1.2.3\\4")])
def test_claimed_uids_are_refused_before_the_file_meta_is_written(cls: str, uid: str) -> None:
    with pytest.raises(IngestError) as info:
        encode_part10(b"", "1.2.840.10008.1.2.1", cls, uid, "CT1")
    assert info.value.status == status.INVALID_UID


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """Not found by the fuzzer (``-max_len`` keeps inflated sizes under its RSS limit):
    a deflated C-STORE of ~540 kB that inflates to 520 MiB, beyond the default limit."""
    return deflate_bomb(520)


def test_deflate_bomb_is_refused_without_inflating_it(bomb: bytes) -> None:
    parse_one(cstore_input(bomb, DEFLATED, CT_IMAGE, BOMB_UID))  # a specific refusal...
    with pytest.raises(IngestError) as info:
        parse_header(encode_part10(bomb, DEFLATED, CT_IMAGE, BOMB_UID, "T"), CT_IMAGE,
                     BOMB_UID, DEFLATED)
    assert info.value.status == status.INFLATED_TOO_LARGE  # ...and this one


def test_deflate_bomb_posted_by_stow_to_a_study_is_refused(http: HttpTarget,
                                                           bomb: bytes) -> None:
    # the Study UID check of /studies/{uid} read the part with pydicom, which inflated it
    # whole before the store's bound applied
    part = encode_part10(bomb, DEFLATED, CT_IMAGE, BOMB_UID, None)
    boundary = uuid.uuid4().hex.encode()
    body = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + \
        b"\r\n--" + boundary + b"--\r\n"
    request = (b"POST /dicom-web/studies/@STUDY@ HTTP/1.1\r\nAuthorization: " + BASIC.encode()
               + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary="
               + boundary + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
               + body)
    tracemalloc.start()
    try:
        reply = http.one(request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.split(b"\r\n", 1)[0].endswith(b" 409 Conflict"), reply[:200]
    answer = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    [failed] = answer["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [status.INFLATED_TOO_LARGE]
    assert peak < 32 * MIB, f"peak {peak / MIB:.0f} MiB for a 520 MiB bomb"


def test_non_ascii_csrf_token_is_a_403(http: HttpTarget) -> None:
    reply = http.one(b"POST /api/alerts/@ALERT@/ack HTTP/1.1\r\nCookie: qcd_session=@SESSION@"
                     b"\r\nX-CSRF-Token: \xe9\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.0 403 ") or reply.startswith(b"HTTP/1.1 403 ")


@pytest.mark.parametrize(("nxt", "location"), [
    (b"/operator%0d%0aSet-Cookie:%20x=1", b"/operator%0D%0ASet-Cookie:%20x=1"),
    (b"/%E2%82%AC?days=7", b"/%E2%82%AC?days=7"),
    (b"%2Fsites%3Fdays%3D7%26site%3Da%2520b", b"/sites?days=7&site=a%20b"),
])
def test_login_next_is_percent_encoded_in_location(http: HttpTarget, nxt: bytes,
                                                   location: bytes) -> None:
    body = b"csrf=abc&username=op&password=operator-password&next=" + nxt
    reply = http.one(b"POST /login HTTP/1.1\r\nCookie: qcd_login=abc\r\nContent-Type: "
                     b"application/x-www-form-urlencoded\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b" 303 " in reply.split(b"\r\n", 1)[0]
    assert b"\r\nLocation: " + location + b"\r\n" in reply
