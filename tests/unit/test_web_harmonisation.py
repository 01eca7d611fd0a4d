"""The harmonisation report in the dashboard: page, JSON and CSV equal
:func:`qcd.audit.report.harmonisation_report` over the same database."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from qcd.audit import report
from qcd.audit.query import AuditFilters
from qcd.config import HttpSettings
from qcd.db.engine import Database
from qcd.db.models import Finding, Job, JobState
from qcd.web import seed
from qcd.web.app import Dashboard
from qcd.web.auth import add_user
from qcd.web.routing import Request, Response

AUTH = {"Authorization": "Basic " + base64.b64encode(b"viewer:password-viewer").decode()}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/web.db")
    database.upgrade()
    seed.seed(database, n_series=150, days=10, seed=4)
    with database.session() as session:
        jobs = list(session.scalars(select(Job).where(Job.analyzer == "earl",
                                                      Job.state == JobState.DONE)))
        rows = []
        for i, job in enumerate(jobs):
            if i % 5 == 4:
                continue  # some series without header evidence: no estimate
            rows.append({"job_id": job.id, "series_id": job.series_id, "analyzer": "earl",
                         "name": "header_evidence", "model_name": "earl",
                         "model_version": "1.0.0", "payload": {
                             "reconstruction_method": "OSEM 3i21s" if i % 2 else "BLOB-OS-TF",
                             "convolution_kernel": f"XYZ Gauss{2 + i % 4}.00",
                             "filter_fwhm_mm": float(2 + i % 4), "psf": bool(i % 3 == 0),
                             "tof": True, "pixel_spacing_mm": 4.0}})
        session.execute(insert(Finding), rows)
    add_user(database, "viewer", "password-viewer", "viewer")
    yield database
    database.dispose()


@pytest.fixture
def app(db: Database, tmp_path: Path) -> Dashboard:
    return Dashboard(db, tmp_path / "spool", HttpSettings())


def get(app: Dashboard, path: str, auth: bool = True) -> Response:
    return app.handle(Request.build("GET", path, AUTH if auth else {}))


def as_json(rows: list[Any]) -> Any:
    return json.loads(json.dumps([dataclasses.asdict(r) for r in rows]))


def test_api_equals_the_report_function(app: Dashboard, db: Database) -> None:
    expected = report.harmonisation_report(db)
    assert len(expected) == 3  # the three seeded PET scanners
    assert any(r.extra_to_earl1_mm_median is not None for r in expected)
    resp = get(app, "/api/harmonisation")
    assert resp.status == 200 and resp.content_type == "application/json"
    data = json.loads(resp.body)
    assert data["scanners"] == as_json(expected)
    assert data["derivation"]["r0_psf_mm"] == report.R0_PSF_MM
    assert "series" not in data
    series = json.loads(get(app, "/api/harmonisation?series=1").body)["series"]
    assert series == as_json(report.series_rows(db))

    only = json.loads(get(app, "/api/harmonisation?site=hospital%20north").body)
    assert only["filters"] == {"site": "hospital north"}
    assert only["scanners"] == as_json(report.harmonisation_report(
        db, AuditFilters(modality="", institutions=("hospital north",))))
    assert {r["site"] for r in only["scanners"]} == {"Hospital North"}
    assert json.loads(get(app, "/api/harmonisation?from=2000-01-01&to=2000-01-02").body)[
        "scanners"] == []
    assert get(app, "/api/harmonisation?from=yesterday").status == 400
    assert get(app, "/api/harmonisation?from=2024-02-01&to=2024-01-01").status == 400
    assert get(app, "/api/harmonisation", auth=False).status == 401


def test_page_renders_the_report(app: Dashboard, db: Database) -> None:
    rows = report.harmonisation_report(db)
    resp = get(app, "/harmonisation")
    assert resp.status == 200
    page = resp.body.decode()
    assert 'href="/harmonisation"' in page  # in the nav
    assert 'id="derivation"' in page and "sqrt(r0^2 + g^2)" in page
    for r in rows:
        m = re.search(rf'data-station="{re.escape(r.station)}"[^>]*>(.*?)</tr>', page, re.S)
        assert m is not None, r.station
        cells = dict(re.findall(r'data-metric="(\w+)">([^<]*)<', m.group(1)))
        assert cells["n_series"] == str(r.n_series)
        assert cells["non_compliant"] == str(r.non_compliant)
        assert cells["extra_estimated"] == str(r.extra_estimated)
        e1 = r.extra_to_earl1_mm_median
        assert cells["extra_to_earl1_mm_median"] == ("–" if e1 is None else f"{e1:.2f}")
        for c in report.CLASSES:
            assert cells[f"share_{c}"] == f"{100 * r.shares[c]:.1f}% ({r.counts[c]})"
    n_bad = sum(r.non_compliant for r in rows)
    assert f"Non-compliant series ({n_bad}" in page
    assert page.count("<tr data-series=") == min(n_bad, 300)
    assert get(app, "/harmonisation?station=nothing-like-this").status == 200
    assert "No series with an EARL result" in get(
        app, "/harmonisation?station=nothing-like-this").body.decode()


def test_csv_matches_the_cli_columns(app: Dashboard, db: Database, tmp_path: Path) -> None:
    for query, rows in (("", report.harmonisation_report(db)),
                        ("?series=1", report.series_rows(db))):
        resp = get(app, "/harmonisation.csv" + query)
        assert resp.status == 200 and resp.content_type.startswith("text/csv")
        cli = tmp_path / "cli.csv"
        report.write_csv(rows, cli)
        assert list(csv.reader(io.StringIO(resp.body.decode()))) == list(
            csv.reader(io.StringIO(cli.read_text())))
    assert get(app, "/api/harmonisation.csv").body == get(app, "/harmonisation.csv").body
