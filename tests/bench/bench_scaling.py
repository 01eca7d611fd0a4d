"""Horizontal scaling of distributed mode: analysed series per minute vs worker processes.

One ingest daemon (this process) receives S series from dcmtk ``storescu`` and publishes
their jobs to RabbitMQ; N ``qcd worker`` processes (prefork, concurrency 1, the test
analyzer of ``tests/integration/celery_worker_main.py``) consume them against the same
PostgreSQL. Throughput = S / (time from the last acknowledged instance to the last job
DONE) x 60. ``--burn`` sets the CPU seconds each analysis spends (a stand-in for model
inference; 0 measures the pure overhead of the queueing path).

    python tests/bench/bench_scaling.py [--workers 1,2,4] [--series 24] [--burn 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import create_engine, select, text  # noqa: E402

from qcd.db.models import Job, JobState  # noqa: E402
from qcd.synth import SeriesSpec, make_study  # noqa: E402
from tests.conftest import PG_ADMIN_URL  # noqa: E402
from tests.integration.dcmtk import storescu  # noqa: E402
from tests.integration.test_distributed import Cluster, _rabbitmqctl  # noqa: E402


def one_run(n_workers: int, n_series: int, burn: float) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:8]
    vhost, dbname = f"qcd_bench_{tag}", f"qcd_bench_{tag}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"
    tmp = Path(tempfile.mkdtemp(prefix="qcd-bench-"))
    c = Cluster(tmp, url, (f"amqp://guest:guest@127.0.0.1:5672/{vhost}", "qcd"), 0.0)
    c.env["QCDTEST_BURN"] = str(burn)
    c.env["QCD_LOGGING__LEVEL"] = "WARNING"
    try:
        for _ in range(n_workers):
            c.start_worker(pool="prefork", concurrency=1)
        deadline = time.monotonic() + 120
        while len(list(tmp.glob("worker*.log"))) < n_workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(8)  # workers connect (their ready line is not logged at WARNING)
        daemon = c.start_daemon()
        files = make_study(tmp / "in", [SeriesSpec("PT", 2, f"PET {i}")
                                        for i in range(n_series)], 16)
        push = storescu(files, daemon.scp.port)
        assert len(push.acknowledged) == len(files)
        t0 = time.monotonic()
        while True:
            with daemon.db.session() as s:
                states = list(s.scalars(select(Job.state)))
            if len(states) == n_series and all(st == JobState.DONE for st in states):
                break
            assert time.monotonic() - t0 < 600, states
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        quiet = float(c.env["QCD_ASSEMBLY__QUIET_SECONDS"])
        return elapsed, quiet
    finally:
        c.close()
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n"), {"n": dbname})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}"'))
        admin.dispose()
        _rabbitmqctl("delete_vhost", vhost)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--series", type=int, default=24)
    p.add_argument("--burn", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    print(f"cpus={os.cpu_count()} series={args.series} burn={args.burn}s/series")
    print("| workers | run | wall s (after last ack, incl. quiet) | series/min |")
    print("|---|---|---|---|")
    for n in [int(x) for x in args.workers.split(",")]:
        for r in range(args.repeats):
            elapsed, quiet = one_run(n, args.series, args.burn)
            print(f"| {n} | {r + 1} | {elapsed:.2f} (quiet {quiet:g}) | "
                  f"{args.series / elapsed * 60:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
