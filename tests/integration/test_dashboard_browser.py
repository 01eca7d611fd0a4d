"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against
``qcd serve``'s HTTP server with seeded data: pages render, the numbers shown equal the
database aggregates, an operator acknowledges an alert, unauthenticated access is refused.

Screenshots go to the test's tmp dir and to ``test-artifacts/dashboard/`` (CI keeps them).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcd.app import Daemon
from qcd.db.models import Alert, AlertState, Finding, Instance, Job, JobState, Series, Study
from qcd.synth import SeriesSpec, make_study
from qcd.web import aggregates, seed
from qcd.web.app import pct
from qcd.web.auth import add_user
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (apt-get install -y chromium)",
                allow_module_level=True)


STUDY_UID = "1.2.826.0.1.3680043.10.543.77"


def spool_series(daemon: Daemon) -> None:
    """A real MR series in the daemon's spool with an LA finding naming key slices."""
    root = Path(daemon.spool.root)
    paths = make_study(root / "browser", [SeriesSpec("MR", 16, "LA 3D", "HEART")], size=48)
    with daemon.db.session() as session:
        study = Study(study_uid=STUDY_UID)
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid=STUDY_UID + ".1", modality="MR",
                        station_name="MR-N1", institution_name="Hospital North",
                        series_description="LA 3D")
        session.add(series)
        session.flush()
        for i, p in enumerate(paths):
            session.add(Instance(series_id=series.id, sop_uid=f"{STUDY_UID}.1.{i}",
                                 sop_class_uid="1.2", transfer_syntax="1.2.840.10008.1.2.1",
                                 path=str(p.relative_to(root)), size=p.stat().st_size,
                                 sha256="0" * 64))
        job = Job(series_id=series.id, analyzer="atrium", state=JobState.DONE)
        session.add(job)
        session.flush()
        session.add(Finding(job_id=job.id, series_id=series.id, analyzer="atrium",
                            name="la_volume", value_num=64.2, unit="ml",
                            payload={"key_slices": [5, 8], "contour": {
                                "slice": 8, "points": [[14, 14], [14, 34], [34, 34], [34, 14]]}}))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Daemon]]:
    tmp = tmp_path_factory.mktemp("dash")
    daemon = Daemon(make_settings(tmp), registry={})
    seed.seed(daemon.db, n_series=150, days=10, seed=5)
    add_user(daemon.db, "viewer", "viewer-password", "viewer")
    add_user(daemon.db, "op", "operator-password", "operator")
    spool_series(daemon)
    daemon.start()
    assert daemon.http is not None
    yield f"http://127.0.0.1:{daemon.http.port}", daemon
    daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for folder in (tmp_path, ARTIFACTS):
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def login(page: Any, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state()


def test_unauthenticated_access_is_refused(server: tuple[str, Daemon], browser: Any,
                                           tmp_path: Path) -> None:
    base, _ = server
    page = browser.new_page()
    for path in ("/sites", "/operator", "/sites.csv"):
        page.goto(base + path)
        assert "/login" in page.url, path
    assert page.request.get(f"{base}/api/sites").status == 401
    assert page.request.post(f"{base}/api/alerts/1/ack", data={"comment": "x"}).status == 401
    assert page.request.get(f"{base}/healthz").status == 200
    assert page.request.get(f"{base}/metrics").status == 200
    login(page, base, "op", "wrong password")
    assert page.inner_text("#login-error").startswith("Unknown user")
    shot(page, tmp_path, "login-refused")
    page.close()


def test_sites_page_shows_the_database_aggregates(server: tuple[str, Daemon], browser: Any,
                                                  tmp_path: Path) -> None:
    base, daemon = server
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    login(page, base, "viewer", "viewer-password")
    page.goto(f"{base}/sites?days=30")
    assert page.inner_text("#user") == "viewer (viewer)"
    assert page.locator("svg.chart").count() >= 4
    table = aggregates.site_table(daemon.db, aggregates.Period.last_days(30))
    checked = 0
    for site in table:
        for row in [site, *site["stations"]]:
            sel = f'tr[data-site="{row["site"]}"][data-station="{row["station"]}"]'

            def cell(metric: str) -> str:
                return str(page.inner_text(f'{sel} td[data-metric="{metric}"]'))

            assert cell("series_analysed") == str(row["series_analysed"])
            assert cell("failures") == str(row["failures"])
            assert cell("earl_compliant_rate") == pct(row["earl"]["compliant_rate"])
            assert cell("rescan_rate") == pct(row["motion"]["rescan_rate"])
            assert cell("urgent_rate") == pct(row["chest"]["urgent_rate"])
            assert cell("la_n") == str(row["la_volume"]["n"])
            checked += 1
    assert checked >= 10
    body = page.content()
    assert "PatientName" not in body and "Patient" not in body
    shot(page, tmp_path, "sites")
    with page.expect_download() as download:
        page.click("#csv")
    assert download.value.suggested_filename.startswith("qcd-compliance-")
    page.close()


def test_operator_acknowledges_an_alert(server: tuple[str, Daemon], browser: Any,
                                        tmp_path: Path) -> None:
    base, daemon = server
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    login(page, base, "viewer", "viewer-password")
    page.goto(f"{base}/operator")
    assert page.locator("#open-alerts form.ack").count() == 0  # viewers read only
    page.click("header form button")  # log out
    login(page, base, "op", "operator-password")
    page.goto(f"{base}/operator")
    before = int(page.inner_text("#open-count"))
    assert before > 0
    first = page.locator("#open-alerts tr[data-alert]").first
    alert_id = int(first.get_attribute("data-alert"))
    first.locator('input[name="name"]').fill("Jane Operator")
    first.locator('textarea[name="comment"]').fill("patient recalled, rescanned")
    shot(page, tmp_path, "operator-before-ack")
    first.locator("button").click()
    page.wait_for_load_state()
    assert int(page.inner_text("#open-count")) == before - 1
    assert page.locator(f'#acked-alerts tr[data-alert="{alert_id}"]').count() == 1
    shot(page, tmp_path, "operator-after-ack")
    with daemon.db.session() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None and alert.state == AlertState.ACKNOWLEDGED
        assert alert.acknowledged_by == "Jane Operator"
        assert alert.comment == "patient recalled, rescanned"
    # station filter
    station = page.locator("#station option").nth(1).get_attribute("value")
    page.select_option("#station", station)
    page.click("#station-filter button")
    page.wait_for_load_state()
    stations = page.locator("#recent-series tr[data-series] td:nth-child(2)").all_inner_texts()
    assert stations and set(stations) == {station}
    # the study view of a series
    page.locator("#recent-series a").first.click()
    page.wait_for_load_state()
    assert page.locator("#study-uid").count() == 1
    # key images rendered from the spooled instances
    page.goto(f"{base}/study/{STUDY_UID}")
    images = page.locator(".keyimages img")
    assert images.count() == 3
    for i in range(images.count()):
        images.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=images.nth(i).element_handle())
        assert images.nth(i).evaluate("img => img.naturalWidth") == 48
    assert "64.2" in page.inner_text("section.series")
    shot(page, tmp_path, "study")
    page.close()
