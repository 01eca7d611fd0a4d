"""STOW-RS request parsing and the DICOM JSON answer (no socket, no spool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcd.config import HttpSettings
from qcd.db.engine import Database
from qcd.ingest import status
from qcd.ingest.service import StoreResult
from qcd.synth import SeriesSpec, make_study
from qcd.web.app import Dashboard
from qcd.web.auth import add_user
from qcd.web.routing import Request
from qcd.web.stow import PartResult, StowRequestError, parse_multipart, response

CT = 'multipart/related; type="application/dicom"; boundary=b0und'


def test_parts_with_preamble_epilogue_and_default_type() -> None:
    body = (b"preamble\r\n--b0und\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n"
            b"--b0und\r\n\r\nB\r\n--b0und\r\n\r\nC\r\n--b0und\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n--b0und--\r\nepilogue")
    assert parse_multipart(CT, body) == [("application/dicom", b"AAA"),
                                         ("application/dicom", b"B"),
                                         ("application/dicom", b"C"), ("text/plain", b"hi")]
    # the boundary text inside content (without a preceding CRLF) does not split it
    body = b"--b0und\r\n\r\nx--b0undy\r\n--b0und--"
    assert parse_multipart(CT, body) == [("application/dicom", b"x--b0undy")]


@pytest.mark.parametrize(("ctype", "body", "code"), [
    ("application/dicom", b"", 415),
    ('multipart/related; type="application/dicom+xml"; boundary=b0und', b"", 415),
    ("multipart/mixed; boundary=b0und", b"", 415),
    ('multipart/related; type="application/dicom"', b"--x--", 400),
    (CT, b"no boundary here", 400),
    (CT, b"--b0und\r\n\r\nunterminated", 400),
    (CT, b"--b0und--\r\n", 400),
])
def test_bad_requests(ctype: str, body: bytes, code: int) -> None:
    with pytest.raises(StowRequestError) as err:
        parse_multipart(ctype, body)
    assert err.value.http_status == code


def test_response_codes_and_sequences() -> None:
    ok = PartResult("1.2.840.10008.5.1.4.1.1.128", "1.2.3.1", status.SUCCESS)
    bad = PartResult("1.2.840.10008.5.1.4.1.1.128", "1.2.3.2", status.PIXEL_DATA_MISMATCH, "x")
    code, body = response([ok])
    assert code == 200 and set(body) == {"00081199"}
    assert body["00081199"]["Value"][0] == {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.128"]},
        "00081155": {"vr": "UI", "Value": ["1.2.3.1"]}}
    code, body = response([ok, bad])
    assert code == 202
    assert body["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xC211]}
    code, body = response([bad, PartResult("", "", status.UNDECODABLE)])
    assert code == 409 and "00081199" not in body
    assert body["00081198"]["Value"][1] == {"00081197": {"vr": "US", "Value": [0xC210]}}


def test_session_cookie_needs_the_csrf_token(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/web.db")
    db.upgrade()
    try:
        add_user(db, "op", "password-op", "operator")
        stored: list[bytes] = []

        class Ingest:  # stands in for IngestService: records what it is given
            def store(self, dataset: bytes, **kw: object) -> StoreResult:
                stored.append(dataset)
                return StoreResult(status.SUCCESS)

        app = Dashboard(db, tmp_path / "spool", HttpSettings(stow_enabled=True),
                        Ingest())  # type: ignore[arg-type]
        token = app.auth.login("op", "password-op")
        assert token is not None
        [file] = make_study(tmp_path / "in", [SeriesSpec("PT", 1, "PET WB")], 8)
        body = b"--b0und\r\n\r\n" + file.read_bytes() + b"\r\n--b0und--\r\n"
        headers = {"Content-Type": CT, "Cookie": f"qcd_session={token}"}
        resp = app.handle(Request.build("POST", "/dicom-web/studies", headers, body))
        assert resp.status == 403 and stored == []
        who = app.auth.resolve({}, token, "127.0.0.1")
        assert who is not None
        resp = app.handle(Request.build("POST", "/dicom-web/studies",
                                        {**headers, "X-CSRF-Token": who.csrf}, body))
        assert resp.status == 200 and resp.content_type == "application/dicom+json"
        assert len(stored) == 1
        assert app.body_limit(Request.build("POST", "/dicom-web/studies", headers)) == (
            HttpSettings().stow_max_bytes)
        assert app.body_limit(Request.build("POST", "/dicom-web/studies", {})) == 64 * 1024
    finally:
        db.dispose()
