"""Distributed mode against the real RabbitMQ and PostgreSQL of this machine.

An ingest :class:`~qcd.app.Daemon` in ``workers.mode = "distributed"`` receives a study
from dcmtk's storescu and publishes its jobs; ``qcd worker`` processes (with test
analyzers, :mod:`tests.integration.celery_worker_main`) consume them. Each test has its
own RabbitMQ vhost (rabbitmqctl) and its own PostgreSQL database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qcd.app import Daemon
from qcd.config import Settings, load_settings
from qcd.db.engine import Database
from qcd.db.models import Alert, Finding, Job, JobState
from qcd.synth import SeriesSpec, make_study
from tests.conftest import free_port, reset_schema
from tests.integration.dcmtk import storescu
from tests.integration.celery_worker_main import SlowAnalyzer
from tests.toy_analyzers import CountAnalyzer, write_toy_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
AMQP_HOST, AMQP_PORT = "127.0.0.1", int(os.environ.get("QCD_TEST_AMQP_PORT", "5672"))


def _rabbit_reachable() -> bool:
    try:
        with socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=2):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl") or "/usr/lib/rabbitmq/bin/rabbitmqctl"
    return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def broker() -> Iterator[tuple[str, str]]:
    """(broker URL on a vhost of our own, queue prefix); the vhost is deleted afterwards."""
    if not _rabbit_reachable():
        pytest.skip(f"RabbitMQ not reachable at {AMQP_HOST}:{AMQP_PORT}")
    tag = uuid.uuid4().hex[:10]
    vhost = f"qcd_test_{tag}"
    try:
        made = _rabbitmqctl("add_vhost", vhost).returncode == 0 and _rabbitmqctl(
            "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        made = False
    if not made:  # no rabbitmqctl rights: the default vhost with queue names of our own
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//", f"qcdtest{tag}"
        return
    yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}", "qcd"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    reset_schema(pg_database)
    return pg_database


class Cluster:
    """One ingest daemon (this process) and ``qcd worker`` processes (subprocesses)."""

    def __init__(self, tmp_path: Path, pg_url: str, broker: tuple[str, str],
                 slow: float) -> None:
        self.tmp = tmp_path
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        (tmp_path / "spool").mkdir()
        models = tmp_path / "models"
        write_toy_bundle(models)
        config = tmp_path / "qcd.toml"
        config.write_text(
            '[[routing.rules]]\nanalyzer = "slow"\nmodalities = ["PT"]\n'
            '[[alerts.rules]]\nkind = "rescan"\nanalyzer = "slow"\nfinding = "slept"\n'
            'severity = "critical"\n')
        self.env = {
            "QCD_CONFIG": str(config),
            "QCD_SPOOL__PATH": str(tmp_path / "spool"),
            "QCD_SPOOL__MIN_FREE_BYTES": "0",
            "QCD_DATABASE__URL": pg_url,
            "QCD_INGEST__HOST": "127.0.0.1",
            "QCD_INGEST__PORT": str(free_port()),
            "QCD_INGEST__DRAIN_TIMEOUT": "5",
            "QCD_HTTP__PORT": "0",
            "QCD_ASSEMBLY__QUIET_SECONDS": "1",
            "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.2",
            "QCD_OUTPUTS__PATH": str(tmp_path / "outputs"),
            "QCD_WORKERS__MODE": "distributed",
            "QCD_WORKERS__MODELS_PATH": str(models),
            "QCD_WORKERS__LEASE_SECONDS": "120",
            "QCD_CELERY__BROKER_URL": broker[0],
            "QCD_CELERY__QUEUE_PREFIX": broker[1],
            "QCD_CELERY__PUBLISH_INTERVAL_SECONDS": "0.2",
            "QCD_CELERY__TASK_TIME_LIMIT": "60",
            "QCD_CELERY__TASK_SOFT_TIME_LIMIT": "55",
            "QCDTEST_RUNS": str(self.runs),
            "QCDTEST_SLOW": str(slow),
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.daemon: Daemon | None = None

    def settings(self) -> Settings:
        return load_settings(environ=self.env)

    def start_daemon(self) -> Daemon:
        self.daemon = Daemon(self.settings(),
                             registry={"slow": SlowAnalyzer(), "count": CountAnalyzer()})
        self.daemon.start()
        return self.daemon

    def start_worker(self, pool: str = "prefork", concurrency: int = 1) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QCD_")}
        env.update(self.env)
        env["PYTHONPATH"] = str(ROOT)
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.celery_worker_main", "--pool", pool,
             "--concurrency", str(concurrency), "--analyzers", "slow"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(self.workers):
            log = self.tmp / f"worker{i}.log"
            while b" ready." not in log.read_bytes():
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.2)

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:]
                         for p in sorted(self.tmp.glob("worker*.log")))


@pytest.fixture
def cluster_factory(tmp_path: Path, pg_url: str, broker: tuple[str, str]) -> Iterator[object]:
    made: list[Cluster] = []

    def make(slow: float) -> Cluster:
        c = Cluster(tmp_path, pg_url, broker, slow)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def wait_jobs(db: Database, n: int, timeout: float, logs: object = None) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as s:
            jobs = list(s.scalars(select(Job).order_by(Job.id)))
            s.expunge_all()
        if len(jobs) >= n and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not done: {[(j.id, j.state, j.worker) for j in jobs]}"
                                 f"\n{logs() if callable(logs) else ''}")
        time.sleep(0.2)


def _pid(worker: str | None) -> int:
    return int((worker or "::").split(":")[1])


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def test_two_workers_consume_and_every_finding_lands_once(
        tmp_path: Path, cluster_factory: object) -> None:
    c = cluster_factory(0.5)  # type: ignore[operator]
    w1, w2 = c.start_worker(), c.start_worker()
    c.wait_ready()
    daemon = c.start_daemon()
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 2, f"PET {i}") for i in range(8)], 16)
    assert len(storescu(files, daemon.scp.port).acknowledged) == 16
    jobs = wait_jobs(daemon.db, 8, 120, c.logs)
    assert [(j.state, j.attempts) for j in jobs] == [(JobState.DONE, 1)] * 8
    with daemon.db.session() as s:
        per_job = {row[0]: row[1] for row in s.execute(
            select(Finding.job_id, func.count()).group_by(Finding.job_id))}
        alerts = {row[0]: row[1] for row in s.execute(
            select(Alert.job_id, func.count()).group_by(Alert.job_id))}
        pids = {f.payload["pid"] for f in s.scalars(select(Finding))}
    assert per_job == {j.id: 1 for j in jobs}
    assert alerts == {j.id: 1 for j in jobs}
    assert len(list(c.runs.iterdir())) == 8  # every analysis ran exactly once
    parents = {_parent(p) if Path(f"/proc/{p}").exists() else p for p in pids}
    assert parents == {w1.pid, w2.pid}, "both worker processes took jobs"


def test_worker_killed_mid_task_the_task_is_redelivered_and_completes_once(
        tmp_path: Path, cluster_factory: object) -> None:
    c = cluster_factory(6.0)  # type: ignore[operator]
    w1, w2 = c.start_worker(), c.start_worker()
    c.wait_ready()
    daemon = c.start_daemon()
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 3, "PET WB")], 16)
    assert len(storescu(files, daemon.scp.port).acknowledged) == 3
    deadline = time.monotonic() + 60
    while True:  # wait until a worker is in the middle of the analysis
        with daemon.db.session() as s:
            job = s.scalars(select(Job)).first()
            holder = job.worker if job is not None and job.state == JobState.RUNNING else None
        if holder and list(c.runs.iterdir()):
            break
        assert time.monotonic() < deadline, c.logs()
        time.sleep(0.1)
    child = _pid(holder)
    victim = w1 if w1.pid in (child, _parent(child)) else w2
    survivor = w2 if victim is w1 else w1
    c.kill9(victim)
    [job] = wait_jobs(daemon.db, 1, 120, c.logs)
    assert job.state == JobState.DONE and job.attempts == 2, job.error
    assert _pid(job.worker) != child
    assert _parent(_pid(job.worker)) == survivor.pid
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Finding)) == 1
        assert s.scalar(select(func.count()).select_from(Alert)) == 1
    assert len(list(c.runs.iterdir())) == 2  # killed run + the one that completed


def test_jobs_created_while_the_broker_is_unreachable_are_published_later(
        tmp_path: Path, cluster_factory: object, broker: tuple[str, str]) -> None:
    """The publish sweep is durable: the job row waits, not a message that never was."""
    c = cluster_factory(0.0)  # type: ignore[operator]
    good = c.env["QCD_CELERY__BROKER_URL"]
    c.env["QCD_CELERY__BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    daemon = c.start_daemon()
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 2, f"PET {i}") for i in range(3)], 16)
    assert len(storescu(files, daemon.scp.port).acknowledged) == 6
    time.sleep(3)
    with daemon.db.session() as s:
        states = list(s.scalars(select(Job.state)))
    assert states == [JobState.QUEUED] * 3  # broker down: nothing published, nothing lost
    daemon.stop()
    c.daemon = None
    c.env["QCD_CELERY__BROKER_URL"] = good  # "broker back": a new ingest process publishes
    daemon = c.start_daemon()
    c.start_worker(pool="threads", concurrency=2)
    jobs = wait_jobs(daemon.db, 3, 120, c.logs)
    assert [(j.state, j.attempts) for j in jobs] == [(JobState.DONE, 1)] * 3
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Finding)) == 3


def test_broker_restart_loses_no_published_task(
        tmp_path: Path, cluster_factory: object, broker: tuple[str, str]) -> None:
    """Tasks published to durable queues survive a RabbitMQ restart, and the ingest node
    keeps publishing afterwards (this restarts the machine's broker: CI runs alone)."""
    vhost = broker[0].rsplit("/", 1)[1]
    if not vhost.startswith("qcd_test_"):
        pytest.skip("needs rabbitmqctl (a vhost of our own) to restart the broker")
    c = cluster_factory(0.0)  # type: ignore[operator]
    daemon = c.start_daemon()  # no worker yet: the tasks wait in the queue
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 2, f"PET {i}") for i in range(3)], 16)
    assert len(storescu(files, daemon.scp.port).acknowledged) == 6

    def queued() -> int:
        out = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages").stdout
        return sum(int(line.split()[-1]) for line in out.splitlines()
                   if line.split() and line.split()[-1].isdigit())

    deadline = time.monotonic() + 30
    while queued() < 3:
        assert time.monotonic() < deadline, "the tasks never reached the queue"
        time.sleep(0.3)
    assert _rabbitmqctl("stop_app").returncode == 0
    try:
        time.sleep(1)
    finally:
        assert _rabbitmqctl("start_app").returncode == 0
    _rabbitmqctl("await_startup")
    assert queued() == 3, "persistent messages in durable queues survive the restart"
    more = make_study(tmp_path / "in2", [SeriesSpec("PT", 2, "PET after")], 16)
    assert len(storescu(more, daemon.scp.port).acknowledged) == 2  # published after restart
    c.start_worker(pool="threads", concurrency=2)
    jobs = wait_jobs(daemon.db, 4, 120, c.logs)
    assert [j.state for j in jobs] == [JobState.DONE] * 4
    with daemon.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Finding)) == 4
    assert len(list(c.runs.iterdir())) == 4  # each analysis ran once
