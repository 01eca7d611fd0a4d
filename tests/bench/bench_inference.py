"""Inference benchmark: the batching predictor against direct per-request model calls.

Why: qcd runs several analysis jobs at once; the batching predictor merges their slices
into one forward pass. This measures what that buys for the shipped EARL stage-1 net,
in one run, against the peer "each job calls the model itself" (serialised by a lock,
as one model object cannot run two forwards safely in parallel on one device).

    python tests/bench/bench_inference.py [--device cpu] [--jobs 8] [--requests 4]
                                          [--slices 10] [--out docs/BENCHMARKS.md]

Each of ``--jobs`` threads sends ``--requests`` requests of ``--slices`` slices
(300 x 200), like EARL series. Prints slices/s for both and the ratio; with --out it
writes the section "## Batched inference (<device type>)" of that file.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sys

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from qcd.analyzers.earl.analyzer import CNN_BUNDLE, load_cnn  # noqa: E402
from qcd.bundles import load_bundle  # noqa: E402
from qcd.workers.inference import BatchingPredictor  # noqa: E402
from tests.bench.report import cpu_model, header, write_section  # noqa: E402


def _run(jobs: int, requests: int, call: Callable[[torch.Tensor], torch.Tensor],
         x: torch.Tensor) -> float:
    def worker() -> None:
        for _ in range(requests):
            call(x)

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device = torch.device(args.device)
    bundle = load_bundle(ROOT / "models", "earl", CNN_BUNDLE)
    net = load_cnn(bundle).stage1.to(device).eval()
    x = torch.randn(args.slices, 1, 300, 200)
    lock = threading.Lock()

    def direct(batch: torch.Tensor) -> torch.Tensor:
        with lock, torch.inference_mode():
            return net(batch.to(device)).cpu()

    predictor = BatchingPredictor(net, device, max_batch=args.max_batch, max_wait_ms=5.0)
    direct(x)
    predictor.predict(x)  # warm-up both
    total = args.jobs * args.requests * args.slices
    t_direct = [_run(args.jobs, args.requests, direct, x) for _ in range(args.repeats)]
    t_batched = [_run(args.jobs, args.requests, predictor.predict, x)
                 for _ in range(args.repeats)]
    stats = predictor.stats()
    predictor.close()
    d, b = statistics.median(t_direct), statistics.median(t_batched)
    rows = [
        "| path | wall median s | slices/s |",
        "|---|---|---|",
        f"| direct call per request (locked) | {d:.2f} | {total / d:.0f} |",
        f"| BatchingPredictor (max_batch {args.max_batch}, 5 ms) | {b:.2f} | {total / b:.0f} |",
    ]
    ratio = d / b
    summary = (f"{args.jobs} concurrent jobs x {args.requests} requests x {args.slices} slices "
               f"({total} slices) per run, median of {args.repeats}; EARL stage-1 net "
               f"({bundle.name}/{bundle.version}); mean batch {stats.mean_batch_size:.1f} slices. "
               f"Speed-up of batching: **{ratio:.2f}x**.")
    print("\n".join(rows))
    print(summary)
    if args.out:
        write_section(args.out, f"## Batched inference ({device.type})",
                      header(f"python tests/bench/bench_inference.py --device {args.device} "
                             f"--out {args.out}",
                             f"{device} on {cpu_model()}, {torch.get_num_threads()} torch "
                             f"threads, torch {torch.__version__}")
                      + "\n\n" + "\n".join(rows) + f"\n\n{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
