"""A ``qcd worker`` process with test analyzers (the CLI's one loads the real REGISTRY).

Run as ``python -m tests.integration.celery_worker_main [--pool P] [--concurrency N]``
with the ``QCD_*`` settings in the environment; ``QCDTEST_RUNS`` names a folder where
each analysis start leaves a file (to count executions), ``QCDTEST_SLOW`` its duration.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydicom.dataset import Dataset

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.bundles import Bundle
from qcd.config import load_settings
from qcd.logsetup import configure_logging
from qcd.workers.distributed import run_worker
from tests.toy_analyzers import CountAnalyzer


class SlowAnalyzer:
    """Sleeps ``QCDTEST_SLOW`` seconds; leaves one marker file per execution started."""

    name: ClassVar[str] = "slow"
    bundle: ClassVar[str | None] = None

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        return Acceptance(True)

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        runs = Path(os.environ["QCDTEST_RUNS"])
        (runs / f"{series.series_uid}.{os.getpid()}.{time.time_ns()}").touch()
        time.sleep(float(os.environ.get("QCDTEST_SLOW", "0")))
        burn = float(os.environ.get("QCDTEST_BURN", "0"))  # CPU-bound work (benchmarks)
        end = time.process_time() + burn
        while time.process_time() < end:
            sum(i * i for i in range(10_000))
        return [Finding("slept", value_num=len(series.paths), unit="1",
                        payload={"pid": os.getpid()})]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pool", default=None)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--analyzers", default="")
    args = p.parse_args()
    settings = load_settings()
    configure_logging(settings.logging)
    registry = {"count": CountAnalyzer(), "slow": SlowAnalyzer()}
    names = [a for a in args.analyzers.split(",") if a] or None
    return run_worker(settings, registry, names, pool=args.pool, concurrency=args.concurrency)


if __name__ == "__main__":
    raise SystemExit(main())
