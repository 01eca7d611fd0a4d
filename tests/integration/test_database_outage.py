"""PostgreSQL stopped and restarted under a running daemon (the machine's real server).

While the database is down, every C-STORE is answered 0xA701 (out of resources: not
recorded) — never Success for an instance qcd could not record — the daemon stays up and
/readyz says which check fails; once PostgreSQL is back, the scanner's re-send is
acknowledged, nothing acknowledged before the outage is lost, the series completes and is
analysed. This stops the machine's PostgreSQL for a few seconds: CI runs tests serially.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qcd.app import Daemon
from qcd.db.models import Instance, Job, JobState
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings
from tests.integration.dcmtk import storescu
from tests.toy_analyzers import CountAnalyzer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cluster() -> list[str] | None:
    ctl = shutil.which("pg_ctlcluster")
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) \
        if Path("/etc/postgresql").is_dir() else []
    return [ctl, "--skip-systemctl-redirect", versions[-1], "main"] if ctl and versions else None


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_database_outage_refuses_then_recovers(tmp_path: Path, pg_database: str) -> None:
    cluster = _cluster()
    if cluster is None:
        pytest.skip("no pg_ctlcluster: cannot stop and start PostgreSQL here")
    files = make_study(tmp_path / "in", [SeriesSpec("CT", 30, "CT", "CHEST")], 16, seed=4)
    first, rest = files[:10], files[10:]
    config = tmp_path / "qcd.toml"
    config.write_text('[[routing.rules]]\nanalyzer = "count"\nmodalities = ["CT"]\n')
    daemon = Daemon(make_settings(tmp_path, db_url=pg_database, QCD_CONFIG=str(config),
                                  QCD_WORKERS__THREADS="1"),
                    registry={"count": CountAnalyzer()})
    daemon.start()
    assert daemon.http is not None
    stopped = False
    try:
        assert len(storescu(first, daemon.scp.port).acknowledged) == 10
        subprocess.run([*cluster, "stop"], check=True, capture_output=True, timeout=60)
        stopped = True
        during = storescu(rest[:5], daemon.scp.port)
        assert during.acknowledged == []  # never Success for what could not be recorded
        assert set(during.failed.values()) <= {"Refused: OutOfResources"}, during.failed
        code, body = _readyz(daemon.http.port)
        assert code == 503 and body["checks"]["database"] is False  # type: ignore[index]
        subprocess.run([*cluster, "start"], check=True, capture_output=True, timeout=60)
        stopped = False
        deadline = time.monotonic() + 60
        while _readyz(daemon.http.port)[0] != 200:
            assert time.monotonic() < deadline, "qcd did not become ready again"
            time.sleep(0.5)
        again = storescu(rest, daemon.scp.port)  # the scanner re-sends what failed, and more
        assert again.failed == {} and len(again.acknowledged) == len(rest)
        deadline = time.monotonic() + 60
        while True:
            with daemon.db.session() as s:
                n = s.scalar(select(func.count()).select_from(Instance))
                states = list(s.scalars(select(Job.state)))
            if n == 30 and states and all(st == JobState.DONE for st in states):
                break
            assert time.monotonic() < deadline, (n, states)
            time.sleep(0.5)
    finally:
        if stopped:
            subprocess.run([*cluster, "start"], capture_output=True, timeout=60)
        daemon.stop()
