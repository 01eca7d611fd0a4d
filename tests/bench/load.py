"""Sustained load: many studies over many associations for minutes, memory and fds watched.

Why: qcd runs for months beside a PACS; a slow leak of memory, file descriptors or
temp files, or a queue held in memory when analysis is slower than ingest, would
take it down at 3 a.m. This pushes synthetic studies (CT + PET + MR + DX, new UIDs
each round) over ``--lanes`` concurrent storescu associations for ``--minutes``,
samples the `qcd serve` process's RSS and open fds once a second, and reports:
instances/s, RSS at start/median/end and its slope over the second half, fd count
start/end, temp files left in the spool, and the job backlog (analysis is kept
slower than ingest on purpose: 1 worker thread) — the backlog lives in the database,
so memory must stay flat while it grows.

    python tests/bench/load.py [--minutes 3] [--lanes 4] [--out docs/RELIABILITY.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from qcd.db.engine import Database  # noqa: E402
from qcd.db.models import Instance, Job, JobState  # noqa: E402
from qcd.synth import DEFAULT_STUDY, make_study  # noqa: E402
from tests.bench.report import header, machine, write_section  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.dcmtk import echoscu, push_concurrently  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time (MB/min)."""
    if len(samples) < 3:
        return float("nan")
    ts = [t for t, _ in samples]
    ys = [y for _, y in samples]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    num = sum((t - mt) * (y - my) for t, y in samples)
    den = sum((t - mt) ** 2 for t in ts) or 1.0
    return num / den * 60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--lanes", type=int, default=4)
    p.add_argument("--studies", type=int, default=6, help="distinct studies to cycle through")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcd-load-"))
    studies = [make_study(work / "in" / str(i), DEFAULT_STUDY, size=64, seed=100 + i)
               for i in range(args.studies)]
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QCD_")},
           "QCD_INGEST__PORT": str(port), "QCD_INGEST__HOST": "127.0.0.1",
           "QCD_HTTP__PORT": "0", "QCD_SPOOL__PATH": str(work / "spool"),
           "QCD_SPOOL__MIN_FREE_BYTES": "0", "QCD_DATABASE__URL": f"sqlite:///{work}/qcd.db",
           "QCD_OUTPUTS__PATH": str(work / "out"), "QCD_ASSEMBLY__QUIET_SECONDS": "2",
           "QCD_WORKERS__THREADS": "1", "QCD_LOGGING__LEVEL": "WARNING"}
    serve = subprocess.Popen([sys.executable, "-m", "qcd.cli", "serve"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb"))
    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    try:
        while echoscu(port) != 0:
            if serve.poll() is not None:
                raise RuntimeError((work / "serve.log").read_text())
            time.sleep(0.2)
        start_fds = fds(serve.pid)
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - t0, rss_mb(serve.pid), fds(serve.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        pushed = failed = rounds = 0
        while time.monotonic() - t0 < args.minutes * 60:
            # each round re-sends one study; from the second cycle on these are
            # duplicates (idempotent: same bytes, no new rows), which is also real traffic
            files = studies[rounds % len(studies)]
            result = push_concurrently(files, port, lanes=args.lanes)
            pushed += len(result.acknowledged)
            failed += len(result.failed)
            rounds += 1
        elapsed = time.monotonic() - t0
        time.sleep(3)  # let in-flight associations close
        stop.set()
        sampler.join()
        end_fds = fds(serve.pid)
        db = Database(env["QCD_DATABASE__URL"])
        with db.session() as s:
            n_instances = s.scalar(select(func.count()).select_from(Instance))
            backlog = s.scalar(select(func.count()).select_from(Job).where(
                Job.state.in_([JobState.QUEUED, JobState.RUNNING])))
        db.dispose()
        temps = list((work / "spool" / ".tmp").iterdir()) if (work / "spool" / ".tmp").exists() else []
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    rss = [r for _, r, _ in samples]

    def fd_at(t: float) -> int:
        return min(samples, key=lambda x: abs(x[0] - t))[2]

    half = [(t, r) for t, r, _ in samples if t >= elapsed / 2]
    rows = ["| figure | value |", "|---|---|",
            f"| duration, associations | {elapsed:.0f} s, {args.lanes} concurrent |",
            f"| instances acknowledged / refused | {pushed} / {failed} "
            f"({pushed / elapsed:.0f} inst/s; {n_instances} distinct rows) |",
            f"| RSS start / median / max / end | {rss[0]:.0f} / {statistics.median(rss):.0f} / "
            f"{max(rss):.0f} / {rss[-1]:.0f} MB |",
            f"| RSS slope over the second half | {slope_mb_per_min(half):+.1f} MB/min |",
            f"| open fds at start / 1st quarter / half / max / end | {start_fds} / "
            f"{fd_at(elapsed / 4)} / {fd_at(elapsed / 2)} / {max(f for _, _, f in samples)} / "
            f"{end_fds} |",
            f"| temp files left in the spool | {len(temps)} |",
            f"| analysis backlog at the end (queued+running jobs, 1 worker) | {backlog} |"]
    print("\n".join(rows))
    if args.out:
        write_section(args.out, "## Sustained load: memory, fds, temp files",
                      header(f"python tests/bench/load.py --minutes {args.minutes} --lanes "
                             f"{args.lanes} --out {args.out}", machine(),
                             f"Studies: {args.studies} synthetic studies of {len(studies[0])} "
                             f"instances (CT, PET, MR, DX; several transfer syntaxes) cycled.")
                      + "\n\n" + "\n".join(rows))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
