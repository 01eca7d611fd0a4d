"""Dashboard query times with 100k findings, on SQLite and PostgreSQL, with and without
the indexes of migration 0005.

Why: the sites overview aggregates every finding of the period on each page view and
Prometheus scrape (qcd_qc_* gauges); it must stay interactive (well under a second)
at the size of a year of a busy network. Seeds ~100k findings (about 25k series over
365 days, 9 scanners at 2 sites) with :func:`qcd.web.seed.seed`, then times each
query (median of ``--repeats``) for a 30-day and a 365-day period.

    python tests/bench/bench_dashboard.py [--findings 100000] [--repeats 5] [--no-pg]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from qcd.db.engine import Database  # noqa: E402
from qcd.web import aggregates, records, seed  # noqa: E402
from qcd.web.aggregates import Period  # noqa: E402
from tests.bench.report import header, machine, write_section  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
INDEXES = (("ix_series_first_received", "series"), ("ix_alerts_state_created", "alerts"))
FINDINGS_PER_SERIES = 4.0
"""About what :func:`qcd.web.seed.seed` writes per series (2 EARL ... 7 chest)."""


def timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def queries(db: Database, now: Any) -> dict[str, Callable[[], Any]]:
    p30, p365 = Period.last_days(30, now), Period.last_days(365, now)
    return {
        "site_table 30 d": lambda: aggregates.site_table(db, p30),
        "site_table 365 d": lambda: aggregates.site_table(db, p365),
        "trends 30 d": lambda: aggregates.trends(db, p30),
        "trends 365 d": lambda: aggregates.trends(db, p365),
        "metric_rows (1 h + 24 h)": lambda: aggregates.metric_rows(db, now),
        "recent_series 50": lambda: records.recent_series(db, None, 50),
        "open alerts 100": lambda: records.alerts(db, "OPEN", None, 100),
    }


def run(url: str, label: str, n_findings: int, repeats: int
        ) -> list[tuple[str, str, float, float, float]]:
    db = Database(url)
    db.upgrade()
    t = time.perf_counter()
    written: dict[str, int] = {"findings": 0, "series": 0}
    from qcd.db.models import utcnow

    now = utcnow()
    chunk = 0
    while written["findings"] < n_findings:
        left = n_findings - written["findings"]
        n = max(100, min(5000, int(left / FINDINGS_PER_SERIES)))
        got = seed.seed(db, n_series=n, days=365, seed=chunk, now=now)
        chunk += 1
        for k in written:
            written[k] += got[k]
    print(f"{label}: seeded {written['findings']} findings in {written['series']} series "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    with db.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    # with, without, with again: the order of runs (warm caches) favours neither side
    with_idx = {name: timed(fn, repeats) for name, fn in queries(db, now).items()}
    with db.engine.begin() as conn:
        for index, _ in INDEXES:
            conn.execute(text(f"DROP INDEX {index}"))
        conn.execute(text("ANALYZE"))
    without = {name: timed(fn, repeats) for name, fn in queries(db, now).items()}
    with db.engine.begin() as conn:
        for index, table in INDEXES:
            column = {"series": "first_received_at", "alerts": "state, created_at"}[table]
            conn.execute(text(f"CREATE INDEX {index} ON {table} ({column})"))
        conn.execute(text("ANALYZE"))
    again = {name: timed(fn, repeats) for name, fn in queries(db, now).items()}
    db.dispose()
    return [(label, name, with_idx[name], without[name], again[name]) for name in with_idx]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--out", type=Path, help="write the table into this Markdown file")
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += run(f"sqlite:///{tmp}/bench.db", "SQLite", args.findings, args.repeats)
    if not args.no_pg:
        name = f"qcd_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # no server: report SQLite only
            print(f"PostgreSQL skipped: {exc.__class__.__name__}", flush=True)
        else:
            try:
                rows += run(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", "PostgreSQL",
                            args.findings, args.repeats)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    table = ["| database | query | ms, 0005 indexes | ms, without | ms, indexes again |",
             "|---|---|---|---|---|"]
    table += [f"| {label} | {name} | {a:.1f} | {b:.1f} | {c:.1f} |"
              for label, name, a, b, c in rows]
    print()
    print("\n".join(table))
    if args.out:
        write_section(args.out, "## Dashboard queries",
                      header(f"python tests/bench/bench_dashboard.py --out {args.out}",
                             f"{machine()}; PostgreSQL on the same host",
                             f"Data: {args.findings} seeded findings; median of {args.repeats} "
                             f"runs per query, with migration 0005's indexes, without them, and "
                             f"with them again (the peer is the same query without the "
                             f"indexes).")
                      + "\n\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
