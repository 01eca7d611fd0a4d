"""The audit's other transports against a real Orthanc: over DICOMweb (QIDO-RS finds the
series, WADO-RS retrieves them through the ingest path, they are analysed, a second run
retrieves nothing, a series is stored byte-identical to what the archive holds) and by
C-GET on the query association."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qcd.app import Daemon
from qcd.audit.dicomweb import WebPeer, qido_find_series
from qcd.audit.query import AuditFilters
from qcd.audit.runner import build_runner, wait_for_analysis
from qcd.db.models import Instance
from qcd.errors import ExportError
from qcd.ingest.filemeta import split_part10
from tests.conftest import make_settings
from tests.integration.orthanc import OrthancServer
from tests.integration.test_audit import FROM, TO, SimSeries, archive  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory,
         archive: list[SimSeries]) -> Iterator[OrthancServer]:  # noqa: F811
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True).start()
    for s in archive:
        for f in s.files:
            server.post("/instances", f.read_bytes())
    yield server
    server.stop()


def test_audit_over_dicomweb_retrieves_once_and_analyses(
        tmp_path: Path, pacs: OrthancServer, archive: list[SimSeries]) -> None:  # noqa: F811
    settings = make_settings(
        tmp_path, QCD_HTTP__ENABLED="false", QCD_WORKERS__THREADS="1",
        QCD_INFERENCE__DEVICE="cpu", QCD_AUDIT__METHOD="dicomweb",
        QCD_AUDIT__DICOMWEB_URL=f"{pacs.url}/dicom-web", QCD_AUDIT__TIMEOUT="60")
    daemon = Daemon(settings)
    daemon.start()
    try:
        expected = {s.series_uid for s in archive if "20240301" <= s.date <= "20240331"}
        runner = build_runner(settings, daemon.db, daemon.service)
        summary = runner.run(AuditFilters(FROM, TO, "PT"))
        assert summary.failed == {}
        assert set(summary.retrieved) == expected
        assert wait_for_analysis(daemon.db, expected, "earl", 180) == []
        with daemon.db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == sum(
                len(a.files) for a in archive if a.series_uid in expected)
            rows = {i.sop_uid: i.path for i in s.scalars(select(Instance))}
        one = next(a for a in archive if a.series_uid in expected).files[0]
        meta, body = split_part10(one.read_bytes())
        kept = daemon.spool.root / rows[str(meta.MediaStorageSOPInstanceUID)]
        assert split_part10(kept.read_bytes())[1] == body  # data set byte-identical
        again = build_runner(settings, daemon.db, daemon.service).run(AuditFilters(FROM, TO))
        assert again.retrieved == [] and again.failed == {}
        assert set(again.skipped) | set(again.already_retrieved) == expected
    finally:
        daemon.stop()


def test_qido_filters_and_a_dead_service_is_a_clear_error(
        pacs: OrthancServer, archive: list[SimSeries]) -> None:  # noqa: F811
    peer = WebPeer(f"{pacs.url}/dicom-web", timeout=30)
    site_b = qido_find_series(peer, AuditFilters(FROM, TO, "PT", institutions=("site b",)))
    assert {c.series_uid for c in site_b} == {
        s.series_uid for s in archive if s.site == "Site B"}
    assert all(c.station_name == "PETCT_B" and c.instances for c in site_b), site_b
    with pytest.raises(ExportError, match="cannot connect"):
        qido_find_series(WebPeer("http://127.0.0.1:9/dicom-web", timeout=2), AuditFilters())


def test_audit_by_c_get_retrieves_once(
        tmp_path: Path, archive: list[SimSeries]) -> None:  # noqa: F811
    """The C-GET variant: instances arrive on the query association (no move destination)."""
    settings = make_settings(
        tmp_path, QCD_HTTP__ENABLED="false", QCD_WORKERS__THREADS="0",
        QCD_AUDIT__METHOD="get", QCD_AUDIT__PACS_HOST="127.0.0.1", QCD_AUDIT__TIMEOUT="60")
    pacs = OrthancServer(tmp_path / "orthanc-get", modalities={
        "qcd": (settings.node.ae_title, "127.0.0.1", settings.ingest.port)})
    pacs.start()
    try:
        site_c = [a for a in archive if a.site == "Site C"]
        for a in site_c:
            for f in a.files:
                pacs.post("/instances", f.read_bytes())
        settings = make_settings(
            tmp_path, QCD_HTTP__ENABLED="false", QCD_WORKERS__THREADS="0",
            QCD_AUDIT__METHOD="get", QCD_AUDIT__PACS_HOST="127.0.0.1",
            QCD_AUDIT__PACS_PORT=str(pacs.dicom_port), QCD_AUDIT__PACS_AE_TITLE=pacs.aet,
            QCD_AUDIT__TIMEOUT="60", QCD_INGEST__PORT=str(settings.ingest.port))
        daemon = Daemon(settings)
        daemon.start()
        try:
            summary = build_runner(settings, daemon.db, daemon.service).run(
                AuditFilters(FROM, TO, "PT"))
            assert summary.failed == {}
            assert set(summary.retrieved) == {a.series_uid for a in site_c}
            with daemon.db.session() as s:
                assert s.scalar(select(func.count()).select_from(Instance)) == sum(
                    len(a.files) for a in site_c)
        finally:
            daemon.stop()
    finally:
        pacs.stop()
