"""STOW-RS as a second ingest path: real HTTP POSTs to a running Daemon store instances
through the C-STORE path (same spool, rows, statuses), and a completed series gets jobs."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from qcd.app import Daemon
from qcd.db.models import Instance, Job, Series, SeriesState
from qcd.ingest import status
from qcd.ingest.filemeta import split_part10
from qcd.synth import SeriesSpec, make_study
from qcd.web.auth import add_user
from tests.conftest import make_settings
from tests.toy_analyzers import FlakyAnalyzer

pytestmark = pytest.mark.integration

OP = "Basic " + base64.b64encode(b"op:operator-password").decode()
VIEWER = "Basic " + base64.b64encode(b"viewer:viewer-password").decode()
DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    started: list[Daemon] = []

    def make(**env: str) -> Daemon:
        rules = tmp_path / "rules.toml"
        rules.write_text('[[routing.rules]]\nanalyzer = "ok"\nmodalities = ["PT"]\n')
        settings = make_settings(tmp_path, QCD_CONFIG=str(rules),
                                 QCD_WORKERS__POLL_INTERVAL_SECONDS="0.1", **env)
        daemon = Daemon(settings, registry={"ok": FlakyAnalyzer(failures=0)})
        add_user(daemon.db, "op", "operator-password", "operator")
        add_user(daemon.db, "viewer", "viewer-password", "viewer")
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def url(daemon: Daemon, path: str = "/dicom-web/studies") -> str:
    assert daemon.http is not None
    return f"http://127.0.0.1:{daemon.http.port}{path}"


def multipart(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + f"\r\nContent-Type: {part_type}\r\n\r\n"
                    .encode() + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(target: str, body: bytes, content_type: str, auth: str | None = OP
         ) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if auth:
        headers["Authorization"] = auth
    req = urllib.request.Request(target, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return rsp.status, dict(rsp.headers), rsp.read()
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        exc.close()
        return exc.code, dict(exc.headers), payload


def uids(seq: dict[str, object] | None, tag: str = "00081155") -> list[str]:
    return [item[tag]["Value"][0] for item in (seq or {}).get("Value", [])]  # type: ignore


def test_stow_stores_like_c_store_and_series_gets_jobs(daemon_factory: DaemonFactory,
                                                       tmp_path: Path) -> None:
    daemon = daemon_factory(QCD_HTTP__STOW_ENABLED="true")
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 4, "PET WB")], 16)
    originals = [f.read_bytes() for f in files]
    body, ctype = multipart(originals)
    code, headers, payload = post(url(daemon), body, ctype)
    assert code == 200, payload
    assert headers["Content-Type"] == "application/dicom+json"
    answer = json.loads(payload)
    assert "00081198" not in answer
    sent = [str(split_part10(d)[0].MediaStorageSOPInstanceUID) for d in originals]
    assert uids(answer["00081199"]) == sent
    with daemon.db.session() as s:
        rows = list(s.scalars(select(Instance).order_by(Instance.id)))
        assert [r.sop_uid for r in rows] == sent
        assert {r.calling_ae for r in rows} == {"QCD-STOW"}
        for row, original in zip(rows, originals, strict=True):
            spooled = (daemon.spool.root / row.path).read_bytes()
            assert split_part10(spooled)[1] == split_part10(original)[1]  # byte-identical
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with daemon.db.session() as s:
            series = s.scalars(select(Series)).one()
            jobs = list(s.scalars(select(Job)))
            if series.state is SeriesState.COMPLETE and jobs and jobs[0].state.value == "DONE":
                break
        time.sleep(0.1)
    assert series.state is SeriesState.COMPLETE
    assert [(j.analyzer, j.state.value) for j in jobs] == [("ok", "DONE")]
    # A resend of the same bytes is a no-op success, as over DIMSE.
    code, _, _ = post(url(daemon), body, ctype)
    assert code == 200
    with daemon.db.session() as s:
        assert len(list(s.scalars(select(Instance)))) == 4


def test_truncated_part_fails_with_its_status_rest_stored(daemon_factory: DaemonFactory,
                                                          tmp_path: Path) -> None:
    daemon = daemon_factory(QCD_HTTP__STOW_ENABLED="true")
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 3, "PET WB")], 16)
    data = [f.read_bytes() for f in files]
    broken_uid = str(split_part10(data[1])[0].MediaStorageSOPInstanceUID)
    # cut inside an element's value (the Series Instance UID): a cut that happened to
    # fall on an element boundary would leave a shorter, complete-looking data set, which
    # is refused for what it lacks (0xC212 "missing Series Instance UID"), not as truncated
    series_uid = str(pydicom.dcmread(files[1]).SeriesInstanceUID).encode()
    data[1] = data[1][: data[1].index(series_uid) + 3]  # (not in the File Meta)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    body, ctype = multipart(data)
    code, _, payload = post(url(daemon, f"/dicom-web/studies/{study_uid}"), body, ctype)
    assert code == 202, payload
    answer = json.loads(payload)
    [failed] = answer["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [broken_uid]
    assert failed["00081197"]["Value"] == [status.UNDECODABLE]
    assert len(uids(answer["00081199"])) == 2
    with daemon.db.session() as s:
        assert broken_uid not in {r.sop_uid for r in s.scalars(select(Instance))}
        assert len(list(s.scalars(select(Instance)))) == 2
    # all refused: 409; another study in the URL: 0xA900 per instance
    code, _, payload = post(url(daemon, "/dicom-web/studies/1.2.3.4"), *multipart(data[:1]))
    assert code == 409
    assert json.loads(payload)["00081198"]["Value"][0]["00081197"]["Value"] == [
        status.DATASET_SOP_MISMATCH]
    code, _, payload = post(url(daemon), *multipart([b"not dicom at all"]))
    assert code == 409
    assert json.loads(payload)["00081198"]["Value"][0]["00081197"]["Value"] == [
        status.UNDECODABLE]


def test_stow_auth_content_type_and_size(daemon_factory: DaemonFactory,
                                         tmp_path: Path) -> None:
    daemon = daemon_factory(QCD_HTTP__STOW_ENABLED="true", QCD_HTTP__STOW_MAX_BYTES="200000")
    [file] = make_study(tmp_path / "in", [SeriesSpec("PT", 1, "PET WB")], 16)
    body, ctype = multipart([file.read_bytes()])
    assert post(url(daemon), body, ctype, auth=None)[0] == 401
    assert post(url(daemon), body, ctype, auth="Basic " + base64.b64encode(
        b"op:wrong").decode())[0] == 401
    assert post(url(daemon), body, ctype, auth=VIEWER)[0] == 403
    assert post(url(daemon), body, "application/dicom")[0] == 415
    assert post(url(daemon), body, 'multipart/related; type="application/dicom+json"; '
                                   "boundary=x")[0] == 415
    big, big_type = multipart([file.read_bytes(), b"\0" * 300_000])
    assert post(url(daemon), big, big_type)[0] == 413
    assert post(url(daemon), big[:150_000], big_type, auth=None)[0] == 413  # not read
    with daemon.db.session() as s:
        assert list(s.scalars(select(Instance))) == []
    assert post(url(daemon), body, ctype)[0] == 200


def test_stow_is_off_by_default(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = daemon_factory()
    [file] = make_study(tmp_path / "in", [SeriesSpec("PT", 1, "PET WB")], 16)
    code, _, _ = post(url(daemon), *multipart([file.read_bytes()]))
    assert code == 404
    with daemon.db.session() as s:
        assert list(s.scalars(select(Instance))) == []
