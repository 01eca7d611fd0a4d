"""Replay the crashes the atheris fuzzers found (``tests/data/fuzz/<target>/``).

Plain calls of the same targets the harnesses in ``tests/fuzz/`` drive, without
atheris, so the default test run keeps every fixed crash fixed. Each file is one input
that once broke the target's contract (docs/RELIABILITY.md, "Coverage-guided fuzzing").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.header import encode_part10
from tests.fuzz.targets import HttpTarget, parse_one

CORPUS = Path(__file__).parents[1] / "data" / "fuzz"
PARSE = sorted((CORPUS / "parse").iterdir())
HTTP = sorted((CORPUS / "http").iterdir())


@pytest.mark.parametrize("path", PARSE, ids=[p.name for p in PARSE])
def test_parse_corpus(path: Path) -> None:
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
