"""Predictor overhead: what the BatchingPredictor costs per request, with a trivial model.

Why: on an H100 the chest analyzer's batching ratio (issue 10's 10x goal) is bounded by
the Python path, not the GPU: hundreds of job threads each send one radiograph, and
plain batched forwards are 6x faster than the predictor path. This measures that path
alone, on any machine, with a model that does almost nothing (the mean of each sample),
against two peers in the same run:

- the floor: the same job threads and one gathering thread passing
  ``concurrent.futures.Future`` objects with no tensors and no model: the thread
  hand-offs every design with one waiting thread per request pays;
- optionally the predictor of another git revision (``--ref``, loaded from ``git show``),
  so a change to the predictor is measured before/after on the same machine and load.

    python tests/bench/bench_predictor.py [--jobs 256,64] [--max-batch 128,32]
                                          [--seconds 3] [--repeats 3] [--ref REV]
                                          [--out docs/BENCHMARKS.md]

Each of ``--jobs`` threads sends one (1, 1, 64, 64) request after another; requests/s
is counted over ``--seconds`` after 0.5 s of warm-up, median of ``--repeats`` windows.
With --out it writes the section "## Predictor overhead (cpu)".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from qcd.workers import inference  # noqa: E402
from tests.bench.report import header, machine, write_section  # noqa: E402

SHAPE = (1, 1, 64, 64)
WARMUP_S = 0.5


class Mean(torch.nn.Module):
    """One number per sample, 16 outputs (the chest head's size): next to no compute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1).expand(-1, 16)


def window(jobs: int, seconds: float, request: Callable[[], object]) -> float:
    """Requests/s of ``jobs`` threads calling ``request`` in a loop, after a warm-up."""
    done = [0] * jobs
    stop = threading.Event()
    ready = threading.Barrier(jobs + 1)
    errors: list[BaseException] = []

    def job(j: int) -> None:
        ready.wait()
        try:
            while not stop.is_set():
                request()
                done[j] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(j,), daemon=True) for j in range(jobs)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(WARMUP_S)
    before, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    after, wall = sum(done), time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return (after - before) / wall


def floor(jobs: int, max_batch: int, max_wait_ms: float, seconds: float) -> float:
    """The hand-off floor: one gathering thread completing bare futures in batches."""
    pending: queue.SimpleQueue[Future[int] | None] = queue.SimpleQueue()

    def gather() -> None:
        while (first := pending.get()) is not None:
            batch, deadline = [first], time.monotonic() + max_wait_ms / 1000.0
            while len(batch) < max_batch:
                try:
                    item = pending.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
                if item is None:
                    pending.put(None)
                    break
                batch.append(item)
            for f in batch:
                f.set_result(1)

    thread = threading.Thread(target=gather, daemon=True)
    thread.start()

    def request() -> int:
        f: Future[int] = Future()
        pending.put(f)
        return f.result()

    try:
        return window(jobs, seconds, request)
    finally:
        pending.put(None)
        thread.join()


def predictor(module: ModuleType, jobs: int, max_batch: int, max_wait_ms: float,
              seconds: float) -> tuple[float, float]:
    """Requests/s through ``module.BatchingPredictor`` on the CPU, and its mean batch."""
    x = torch.randn(SHAPE)
    with module.BatchingPredictor(Mean(), "cpu", max_batch=max_batch, amp=False,
                                  max_wait_ms=max_wait_ms, name="bench") as p:
        rate = window(jobs, seconds, lambda: p.predict(x))
        stats = p.stats()
    return rate, stats.samples / max(stats.batches, 1)


def load_revision(rev: str) -> ModuleType:
    """``qcd/workers/inference.py`` as it is at git revision ``rev``, as a module."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:qcd/workers/inference.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location(f"inference_{rev}", f.name)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module


def tree_label() -> str:
    """The checkout's commit, marked when ``qcd/workers/inference.py`` differs from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "this tree"
    changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--",
                              "qcd/workers/inference.py"]).returncode != 0
    return f"{head} + uncommitted changes" if changed else head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="256,64", help="comma list, paired with --max-batch")
    parser.add_argument("--max-batch", default="128,32")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref", help="also measure the predictor of this git revision")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    jobs = [int(v) for v in args.jobs.split(",")]
    batches = [int(v) for v in args.max_batch.split(",")]
    if len(jobs) != len(batches):
        parser.error("--jobs and --max-batch need the same number of values")
    torch.set_num_threads(1)  # the model is trivial; keep the cores for the threads
    paths: list[tuple[str, Callable[[int, int], tuple[float, float | None]]]] = [
        ("floor: bare futures, one gathering thread",
         lambda j, b: (floor(j, b, args.max_wait_ms, args.seconds), None)),
        (f"BatchingPredictor ({tree_label()})",
         lambda j, b: predictor(inference, j, b, args.max_wait_ms, args.seconds)),
    ]
    if args.ref:
        old = load_revision(args.ref)
        paths.append((f"BatchingPredictor ({args.ref})",
                      lambda j, b: predictor(old, j, b, args.max_wait_ms, args.seconds)))
    rows = ["| path | jobs x max_batch | requests/s (median) | runs | mean batch | "
            "x floor | us per request |", "|---|---|---|---|---|---|---|"]
    medians: dict[tuple[str, int], float] = {}
    for j, b in zip(jobs, batches):
        runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name, _ in paths}
        for _ in range(args.repeats):  # interleaved, so drift hits every path alike
            for name, run in paths:
                runs[name].append(run(j, b))
        for name, _ in paths:
            rate = statistics.median(r for r, _ in runs[name])
            medians[(name, j)] = rate
            means = [m for _, m in runs[name] if m is not None]
            mean = f"{statistics.mean(means):.1f}" if means else "-"
            rows.append(f"| {name} | {j} x {b} | {rate:.0f} | "
                        + ", ".join(f"{r:.0f}" for r, _ in runs[name])
                        + f" | {mean} | {rate / medians[(paths[0][0], j)]:.2f} | "
                        f"{1e6 / rate:.0f} |")
            print(rows[-1], flush=True)
    summary = []
    if args.ref:
        for j, b in zip(jobs, batches):
            ratio = medians[(paths[1][0], j)] / medians[(paths[2][0], j)]
            summary.append(f"{tree_label()} / {args.ref} at {j} x {b}: **{ratio:.2f}x**.")
            print(summary[-1])
    if args.out:
        command = shlex.join(["python", "tests/bench/bench_predictor.py",
                              *(sys.argv[1:] if argv is None else argv)])
        body = header(command, machine(), f"torch {torch.__version__}, 1 torch thread",
                      f"request {SHAPE}, model: mean per sample (no compute), "
                      f"max_wait_ms {args.max_wait_ms:g}, {args.seconds:g} s windows")
        write_section(args.out, "## Predictor overhead (cpu)",
                      body + "\n\n" + "\n".join(rows) + "\n\n" + " ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
