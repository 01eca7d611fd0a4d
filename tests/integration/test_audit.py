"""Retrospective audit against a real Orthanc: C-FIND, C-MOVE into a running qcd daemon,
analysis, harmonisation report; reruns retrieve nothing new; a daemon killed mid-audit
is recovered from without duplicates."""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from qcd.audit.query import AuditFilters, SeriesCandidate
from qcd.audit.report import R0_NO_PSF_MM, scanner_rows, series_rows, write_csv
from qcd.audit.resolution import band_range
from qcd.audit.retrieve import RetrieveResult
from qcd.audit.runner import build_runner, wait_for_analysis
from qcd.config import Settings, load_settings
from qcd.db.engine import Database
from qcd.db.models import AuditCandidate, AuditState, Finding, Instance, Job, JobState, Series
from tests.conftest import free_port
from tests.integration.orthanc import OrthancServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICES = 32  # >= the EARL analyzer's 30
FROM, TO = dt.date(2024, 3, 1), dt.date(2024, 3, 31)


@dataclass(frozen=True)
class SimSeries:
    site: str
    station: str
    serial: str
    date: str
    label: str
    fwhm_mm: float
    voxel_mm: float
    files: tuple[Path, ...]
    series_uid: str


PLAN = [  # site, station, serial, study date, simulated class
    ("Site A", "PETCT_A", "SN-A1", "20240305", "EARL1"),
    ("Site A", "PETCT_A", "SN-A1", "20240306", "EARL1"),
    ("Site B", "PETCT_B", "SN-B1", "20240310", "clinical"),
    ("Site B", "PETCT_B", "SN-B1", "20240311", "clinical"),
    ("Site C", "PETCT_C", "SN-C1", "20240312", "EARL2"),
    ("Site A", "PETCT_A", "SN-A1", "20231201", "EARL1"),  # outside the date range
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> list[SimSeries]:
    """Simulated sites' PET (simulate_case, cropped to SLICES), headers per site.

    The kernel states the post-filter that, with the report's assumed non-PSF
    reconstruction resolution, gives the simulated effective FWHM.
    """
    from qcd.synth import write_pet_series
    from training.earl.simulate import simulate_case

    root = tmp_path_factory.mktemp("archive")
    out = []
    for i, (site, station, serial, date, label) in enumerate(PLAN):
        volume, params, _, _ = simulate_case(np.random.default_rng(9100 + i), label)
        start = max((volume.shape[0] - SLICES) // 2, 0)
        g = math.sqrt(max(params.fwhm_mm**2 - R0_NO_PSF_MM**2, 0.0))
        files = write_pet_series(volume[start:start + SLICES], tuple(params.voxel_mm),
                                 root / f"s{i}", description=f"PET WB sim {label}",
                                 kernel=f"XYZ Gauss{g:.2f}", seed=i)
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
            ds.InstitutionName, ds.StationName, ds.DeviceSerialNumber = site, station, serial
            ds.save_as(f, enforce_file_format=True)
        out.append(SimSeries(site, station, serial, date, label, params.fwhm_mm,
                             params.voxel_mm[1], tuple(files), str(ds.SeriesInstanceUID)))
    return out


def _env(tmp: Path, port: int, pacs: OrthancServer) -> dict[str, str]:
    return {
        "QCD_SPOOL__PATH": str(tmp / "spool"), "QCD_SPOOL__MIN_FREE_BYTES": "0",
        "QCD_SPOOL__FSYNC": "false",
        "QCD_DATABASE__URL": f"sqlite:///{tmp}/qcd.db",
        "QCD_INGEST__HOST": "127.0.0.1", "QCD_INGEST__PORT": str(port),
        "QCD_INGEST__DRAIN_TIMEOUT": "2", "QCD_HTTP__ENABLED": "false",
        "QCD_ASSEMBLY__QUIET_SECONDS": "1", "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.2",
        "QCD_WORKERS__THREADS": "1", "QCD_WORKERS__POLL_INTERVAL_SECONDS": "0.2",
        "QCD_INFERENCE__DEVICE": "cpu", "QCD_INFERENCE__CPU_THREADS": "1",
        "QCD_AUDIT__PACS_HOST": "127.0.0.1", "QCD_AUDIT__PACS_PORT": str(pacs.dicom_port),
        "QCD_AUDIT__PACS_AE_TITLE": pacs.aet, "QCD_AUDIT__MAX_CONCURRENT_RETRIEVES": "2",
        "QCD_AUDIT__TIMEOUT": "30",
    }


class DaemonProcess:
    """``qcd serve`` as a real process, so that it can be killed."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QCD_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "qcd.cli", "serve"],
                                         env={**env, **self.env}, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", int(self.env["QCD_INGEST__PORT"])),
                                         0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("qcd serve did not listen: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def setup(tmp_path: Path, archive: list[SimSeries]
          ) -> Iterator[tuple[Settings, OrthancServer, DaemonProcess]]:
    port = free_port()
    pacs = OrthancServer(tmp_path / "orthanc", modalities={"QCD": ("QCD", "127.0.0.1", port)})
    pacs.start()
    for s in archive:
        for f in s.files:
            pacs.post("/instances", f.read_bytes())
    env = _env(tmp_path, port, pacs)
    settings = load_settings(environ=env)
    Database(settings.database.url).upgrade()
    daemon = DaemonProcess(env, tmp_path / "qcd.log")
    daemon.start()
    try:
        yield settings, pacs, daemon
    finally:
        daemon.stop()
        pacs.stop()


def _in_range(archive: list[SimSeries]) -> dict[str, SimSeries]:
    return {s.series_uid: s for s in archive if FROM.strftime("%Y%m%d") <= s.date
            <= TO.strftime("%Y%m%d")}


def _db_classes(db: Database) -> Counter[tuple[str, str, str]]:
    """(site, station, class) counts straight from the DB (latest generation, DONE)."""
    with db.session() as s:
        rows = s.execute(
            select(Series.institution_name, Series.station_name, Finding.value_text)
            .join(Job, (Job.series_id == Series.id) & (Job.generation == Series.generation))
            .join(Finding, Finding.job_id == Job.id)
            .where(Job.state == JobState.DONE, Finding.name == "earl_class")).all()
    return Counter((a or "", b or "", c or "") for a, b, c in rows)


def _assert_no_duplicates(db: Database, expected: dict[str, SimSeries]) -> None:
    with db.session() as s:
        per_series = dict(s.execute(
            select(Series.series_uid, func.count(Instance.id))
            .join(Instance, Instance.series_id == Series.id).group_by(Series.series_uid)).all())
        sops = s.execute(select(Instance.sop_uid, func.count()).group_by(Instance.sop_uid)
                         .having(func.count() > 1)).all()
        jobs = s.execute(select(Series.series_uid, func.count(Job.id))
                         .join(Job, (Job.series_id == Series.id)
                               & (Job.generation == Series.generation))
                         .group_by(Series.series_uid)).all()
    assert per_series == {uid: SLICES for uid in expected}, per_series  # nothing else came
    assert sops == []
    assert all(n == 1 for _, n in jobs), jobs


def test_audit_retrieves_once_analyses_and_reports(
        setup: tuple[Settings, OrthancServer, DaemonProcess], archive: list[SimSeries],
        tmp_path: Path) -> None:
    settings, pacs, daemon = setup
    env = daemon.env
    db = Database(settings.database.url)
    expected = _in_range(archive)
    runner = build_runner(settings, db)
    filters = AuditFilters(FROM, TO, "PT")

    dry = runner.run(filters, dry_run=True)
    assert sorted(dry.deferred) == sorted(expected)

    first = runner.run(filters)
    assert sorted(first.retrieved) == sorted(expected), first.failed
    assert wait_for_analysis(db, expected, "earl", timeout=90) == []
    _assert_no_duplicates(db, expected)

    second = runner.run(filters)
    assert second.retrieved == [] and second.failed == {}
    assert sorted(second.already_retrieved) == sorted(expected)

    only_b = runner.run(AuditFilters(FROM, TO, "PT", institutions=("site b",)), dry_run=True)
    assert only_b.found == 2

    rows = series_rows(db, filters)
    assert sorted(r.series_uid for r in rows) == sorted(expected)
    report = scanner_rows(rows)
    assert {(r.site, r.station, r.device_serial) for r in report} == {
        ("Site A", "PETCT_A", "SN-A1"), ("Site B", "PETCT_B", "SN-B1"),
        ("Site C", "PETCT_C", "SN-C1")}
    from_db = _db_classes(db)
    for r in report:
        for cls, n in r.counts.items():
            assert n == from_db[(r.site, r.station, cls)], (r, from_db)
        assert sum(r.shares.values()) == pytest.approx(1.0)
        assert r.non_compliant == r.counts["clinical"]
    for r in rows:  # the header-based resolution is the simulated one; the extra follows
        sim = expected[r.series_uid]
        f = max(sim.fwhm_mm, R0_NO_PSF_MM)  # the header cannot state less than r0
        assert r.fwhm_eff_mm == pytest.approx(f, abs=0.01)
        band = band_range("EARL1", sim.voxel_mm)
        assert band is not None
        centre = sum(band) / 2
        if f < centre:
            assert r.to_earl1.recommended == pytest.approx(math.sqrt(centre**2 - f**2), abs=0.02)
    assert write_csv(report, tmp_path / "report.csv") == 3
    header = (tmp_path / "report.csv").read_text().splitlines()[0]
    assert "count_clinical" in header and "extra_to_earl1_mm_median" in header

    cli = subprocess.run(  # the operator's door: nothing new to retrieve, same report
        [sys.executable, "-m", "qcd.cli", "audit", "--from", FROM.isoformat(), "--to",
         TO.isoformat(), "--report", str(tmp_path / "cli.csv"), "--series-report",
         str(tmp_path / "cli-series.csv")],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("QCD_")}, **env},
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "retrieved 0," in cli.stdout and f"already retrieved {len(expected)}" in cli.stdout
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "report.csv").read_text()
    assert len((tmp_path / "cli-series.csv").read_text().splitlines()) == len(expected) + 1
    db.dispose()


def test_daemon_killed_mid_audit_rerun_completes_without_duplicates(
        setup: tuple[Settings, OrthancServer, DaemonProcess], archive: list[SimSeries]) -> None:
    settings, pacs, daemon = setup
    db = Database(settings.database.url)
    expected = _in_range(archive)
    filters = AuditFilters(FROM, TO, "PT")
    runner = build_runner(settings, db)
    move = runner.retrieve

    def slow(c: SeriesCandidate) -> RetrieveResult:
        time.sleep(0.3)  # keep the audit in flight long enough to kill the daemon mid-way
        return move(c)

    runner.retrieve = slow
    result: dict[str, object] = {}
    t = threading.Thread(target=lambda: result.update(first=runner.run(filters)))
    t.start()
    deadline = time.monotonic() + 30
    while True:
        with db.session() as s:
            done = s.scalar(select(func.count()).select_from(AuditCandidate).where(
                AuditCandidate.state == AuditState.RETRIEVED)) or 0
        if done >= 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    daemon.kill()
    t.join(60)
    first = result["first"]
    assert first.failed, "the kill should have failed some retrieves"  # type: ignore[attr-defined]

    daemon.start()
    runner.retrieve = move
    rerun = runner.run(filters)
    assert rerun.failed == {}
    assert sorted(rerun.retrieved) == sorted(first.failed)  # type: ignore[attr-defined]
    assert wait_for_analysis(db, expected, "earl", timeout=90) == []
    with db.session() as s:
        states = dict(s.execute(select(AuditCandidate.series_uid, AuditCandidate.state)).all())
    assert states == {uid: AuditState.RETRIEVED for uid in expected}
    _assert_no_duplicates(db, expected)
    assert runner.run(filters).retrieved == []
    assert sorted(r.series_uid for r in series_rows(db, filters)) == sorted(expected)
    db.dispose()
