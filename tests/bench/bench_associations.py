"""One association per instance: what setting up an association costs each receiver.

Why: many senders (CR/DX modalities, some PACS forwarders and routers) open a new
association for every instance. Then the set-up, not the data path, bounds ingest:
pynetdicom deep-copied qcd's 171 presentation contexts for every association (~65 ms of
CPU, ~12 associations/s); qcd now hands each association the same contexts
(``qcd.ingest.scp.SharedContexts``). This pushes ``--n`` small CT slices, each with its
own ``storescu`` process (so its own association), one after the other, to ``qcd serve``
(optionally also with ``ingest.reactor = polling``), dcmtk ``storescp`` and Orthanc, in
one run on the same files; instances/s and the qcd/peer ratios are printed.

    python tests/bench/bench_associations.py [--n 100] [--size 256] [--repeats 3]
                                             [--qcd-polling] [--out docs/BENCHMARKS.md]

Each storescu start (a process) costs the same for every receiver; it is part of every
row. With --out it writes the section "## One association per instance".
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from qcd.synth import SeriesSpec, make_study  # noqa: E402
from tests.bench.bench_ingest import (  # noqa: E402
    BenchError,
    OrthancReceiver,
    QcdReceiver,
    Receiver,
    StorescpReceiver,
    find_tool,
    sender_env,
    tail,
)
from tests.bench.report import header, machine, write_section  # noqa: E402

SECTION = "## One association per instance"


def push_each(files: list[Path], aec: str, port: int, log: Path) -> float:
    """One storescu (one association) per file, one after the other; wall seconds."""
    storescu = find_tool("storescu")
    env = sender_env(nodelay=True)
    start = time.perf_counter()
    for path in files:
        with log.open("ab") as out:
            rc = subprocess.run([storescu, "-aec", aec, "-aet", "BENCH", "127.0.0.1", str(port),
                                 str(path)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                timeout=60).returncode
        if rc != 0:
            raise BenchError(f"storescu exited {rc} for {path.name}:\n{tail(log)}")
    return time.perf_counter() - start


def run_once(make: Callable[[Path], Receiver], files: list[Path], scratch: Path) -> float:
    workdir = Path(tempfile.mkdtemp(dir=scratch))
    receiver = make(workdir)
    try:
        receiver.start()
        wall = push_each(files, receiver.ae_title, receiver.port, workdir / "storescu.log")
        got = receiver.count()
        if got != len(files):
            raise BenchError(f"holds {got} of {len(files)} instances:\n{tail(receiver.log)}")
        receiver.stop()
    except BaseException:
        receiver.kill()
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each slice")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qcd-polling", action="store_true",
                        help="also run qcd with ingest.reactor = polling")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    receivers: list[tuple[str, Callable[[Path], Receiver]]] = [("qcd serve", QcdReceiver)]
    if args.qcd_polling:
        receivers.append(("qcd serve, polling reactors",
                          lambda w: QcdReceiver(w, reactor="polling")))
    receivers += [("dcmtk storescp", lambda w: StorescpReceiver(w, fork=False)),
                  ("Orthanc", OrthancReceiver)]
    scratch = Path(tempfile.mkdtemp(prefix="qcd-bench-assoc-"))
    try:
        files = make_study(scratch / "data", [SeriesSpec("CT", args.n, "bench CT", "CHEST")],
                           size=args.size)
        walls: dict[str, list[float]] = {name: [] for name, _ in receivers}
        for repeat in range(1, args.repeats + 1):  # interleaved
            for name, make in receivers:
                wall = run_once(make, files, scratch)
                walls[name].append(wall)
                print(f"[{repeat}/{args.repeats}] {name}: {wall:.2f} s "
                      f"({len(files) / wall:.1f} inst/s)", file=sys.stderr)
    except BenchError as exc:
        print(f"bench_associations: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rate = {name: len(files) / statistics.median(w) for name, w in walls.items()}
    rows = ["| receiver | instances | runs (wall s) | instances/s (median) | qcd / this |",
            "|---|---|---|---|---|"]
    for name, _ in receivers:
        rows.append(f"| {name} | {len(files)} | "
                    + ", ".join(f"{w:.2f}" for w in walls[name])
                    + f" | {rate[name]:.1f} | {rate['qcd serve'] / rate[name]:.2f} |")
    table = "\n".join(rows)
    print(table)
    if args.out:
        command = shlex.join(["python", "tests/bench/bench_associations.py",
                              *(sys.argv[1:] if argv is None else argv)])
        body = header(command, machine(),
                      f"data: {len(files)} generated {args.size}x{args.size} CT slices, each "
                      "sent by its own `storescu` process (one association), one after the "
                      "other, TCP_NODELAY on both sides; receivers fresh for every run, "
                      "repeats interleaved")
        write_section(args.out, SECTION, body + "\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
