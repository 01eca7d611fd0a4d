"""The dashboard's pages and JSON API, called in-process (no socket): auth, CSRF, roles,
acknowledgement, CSV, OpenAPI, key images, no patient data on the overview."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from qcd.config import HttpSettings
from qcd.db.engine import Database
from qcd.db.models import Finding, Instance, Job, JobState, Series, Study
from qcd.synth import SeriesSpec, make_study
from qcd.web import seed
from qcd.web.app import Dashboard
from qcd.web.auth import add_user
from qcd.web.routing import Request, Response


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:password-{user}".encode())
            .decode()}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/web.db")
    database.upgrade()
    seed.seed(database, n_series=120, days=10, seed=2)
    add_user(database, "viewer", "password-viewer", "viewer")
    add_user(database, "op", "password-op", "operator")
    yield database
    database.dispose()


@pytest.fixture
def app(db: Database, tmp_path: Path) -> Dashboard:
    return Dashboard(db, tmp_path / "spool", HttpSettings(
        viewer_url_template="https://pacs.example/viewer?StudyInstanceUIDs={study_uid}"))


def get(app: Dashboard, path: str, user: str | None = "viewer", **headers: str) -> Response:
    h = {**(basic(user) if user else {}), **headers}
    return app.handle(Request.build("GET", path, h))


def login(app: Dashboard, user: str) -> tuple[str, str]:
    """Log in through the form; returns (session cookie, CSRF token of the pages)."""
    form = app.handle(Request.build("GET", "/login"))
    login_cookie = dict(form.headers)["Set-Cookie"].split(";")[0]
    token = login_cookie.split("=", 1)[1]
    body = f"csrf={token}&username={user}&password=password-{user}&next=/operator".encode()
    resp = app.handle(Request.build("POST", "/login", {
        "Cookie": login_cookie, "Content-Type": "application/x-www-form-urlencoded"}, body))
    assert resp.status == 303 and dict(resp.headers)["Location"] == "/operator"
    session = next(v for k, v in resp.headers if k == "Set-Cookie"
                   and v.startswith("qcd_session=")).split(";")[0]
    page = app.handle(Request.build("GET", "/sites", {"Cookie": session}))
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.body.decode())
    assert match
    return session, match.group(1)


def test_unauthenticated_is_refused_everywhere(app: Dashboard) -> None:
    resp = get(app, "/sites?days=7", user=None)
    assert resp.status == 303
    assert dict(resp.headers)["Location"] == "/login?next=%2Fsites%3Fdays%3D7"
    for path in ("/api/sites", "/api/alerts", "/api/series", "/sites.csv", "/api/me"):
        assert get(app, path, user=None).status in (303, 401), path
    assert get(app, "/api/sites", user=None).status == 401
    post = app.handle(Request.build("POST", "/alerts/1/ack", {}, b""))
    assert post.status == 401
    assert get(app, "/api/openapi.json", user=None).status == 200
    assert get(app, "/login", user=None).status == 200


def test_pages_render_with_security_headers(app: Dashboard) -> None:
    for path in ("/sites", "/sites?days=7", "/sites?from=2020-01-01&to=2030-01-01",
                 "/operator", "/operator?station=DR-S1"):
        resp = get(app, path)
        assert resp.status == 200, path
        headers = dict(resp.all_headers())
        assert "script-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
    assert "<svg" in get(app, "/sites").body.decode()
    assert get(app, "/sites?days=0").status == 400
    assert get(app, "/sites?from=2020-02-01&to=2020-01-01").status == 400
    assert get(app, "/nope").status == 404
    assert get(app, "/api/alerts?state=bogus").status == 400


def test_api_matches_pages_and_csv(app: Dashboard) -> None:
    data = json.loads(get(app, "/api/sites?days=30").body)
    page = get(app, "/sites?days=30").body.decode()
    for site in data["sites"]:
        for row in site["stations"]:
            cell = re.search(
                rf'data-site="{re.escape(row["site"])}" data-station="{re.escape(row["station"])}"'
                rf'.*?data-metric="series_analysed">(\d+)<', page, re.S)
            assert cell and int(cell.group(1)) == row["series_analysed"]
    rows = list(csv.reader(io.StringIO(get(app, "/sites.csv?days=30").body.decode())))
    assert rows[0][:3] == ["site", "station", "period_start"]
    total = sum(int(r[4]) for r in rows[1:] if r[1] == "all")
    assert total == sum(s["series_analysed"] for s in data["sites"])
    trends = json.loads(get(app, "/api/trends?days=30").body)
    assert sum(d["series_analysed"] for d in trends["days"]) == total


def test_no_patient_data_on_overview(app: Dashboard, db: Database) -> None:
    with db.session() as session:
        study = session.query(Study).first()
        assert study is not None
        study.accession_number = "ACC123456"
    for path in ("/sites", "/operator", "/api/sites", "/sites.csv", "/api/alerts"):
        assert "ACC123456" not in get(app, path).body.decode(), path


def test_viewer_cannot_acknowledge(app: Dashboard) -> None:
    alert = json.loads(get(app, "/api/alerts").body)[0]
    resp = app.handle(Request.build("POST", f"/api/alerts/{alert['id']}/ack", {
        **basic("viewer"), "Content-Type": "application/json"}, b'{"comment": "x"}'))
    assert resp.status == 403
    assert "read-only" in get(app, "/operator").body.decode()


def test_operator_acknowledges_by_form_with_csrf(app: Dashboard) -> None:
    session, csrf = login(app, "op")
    alert = json.loads(get(app, "/api/alerts").body)[0]
    form = {"Cookie": session, "Content-Type": "application/x-www-form-urlencoded"}
    forged = app.handle(Request.build("POST", f"/alerts/{alert['id']}/ack", form,
                                      b"name=op&comment=x&csrf=forged"))
    assert forged.status == 403
    ok = app.handle(Request.build("POST", f"/alerts/{alert['id']}/ack", form,
                                  f"name=Jane+Op&comment=rescanned+OK&csrf={csrf}".encode()))
    assert ok.status == 303
    acked = json.loads(get(app, "/api/alerts?state=ACKNOWLEDGED").body)
    assert [(a["id"], a["acknowledged_by"], a["comment"]) for a in acked] == [
        (alert["id"], "Jane Op", "rescanned OK")]
    again = app.handle(Request.build("POST", f"/alerts/{alert['id']}/ack", form,
                                     f"name=op&comment=&csrf={csrf}".encode()))
    assert again.status == 409
    # the JSON API with a session cookie needs the token in a header
    other = json.loads(get(app, "/api/alerts").body)[0]
    api = {"Cookie": session, "Content-Type": "application/json"}
    assert app.handle(Request.build("POST", f"/api/alerts/{other['id']}/ack", api,
                                    b'{"comment": "c"}')).status == 403
    resp = app.handle(Request.build("POST", f"/api/alerts/{other['id']}/ack",
                                    {**api, "X-CSRF-Token": csrf}, b'{"comment": "c"}'))
    assert resp.status == 200 and json.loads(resp.body)["acknowledged_by"] == "op"
    # logging out ends the session
    out = app.handle(Request.build("POST", "/logout", form, f"csrf={csrf}".encode()))
    assert out.status == 303
    assert app.handle(Request.build("GET", "/api/me", {"Cookie": session})).status == 401


def test_login_refuses_bad_password_and_missing_token(app: Dashboard) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = app.handle(Request.build("POST", "/login", form, b"username=op&password=x"))
    assert resp.status == 400
    page = app.handle(Request.build("GET", "/login"))
    cookie = dict(page.headers)["Set-Cookie"].split(";")[0]
    token = cookie.split("=", 1)[1]
    resp = app.handle(Request.build("POST", "/login", {**form, "Cookie": cookie},
                                    f"csrf={token}&username=op&password=wrong".encode()))
    assert resp.status == 401 and b"wrong password" in resp.body
    resp = app.handle(Request.build("POST", "/login", {**form, "Cookie": cookie},
                                    f"csrf={token}&username=op&password=password-op"
                                    f"&next=//evil.example".encode()))
    assert dict(resp.headers)["Location"] == "/sites"  # no open redirect


def test_openapi_lists_every_api_route(app: Dashboard) -> None:
    doc = json.loads(get(app, "/api/openapi.json", user=None).body)
    assert doc["openapi"].startswith("3.")
    documented = set(doc["paths"])
    for route in app.router.routes:
        path = route.pattern.pattern.strip("^$")
        if path.startswith("/api/"):
            path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path).replace("\\", "")
            assert path in documented, path


def _spooled_series(db: Database, spool: Path) -> tuple[str, str]:
    paths = make_study(spool / "s1", [SeriesSpec("MR", 12, "LA 3D", "HEART")], size=32)
    with db.session() as session:
        study = Study(study_uid="1.2.3.999")
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid="1.2.3.999.1", modality="MR",
                        station_name="MR-X", institution_name="Test")
        session.add(series)
        session.flush()
        for i, p in enumerate(paths):
            session.add(Instance(series_id=series.id, sop_uid=f"1.2.3.999.1.{i}",
                                 sop_class_uid="1.2", transfer_syntax="1.2.840.10008.1.2.1",
                                 path=str(p.relative_to(spool)), size=p.stat().st_size,
                                 sha256="0" * 64))
        job = Job(series_id=series.id, analyzer="atrium", state=JobState.DONE)
        session.add(job)
        session.flush()
        session.add(Finding(job_id=job.id, series_id=series.id, analyzer="atrium",
                            name="la_volume", value_num=71.5, unit="ml",
                            payload={"key_slices": [3, 6],
                                     "contour": {"slice": 6, "points": [[8, 8], [8, 20],
                                                                        [20, 20]]}}))
    return study.study_uid, series.series_uid


def test_study_view_key_images_and_viewer_link(app: Dashboard, db: Database,
                                               tmp_path: Path) -> None:
    study_uid, series_uid = _spooled_series(db, tmp_path / "spool")
    page = get(app, f"/study/{study_uid}").body.decode()
    assert "la_volume" in page and "71.5" in page
    assert f"https://pacs.example/viewer?StudyInstanceUIDs={study_uid}" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert f"/study/{study_uid}/series/{series_uid}/axial/3.png" in srcs
    assert f"/study/{study_uid}/series/{series_uid}/contour/6.png" in srcs
    for src in srcs:
        resp = get(app, src)
        assert resp.status == 200 and resp.content_type == "image/png"
        image = Image.open(io.BytesIO(resp.body))
        assert image.size == (32, 32)
    contour = Image.open(io.BytesIO(get(app, srcs[-1]).body)).convert("RGB")
    assert contour.getpixel((8, 8)) == (255, 0, 0)
    assert get(app, f"/study/{study_uid}/series/{series_uid}/axial/99.png").status == 400
    api = json.loads(get(app, f"/api/studies/{study_uid}").body)
    assert api["series"][0]["findings"][0]["payload"]["key_slices"] == [3, 6]
    assert get(app, "/api/studies/9.9.9").status == 404


def test_proxy_mode(db: Database, tmp_path: Path) -> None:
    app = Dashboard(db, tmp_path, replace(HttpSettings(), auth="proxy"))

    def me(client: str, **headers: str) -> Response:
        return app.handle(Request.build("GET", "/api/me", headers, client=client))

    assert me("127.0.0.1").status == 401
    assert me("192.0.2.1", **{"X-Remote-User": "op"}).status == 401  # not the proxy
    assert json.loads(me("127.0.0.1", **{"X-Remote-User": "op"}).body) == {
        "name": "op", "role": "operator"}
    assert get(app, "/login", user=None).status == 404


def test_dashboard_reads_do_not_wait_for_the_sqlite_write_lock(db: Database) -> None:
    import time

    from qcd.web import aggregates
    from qcd.web.readdb import reader

    read = reader(db)
    try:
        with db.session() as session:  # BEGIN IMMEDIATE: ingest holds the write lock
            session.add(Study(study_uid="1.2.3.4.5"))
            session.flush()
            start = time.monotonic()
            table = aggregates.site_table(read, aggregates.Period.last_days(30))
            assert time.monotonic() - start < 5  # not the 30 s busy timeout
            assert table
    finally:
        read.dispose()
