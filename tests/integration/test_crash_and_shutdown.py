"""`qcd serve` as a real process: kill -9 mid-push loses nothing; SIGTERM drains."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qcd.db.engine import Database
from qcd.db.models import Instance, Job, Series, SeriesState
from qcd.ingest.filemeta import split_part10
from qcd.synth import SeriesSpec, make_study
from tests.conftest import free_port
from tests.integration.dcmtk import PushResult, echoscu, push_concurrently, storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Served:
    """One `qcd serve` process on a fixed spool, DB and port (restartable)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.spool = tmp_path / "spool"
        self.db_url = f"sqlite:///{tmp_path}/qcd.db"
        self.log = tmp_path / "serve.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("QCD_")},
            "QCD_INGEST__HOST": "127.0.0.1",
            "QCD_INGEST__PORT": str(self.port),
            "QCD_INGEST__DRAIN_TIMEOUT": "20",
            "QCD_HTTP__PORT": "0",
            "QCD_SPOOL__PATH": str(self.spool),
            "QCD_SPOOL__MIN_FREE_BYTES": "0",
            "QCD_DATABASE__URL": self.db_url,
            "QCD_ASSEMBLY__QUIET_SECONDS": "2",
            "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.3",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "qcd.cli", "serve"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while echoscu(self.port) != 0:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "qcd serve did not come up"
            time.sleep(0.2)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def big_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """600 instances of 256x256 so that a push lasts long enough to be interrupted."""
    specs = [SeriesSpec("CT", 300, "CT A", "CHEST"), SeriesSpec("PT", 200, "PET WB", "WB"),
             SeriesSpec("MR", 100, "cardiac LA", "HEART", compression="rle")]
    return make_study(tmp_path_factory.mktemp("big"), specs, size=256, seed=3)


def _source_sop(path: Path) -> str:
    meta, _ = split_part10(path.read_bytes()[: 1 << 16])
    return str(meta.MediaStorageSOPInstanceUID)


def test_kill_9_mid_push_loses_no_acknowledged_instance(
    served: Served, big_study: list[Path]
) -> None:
    served.start()
    pushed: list[PushResult] = []
    pusher = threading.Thread(target=lambda: pushed.append(
        push_concurrently(big_study, served.port, lanes=4)))
    pusher.start()
    # Kill once a good part of the push is acknowledged, never at a fixed time.
    deadline = time.monotonic() + 60
    while len(list(served.spool.glob("*/*/*.dcm"))) < 150:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    served.kill9()
    pusher.join(120)
    acknowledged = pushed[0].acknowledged
    assert 50 <= len(acknowledged) < len(big_study), "the kill must land mid-push"

    # Restart: every acknowledged instance is on disk, intact, and has its row.
    served.start()
    assert list((served.spool / ".tmp").iterdir()) == []  # partial temp files are gone
    db = Database(served.db_url)
    with db.session() as s:
        rows = {i.sop_uid: i for i in s.scalars(select(Instance))}
    by_sop = {_source_sop(p): p for p in big_study}
    for path in acknowledged:
        sop = _source_sop(path)
        assert sop in rows, f"acknowledged {path.name} has no row after the crash"
        kept = served.spool / rows[sop].path
        data = kept.read_bytes()
        assert hashlib.sha256(data).hexdigest() == rows[sop].sha256
        assert split_part10(data)[1] == split_part10(path.read_bytes())[1]
    # No file under a final name is partial (rows may lag files, never the reverse).
    for kept in served.spool.glob("*/*/*.dcm"):
        assert split_part10(kept.read_bytes())[1] == split_part10(
            by_sop[kept.stem].read_bytes())[1]

    # Resend everything: all arrive once, series complete, one job set per series.
    again = push_concurrently(big_study, served.port, lanes=4)
    assert again.failed == {} and len(again.acknowledged) == len(big_study)
    deadline = time.monotonic() + 30
    while True:
        with db.session() as s:
            states = set(s.scalars(select(Series.state)))
        if states == {SeriesState.COMPLETE}:
            break
        assert time.monotonic() < deadline, "series never completed after the restart"
        time.sleep(0.2)
    with db.session() as s:
        assert len(set(s.scalars(select(Instance.sop_uid)))) == len(big_study)
        assert sorted(s.scalars(select(Instance.version)).all()) == [1] * len(big_study)
        jobs = sorted((j.analyzer, j.generation) for j in s.scalars(select(Job)))
    assert jobs in ([("atrium", 1), ("earl", 1)],)  # no duplicate from the crash
    db.dispose()


def test_sigterm_drains_in_flight_association_and_exits_0(
    served: Served, big_study: list[Path]
) -> None:
    served.start()
    files = big_study[:200]
    pushed: list[PushResult] = []
    pusher = threading.Thread(target=lambda: pushed.append(storescu(files, served.port)))
    pusher.start()
    while len(list(served.spool.glob("*/*/*.dcm"))) < 20:
        time.sleep(0.02)
    assert served.proc is not None
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert echoscu(served.port) != 0  # no new associations while draining
    pusher.join(120)
    assert served.proc.wait(60) == 0
    # The association that was open when SIGTERM came finished normally.
    assert pushed[0].failed == {} and len(pushed[0].acknowledged) == len(files)
    assert "qcd stopped (0 association(s) aborted" in served.log.read_text()
