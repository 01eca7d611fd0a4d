"""End to end with the real scanner side: dcmtk storescu/echoscu against qcd's SCP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from qcd.app import Daemon
from qcd.db.models import Instance, Job, JobState, Series, SeriesState
from qcd.ingest import status
from qcd.ingest.filemeta import split_part10
from qcd.scu import send_files
from qcd.synth import DEFAULT_STUDY, make_study
from tests.conftest import DATA, make_settings
from tests.integration.dcmtk import echoscu, jpeg_baseline, push_concurrently, storescu

pytestmark = pytest.mark.integration

DaemonFactory = Callable[..., Daemon]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """502 instances: CT, PT, MR, DX; RLE, JPEG-LS, JPEG 2000, deflate and JPEG baseline."""
    paths = make_study(tmp_path_factory.mktemp("study"), DEFAULT_STUDY, size=32, seed=7)
    for path in paths:
        if path.name.startswith("DX"):
            jpeg_baseline(path)
    return paths


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    started: list[Daemon] = []

    def start(**env: str) -> Daemon:
        daemon = Daemon(make_settings(tmp_path, **env))
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def spooled_path(root: Path, source: Path) -> Path:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    return root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def assert_byte_identical(root: Path, sources: list[Path]) -> None:
    for source in sources:
        kept = spooled_path(root, source)
        assert kept.is_file(), f"{source.name} acknowledged but not in the spool"
        assert split_part10(kept.read_bytes())[1] == split_part10(source.read_bytes())[1], \
            f"{source.name}: data set bytes differ"


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
def test_storescu_pushes_500_instances_over_4_associations(
    daemon_factory: DaemonFactory, study: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="qcd")
    daemon = daemon_factory(QCD_WORKERS__THREADS="0")  # ingest and routing only
    result = push_concurrently(study, daemon.scp.port, lanes=4)
    assert result.failed == {}
    assert sorted(result.acknowledged) == sorted(study)
    assert_byte_identical(daemon.spool.root, study)
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == len(study)

    def all_complete() -> bool:
        with daemon.db.session() as s:
            states = set(s.scalars(select(Series.state)))
        return states == {SeriesState.COMPLETE}

    wait_for(all_complete)
    with daemon.db.session() as s:
        jobs = sorted((j.series.series_description, j.analyzer, j.state)
                      for j in s.scalars(select(Job)))
        counts = dict(s.execute(select(Series.series_description, Series.instance_count)).all())
    assert counts == {spec.description: spec.count for spec in DEFAULT_STUDY}
    assert jobs == [
        ("Cardiac LA 3D bSSFP", "atrium", JobState.QUEUED),
        ("Chest PA", "chest", JobState.QUEUED),
        ("PET WB FDG", "earl", JobState.QUEUED),
        ("PET WB JPEG-LS", "earl", JobState.QUEUED),
    ]
    body = _metrics(daemon)
    assert 'qcd_instances_received_total{calling_ae="SCANNER1",modality="CT"} 260.0' in body
    assert 'qcd_jobs{state="QUEUED"} 4.0' in body
    for phi in ("QCD^DEMO", "QCD-DEMO-0001", "19700101"):  # planted patient data
        assert phi not in body and phi not in caplog.text


def _metrics(daemon: Daemon) -> str:
    import urllib.request

    assert daemon.http is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http.port}/metrics") as rsp:
        return rsp.read().decode()


def test_real_vendor_files_in_nine_transfer_syntaxes(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    files = sorted((DATA / "real-transfer-syntaxes").glob("*.dcm"))
    result = storescu(files, daemon.scp.port)
    assert result.failed == {} and len(result.acknowledged) == 9
    assert_byte_identical(daemon.spool.root, files)
    decoded = [pydicom.dcmread(spooled_path(daemon.spool.root, f)).pixel_array for f in files]
    assert all((d == decoded[0]).all() for d in decoded[1:])


def test_echo_and_association_policy(daemon_factory: DaemonFactory, study: list[Path]) -> None:
    open_daemon = daemon_factory()
    assert echoscu(open_daemon.scp.port) == 0
    assert echoscu(open_daemon.scp.port, aec="NOTQCD") != 0  # called AE checked

    strict = daemon_factory(QCD_INGEST__ALLOWED_CALLING_AETS="SCANNER1,PETCT2")
    assert echoscu(strict.scp.port, aet="SCANNER1") == 0
    assert echoscu(strict.scp.port, aet="INTRUDER") != 0
    refused = storescu(study[:2], strict.scp.port, aet="INTRUDER")
    assert refused.acknowledged == []
    assert not any(strict.spool.root.glob("*/*/*.dcm"))

    single = daemon_factory(QCD_INGEST__MAX_ASSOCIATIONS="1")
    held = AE(ae_title="HOLDER")
    held.add_requested_context(Verification)
    assoc = held.associate("127.0.0.1", single.scp.port, ae_title="QCD")
    assert assoc.is_established
    assert "qcd_active_associations 1.0" in _metrics(single)
    assert echoscu(single.scp.port) != 0  # over the limit: rejected
    assoc.release()
    wait_for(lambda: not single.scp.ae.active_associations, timeout=5)
    assert echoscu(single.scp.port) == 0

    fenced = daemon_factory(QCD_INGEST__ALLOWED_NETWORKS="10.0.0.0/8")
    assert echoscu(fenced.scp.port) != 0
    allowed = daemon_factory(QCD_INGEST__ALLOWED_NETWORKS="10.0.0.0/8,127.0.0.0/8")
    assert echoscu(allowed.scp.port) == 0


def _write_variant(tmp_path: Path, source: Path, name: str, **changes: object) -> Path:
    ds = pydicom.dcmread(source)
    for key, value in changes.items():
        setattr(ds, key, value)
    out = tmp_path / name
    ds.save_as(out, enforce_file_format=True)
    return out


def test_uid_with_dot_dot_is_refused_and_nothing_escapes(
    daemon_factory: DaemonFactory, study: list[Path], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    evil = _write_variant(tmp_path, study[0], "evil.dcm",
                          StudyInstanceUID="1.2.3/../../../../escaped",
                          SeriesInstanceUID="../../escaped2")
    [result] = send_files([evil], "127.0.0.1", daemon.scp.port)
    assert result.status == status.INVALID_UID
    dcmtk = storescu([evil], daemon.scp.port)
    assert dcmtk.acknowledged == [] and len(dcmtk.failed) == 1
    assert not list(tmp_path.rglob("escaped*"))
    assert not list(Path("/").glob("escaped*"))
    assert [p for p in daemon.spool.root.rglob("*") if p.is_file()] == []


def test_disk_floor_answers_out_of_resources(
    daemon_factory: DaemonFactory, study: list[Path]
) -> None:
    daemon = daemon_factory(QCD_SPOOL__MIN_FREE_BYTES=str(1 << 62))
    results = send_files(study[:3], "127.0.0.1", daemon.scp.port)
    assert [r.status for r in results] == [status.OUT_OF_RESOURCES] * 3
    assert "below the floor" in results[0].comment
    assert [p for p in daemon.spool.root.rglob("*") if p.is_file()] == []
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
    assert 'qcd_store_failures_total{status="0xA700"} 3.0' in _metrics(daemon)


def _raw_file(tmp_path: Path, name: str, source: Path, body: bytes, ts: str | None = None) -> Path:
    """A Part 10 file with ``source``'s File Meta (optionally another TS) and ``body``."""
    from qcd.ingest.filemeta import encode_part10

    meta, _ = split_part10(source.read_bytes())
    out = tmp_path / name
    out.write_bytes(encode_part10(body, ts or str(meta.TransferSyntaxUID),
                                  str(meta.MediaStorageSOPClassUID),
                                  str(meta.MediaStorageSOPInstanceUID), None))
    return out


