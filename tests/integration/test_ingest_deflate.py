"""Deflate bombs against the running daemon (SCP) and ``qcd import``.

A deflated data set that would inflate beyond ``ingest.max_inflated_mb`` is answered
0xC214, a truncated deflate stream 0xC210; nothing of either is spooled or recorded,
a valid deflated instance beside them is stored byte-identical, and the listener
keeps answering.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qcd.app import Daemon
from qcd.ingest.events import MetricsEvents
from qcd.ingest.service import build_ingest
from qcd.db.models import Instance
from qcd.importer import import_paths
from qcd.ingest import status
from qcd.ingest.filemeta import encode_part10, split_part10
from qcd.metrics import Metrics
from qcd.scu import send_files
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings
from tests.integration.dcmtk import pynetdicom_echo
from tests.unit.test_header_deflate import CT_IMAGE, DEFLATED, deflate_bomb

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(make_settings(tmp_path))  # the default limit, 256 MiB
    daemon.start()
    yield daemon
    daemon.stop()


def _file(path: Path, body: bytes, sop_class: str, sop_uid: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_part10(body, DEFLATED, sop_class, sop_uid, None))
    return path


def _bomb_file(path: Path, mib: int, sop_uid: str) -> Path:
    return _file(path, deflate_bomb(mib, sop_uid), CT_IMAGE, sop_uid)


def _spooled(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if p.is_file())


def test_deflate_bomb_over_dimse_is_refused_and_the_daemon_keeps_serving(
    daemon: Daemon, tmp_path: Path
) -> None:
    [valid] = make_study(tmp_path / "in", [SeriesSpec("MR", 1, "d", compression="deflate")], 16)
    meta, body = split_part10(valid.read_bytes())
    assert meta.TransferSyntaxUID == DEFLATED
    bomb = _bomb_file(tmp_path / "bomb.dcm", 520, "1.2.826.0.1.3680043.10.1499.99.2")
    assert bomb.stat().st_size < 1 << 20  # 520 MiB once inflated
    truncated = _file(tmp_path / "truncated.dcm", body[: len(body) // 2],
                      str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID))

    results = send_files([bomb, truncated, valid], "127.0.0.1", daemon.scp.port)
    got = {r.path.name: (r.status, r.comment) for r in results}
    assert got["bomb.dcm"] == (status.INFLATED_TOO_LARGE,
                               "inflated size exceeds ingest.max_inflated_mb (256 MiB)")
    assert got["truncated.dcm"][0] == status.UNDECODABLE
    assert "deflate stream" in got["truncated.dcm"][1]
    assert got[valid.name] == (status.SUCCESS, "")

    [kept] = _spooled(daemon.spool.root)  # the valid one only, its data set as sent
    assert split_part10(kept.read_bytes())[1] == body
    with daemon.db.session() as s:
        assert list(s.scalars(select(Instance.sop_uid))) == [meta.MediaStorageSOPInstanceUID]
    assert daemon.http is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http.port}/metrics") as rsp:
        metrics = rsp.read().decode()
    assert 'qcd_store_failures_total{status="0xC214"} 1.0' in metrics
    assert 'qcd_store_failures_total{status="0xC210"} 1.0' in metrics
    assert pynetdicom_echo(daemon.scp.port)  # still serving
    [again] = send_files([bomb], "127.0.0.1", daemon.scp.port)  # and still refusing
    assert again.status == status.INFLATED_TOO_LARGE


def test_import_honours_the_configured_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, QCD_INGEST__MAX_INFLATED_MB="4")
    db, spool, service = build_ingest(settings, MetricsEvents(Metrics()))
    try:
        over = _bomb_file(tmp_path / "in" / "over.dcm", 8, "1.2.826.0.1.3680043.10.1499.99.3")
        under = _bomb_file(tmp_path / "in" / "under.dcm", 2, "1.2.826.0.1.3680043.10.1499.99.4")
        assert import_paths(service, [tmp_path / "in"]) == {
            status.INFLATED_TOO_LARGE: 1, status.SUCCESS: 1}
        [kept] = _spooled(spool.root)
        assert kept.name == "1.2.826.0.1.3680043.10.1499.99.4.dcm"
        assert split_part10(kept.read_bytes())[1] == split_part10(under.read_bytes())[1]
        assert over.exists()  # import never touches its input
        with db.session() as s:
            assert list(s.scalars(select(Instance.sop_uid))) == [
                "1.2.826.0.1.3680043.10.1499.99.4"]
    finally:
        db.dispose()
