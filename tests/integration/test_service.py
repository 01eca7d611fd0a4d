"""IngestService failure mapping: database down and internal errors never answer Success."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import pytest

from qcd.db.engine import Database
from qcd.ingest import status
from qcd.ingest.filemeta import split_part10
from qcd.ingest.service import IngestService
from qcd.ingest.events import MetricsEvents
from qcd.metrics import Metrics
from qcd.spool import Spool
from qcd.synth import SeriesSpec, make_study

pytestmark = pytest.mark.integration


def _store(service: IngestService, path: Path) -> int:
    meta, body = split_part10(path.read_bytes())
    return service.store(body, transfer_syntax=str(meta.TransferSyntaxUID),
                         sop_class_uid=str(meta.MediaStorageSOPClassUID),
                         sop_uid=str(meta.MediaStorageSOPInstanceUID), calling_ae="T").status


def test_missing_table_is_a701_and_resend_recovers(tmp_path: Path) -> None:
    [path] = make_study(tmp_path / "in", [SeriesSpec("CT", 1, "x")], 16)
    db = Database(f"sqlite:///{tmp_path}/qcd.db")
    service = IngestService(Spool(tmp_path / "spool", 0), db, MetricsEvents(Metrics()), True)
    assert _store(service, path) == status.DATABASE_UNAVAILABLE  # not migrated: no tables
    db.upgrade()
    assert _store(service, path) == status.SUCCESS  # the spooled copy is recorded on resend


@pytest.mark.parametrize("broken", ["write_temp", "place"])
def test_internal_error_is_processing_failure(tmp_path: Path, broken: str) -> None:
    """A bug in the spool, on the writer thread (write_temp) or the caller's (place)."""
    [path] = make_study(tmp_path / "in", [SeriesSpec("CT", 1, "x")], 16)
    db = Database(f"sqlite:///{tmp_path}/qcd.db")
    db.upgrade()

    def bug(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("bug")

    class BrokenSpool(Spool):
        pass

    setattr(BrokenSpool, broken, bug)
    service = IngestService(BrokenSpool(tmp_path / "spool", 0), db, MetricsEvents(Metrics()), True)
    assert _store(service, path) == status.PROCESSING_FAILURE