def test_malformed_input_gets_specific_status_and_daemon_keeps_serving(
    daemon_factory: DaemonFactory, study: list[Path], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    source = study[0]
    body = split_part10(source.read_bytes())[1]
    short = _write_variant(tmp_path, source, "short.dcm",
                           PixelData=pydicom.dcmread(source).PixelData[:100])
    cases = {
        _raw_file(tmp_path, "truncated.dcm", source, body[: len(body) // 2]): status.UNDECODABLE,
        _raw_file(tmp_path, "garbage.dcm", source, bytes(range(256)) * 8): status.UNDECODABLE,
        _raw_file(tmp_path, "implicit-claim.dcm", source, body,
                  "1.2.840.10008.1.2"): status.TRANSFER_SYNTAX_MISMATCH,
        _raw_file(tmp_path, "jpeg-claim.dcm", source, body,
                  "1.2.840.10008.1.2.4.70"): status.TRANSFER_SYNTAX_MISMATCH,
        short: status.PIXEL_DATA_MISMATCH,
    }
    for path, expected in cases.items():
        [result] = send_files([path], "127.0.0.1", daemon.scp.port)
        assert result.status == expected, f"{path.name}: 0x{result.status or 0:04X}"
        assert result.comment
    assert [p for p in daemon.spool.root.rglob("*.dcm")] == []
    good = storescu(study[:5], daemon.scp.port)
    assert len(good.acknowledged) == 5  # still serving after all of that


def test_duplicate_resend_is_idempotent_and_changed_copy_is_versioned(
    daemon_factory: DaemonFactory, study: list[Path], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    assert len(storescu(study[:3], daemon.scp.port).acknowledged) == 3
    assert len(storescu(study[:3], daemon.scp.port).acknowledged) == 3
    changed = _write_variant(tmp_path, study[0], "changed.dcm", SeriesDescription="edited")
    assert len(storescu([changed], daemon.scp.port).acknowledged) == 1
    with daemon.db.session() as s:
        versions = sorted(s.scalars(select(Instance.version)))
    assert versions == [1, 1, 1, 2]
    kept = spooled_path(daemon.spool.root, study[0])
    assert kept.with_name(kept.stem + ".v2.dcm").is_file()


def test_import_goes_through_the_same_path(tmp_path: Path, study: list[Path]) -> None:
    from qcd.ingest.events import MetricsEvents
    from qcd.ingest.service import build_ingest
    from qcd.importer import import_paths
    from qcd.metrics import Metrics

    settings = make_settings(tmp_path)
    db, spool, service = build_ingest(settings, MetricsEvents(Metrics()))
    junk = tmp_path / "in" / "junk.txt"
    junk.parent.mkdir()
    junk.write_text("not dicom")
    counts = import_paths(service, [*study[:20], junk.parent])
    assert counts == {status.SUCCESS: 20, status.UNDECODABLE: 1}
    assert_byte_identical(spool.root, study[:20])
    db.dispose()

