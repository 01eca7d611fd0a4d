"""STOW-RS delivery to a real Orthanc with its DICOMweb plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qcd.db.engine import Database
from qcd.db.models import Alert, Delivery, DeliveryState
from qcd.outputs.delivery import DeliveryWorker, enqueue
from qcd.outputs.settings import DeliverySettings, Destination
from tests.integration.orthanc import OrthancServer
from tests.integration.test_delivery import make_files, make_series

pytestmark = pytest.mark.integration

if not OrthancServer.DICOMWEB_PLUGIN.is_file():  # pragma: no cover - CI installs it
    pytest.skip("Orthanc DICOMweb plugin not installed", allow_module_level=True)


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    """SQLite only: these tests need no second backend."""
    return sqlite_db


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True) as server:
        yield server


def _rows(db: Database) -> list[Delivery]:
    with db.session() as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def test_stow_rs_delivers_each_instance_once(db: Database, orthanc: OrthancServer,
                                             tmp_path: Path) -> None:
    dest = Destination("web", stow_url=f"{orthanc.url}/dicom-web", timeout=10)
    settings = DeliverySettings(destinations=(dest,))
    series = make_series(db)
    files = make_files(tmp_path, 3, rle=1)
    before = orthanc.count()
    for path, sop in files:
        enqueue(db, series, "SR", sop, str(path), [dest])
    worker = DeliveryWorker(db, settings)
    assert worker.sweep()["sent"] == 4
    assert [r.state for r in _rows(db)] == [DeliveryState.SENT] * 4
    assert orthanc.count() == before + 4
    for _, sop in files:
        assert len(orthanc.lookup(sop)) == 1
    assert worker.sweep()["claimed"] == 0  # nothing sent twice


def test_stow_rs_wrong_url_is_permanent_and_unreachable_is_retried(
    db: Database, orthanc: OrthancServer, tmp_path: Path
) -> None:
    wrong = Destination("wrong", stow_url=f"{orthanc.url}/no-such-root", timeout=5)
    down = Destination("down", stow_url="http://127.0.0.1:9/dicom-web", timeout=2)
    settings = DeliverySettings(destinations=(wrong, down))
    series = make_series(db)
    [(path, sop)] = make_files(tmp_path, 1)
    enqueue(db, series, "SR", sop, str(path), [wrong, down])
    DeliveryWorker(db, settings).sweep()
    states = {r.destination: (r.state, r.attempts, r.last_error) for r in _rows(db)}
    assert states["wrong"][0] == DeliveryState.DEAD and "HTTP 404" in (states["wrong"][2] or "")
    assert states["down"][:2] == (DeliveryState.PENDING, 1)
    assert "unreachable" in (states["down"][2] or "")
    with db.session() as s:
        assert len(s.scalars(select(Alert)).all()) == 1  # dead letter raised once
