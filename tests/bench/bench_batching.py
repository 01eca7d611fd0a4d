"""Batching benchmark per analyzer: the daemon's BatchingPredictor against a batch-1 loop.

Why: issue 10 asks for GPU inference throughput per analyzer against a batch-1
baseline, with batched inference at least 10x a batch-1 loop. For each shipped bundle
(``models/<name>/1.0.0``, loaded by the analyzer's own ``load_model``) this measures,
in one run on one device and with the daemon's precision policy (float16 autocast on
CUDA, which the EARL nets switch off inside their forward, ``--no-amp`` turns it off for
all; TF32 off, as :class:`qcd.workers.runtime.LocalRuntime` sets it):

- batch-1 loop: one slice per forward call, one after the other, each output copied
  back to the CPU as float32 (what a caller of the predictor gets);
- BatchingPredictor: the daemon's path (``LocalRuntime`` -> ``PredictorPool`` ->
  ``BatchingPredictor``, default ``max_wait_ms``) fed by concurrent job threads, each
  sending the analyzer's per-series request over and over (EARL 10 slices, motion 8,
  chest one radiograph, atrium a whole ``--atrium-slices`` volume), at each
  ``--max-batch``. ``--jobs 0`` starts enough jobs to keep two full batches queued;
- plain batched forward: the same model called with full batches by one caller, with
  the same copies in and out, and no queue: the upper bound of the predictor.

Inputs are random tensors of each analyzer's model input shape (``model.json``
``input.shape``; atrium: ``input.channels`` x ``--atrium-size`` x ``--atrium-size``, the
1.25 mm grid padded to 16: 320 for MSD Task02_Heart). Each path runs for
``--seconds`` after an untimed warm-up, its forwards on a worker thread as the
predictor's are; slices/s = slices finished / wall time.

    python tests/bench/bench_batching.py [--device auto] [--analyzers earl,motion,chest,atrium]
                                         [--seconds 2] [--max-batch 32,128] [--jobs 0]
                                         [--quick] [--out docs/BENCHMARKS.md]

``--quick`` (for a CPU) shortens every window and uses small batches and volumes.
With --out it writes the section "## Batching per analyzer (<device type>)".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from qcd.bundles import Bundle, load_bundle  # noqa: E402
from qcd.workers.inference import (  # noqa: E402
    InferenceSettings,
    nhwc_input,
    nhwc_model,
    select_device,
    uses_nhwc,
)
from qcd.workers.runtime import LocalRuntime  # noqa: E402
from tests.bench.report import cpu_model, header, write_section  # noqa: E402

ANALYZERS = ("earl", "motion", "chest", "atrium")
VERSION = "1.0.0"
GOAL = 10.0
"""Issue 10: batched inference at least this many times the batch-1 loop."""
QUICK = {"seconds": 0.5, "warmup": 0.0, "max_batch": "4,8", "atrium_slices": 8}
DEFAULTS = {"seconds": 2.0, "warmup": 0.3, "max_batch": "32,128", "atrium_slices": 110}


@dataclass(frozen=True)
class Case:
    """One analyzer as the daemon runs it: its net, input shape and request size."""

    name: str
    bundle: Bundle
    model: torch.nn.Module
    what: str
    shape: tuple[int, ...]
    request: int
    """Slices one analysis job sends in one ``predict`` call."""


@dataclass(frozen=True)
class Result:
    path: str
    requests: str
    mean_batch: float
    slices: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.slices / self.seconds


def load_case(name: str, atrium_size: int, atrium_slices: int) -> Case:
    """The shipped bundle through the analyzer's own loader, and what a job sends."""
    analyzer = importlib.import_module(f"qcd.analyzers.{name}.analyzer")
    bundle = load_bundle(ROOT / "models", name, VERSION)
    model = analyzer.load_model(bundle)
    spec = bundle.spec["input"]
    if name == "earl":  # one predictor per stage; stage 2 has the same architecture
        return Case(name, bundle, model.stage1, "stage-1 net", tuple(spec["shape"]),
                    int(spec["slices"]))
    if name == "motion":
        return Case(name, bundle, model, "ordinal grade net", tuple(spec["shape"]),
                    int(spec["slices"]))
    if name == "chest":
        return Case(name, bundle, model, "16-label classifier", tuple(spec["shape"]), 1)
    if name == "atrium":
        return Case(name, bundle, model, f"U-Net, {atrium_slices}-slice volumes",
                    (int(spec["channels"]), atrium_size, atrium_size), atrium_slices)
    raise ValueError(f"unknown analyzer {name!r}; valid: {', '.join(ANALYZERS)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def daemon_precision(device: torch.device, amp: bool) -> Iterator[None]:
    """inference_mode plus the autocast the BatchingPredictor uses on ``device``."""
    autocast = (torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        yield


def prepared(case: Case, device: torch.device, nhwc: bool) -> torch.nn.Module:
    """The model on ``device`` in the predictor's layout, so every path runs the same net."""
    model = case.model.to(device).eval()
    return nhwc_model(model) if nhwc else model


def on_device(x: torch.Tensor, device: torch.device, nhwc: bool) -> torch.Tensor:
    """Input on ``device`` in the layout the predictor gives it."""
    x = x.to(device)
    return nhwc_input(x) if nhwc else x


def to_host(y: torch.Tensor) -> torch.Tensor:
    return y.detach().to(device="cpu", dtype=torch.float32)


def loop(fn: Callable[[int], int], device: torch.device, seconds: float) -> tuple[int, float]:
    """Call ``fn(i)`` (returns slices done) until ``seconds`` have passed, at least once."""
    sync(device)
    start = time.perf_counter()
    done = i = 0
    while True:
        done += fn(i)
        i += 1
        if time.perf_counter() - start >= seconds:
            break
    sync(device)
    return done, time.perf_counter() - start


def timed_on_thread(step: Callable[[int], int], device: torch.device, amp: bool,
                    seconds: float, warmup: float) -> tuple[int, float]:
    """Warm up, then time ``step`` on a fresh thread, as the predictor runs its forwards.

    Not on the main thread: on a loaded 2-core machine, small CPU forwards there ran far
    slower than on a worker thread (EARL batch-1: 5 against 384 slices/s), which would
    flatter batching.
    """
    out: list[tuple[int, float]] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with daemon_precision(device, amp):
                loop(step, device, warmup)
                out.append(loop(step, device, seconds))
        except BaseException as exc:  # re-raised on the calling thread
            errors.append(exc)

    thread = threading.Thread(target=body, name="bench-forward")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def batch1(case: Case, pool: torch.Tensor, device: torch.device, amp: bool,
           seconds: float, warmup: float, nhwc: bool) -> Result:
    model = prepared(case, device, nhwc)

    def step(i: int) -> int:
        k = i % len(pool)
        to_host(model(on_device(pool[k:k + 1], device, nhwc)))
        return 1

    done, wall = timed_on_thread(step, device, amp, seconds, warmup)
    return Result("batch-1 loop", "1 slice per call", 1.0, done, wall)


def plain(case: Case, pool: torch.Tensor, batch: int, device: torch.device, amp: bool,
          seconds: float, warmup: float, nhwc: bool) -> Result:
    model = prepared(case, device, nhwc)
    x = pool[:batch]

    def step(_: int) -> int:
        to_host(model(on_device(x, device, nhwc)))
        return batch

    done, wall = timed_on_thread(step, device, amp, seconds, warmup)
    return Result(f"plain forward, batch {batch}", "one caller, full batches", float(batch),
                  done, wall)


def batched(case: Case, pool: torch.Tensor, max_batch: int, jobs: int, device: torch.device,
            amp: bool, seconds: float, warmup: float, channels_last: bool) -> Result:
    settings = InferenceSettings(device=str(device), max_batch=max_batch, amp=amp,
                                 channels_last=channels_last)
    runtime = LocalRuntime(settings)
    tag = f"{case.bundle.name}/{case.bundle.version}:{case.bundle.sha256[:12]}"
    predictor = runtime.predictor(tag, lambda: case.model)
    request = pool[:case.request]

    def window(length: float) -> tuple[int, float]:
        done = [0] * jobs
        errors: list[BaseException] = []
        stop = threading.Event()
        ready = threading.Barrier(jobs + 1)

        def job(j: int) -> None:
            ready.wait()
            try:
                while True:  # at least one request each, so the window is never empty
                    predictor.predict(request)
                    done[j] += case.request
                    if stop.is_set():
                        return
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=job, args=(j,), daemon=True) for j in range(jobs)]
        for t in threads:
            t.start()
        ready.wait()
        start = time.perf_counter()
        time.sleep(length)
        stop.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        return sum(done), wall

    try:
        window(warmup)
        (before,) = runtime.pool.stats().values()
        done, wall = window(seconds)
        (after,) = runtime.pool.stats().values()
    finally:
        runtime.close()
    mean = (after.samples - before.samples) / max(1, after.batches - before.batches)
    return Result(f"BatchingPredictor, max_batch {max_batch}",
                  f"{jobs} jobs x {case.request} slice{'s' if case.request > 1 else ''}", mean,
                  done, wall)


def precision(case: Case, device: torch.device, amp: bool, channels_last: bool) -> str:
    """What the net really computes in on ``device`` (EARL turns autocast off inside),
    and in which layout."""
    return _dtype(case, device, amp) + (
        ", NHWC" if uses_nhwc(case.model, device, channels_last) else "")


def _dtype(case: Case, device: torch.device, amp: bool) -> str:
    if device.type != "cuda" or not amp:
        return "float32" + (", TF32 off" if device.type == "cuda" else "")
    model = case.model.to(device).eval()
    with daemon_precision(device, amp):
        out = model(torch.zeros(1, *case.shape, device=device))
    return ("fp16 autocast" if out.dtype == torch.float16
            else f"{str(out.dtype).removeprefix('torch.')} (the net opts out of autocast), "
                 f"TF32 off")


def jobs_for(case: Case, max_batch: int, jobs: int) -> int:
    """``jobs``, or (0) enough concurrent requests to fill two batches, at least 2."""
    return jobs if jobs > 0 else max(2, math.ceil(2 * max_batch / case.request))


def run_case(case: Case, device: torch.device, args: argparse.Namespace,
             batches: list[int]) -> list[Result]:
    torch.manual_seed(0)
    pool = torch.rand(max(max(batches), case.request), *case.shape)
    cl = uses_nhwc(case.model, device, args.channels_last)
    progress(f"{case.name}: batch-1 loop")
    results = [batch1(case, pool, device, args.amp, args.seconds, args.warmup, cl)]
    for b in batches:
        jobs = jobs_for(case, b, args.jobs)
        progress(f"{case.name}: BatchingPredictor max_batch {b}, {jobs} jobs")
        results.append(batched(case, pool, b, jobs, device, args.amp, args.seconds,
                               args.warmup, cl))
    if not args.no_plain:
        for b in batches:
            progress(f"{case.name}: plain forward, batch {b}")
            results.append(plain(case, pool, b, device, args.amp, args.seconds, args.warmup,
                                 cl))
    return results


def case_table(results: list[Result]) -> list[str]:
    base = results[0].rate
    rows = ["| path | requests | mean batch | slices | wall s | slices/s | x batch-1 |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r.path} | {r.requests} | {r.mean_batch:.1f} | {r.slices} | {r.seconds:.2f} | "
             f"{r.rate:.0f} | {r.rate / base:.1f} |" for r in results]
    return rows


def best_predictor(results: list[Result]) -> Result:
    return max((r for r in results if r.path.startswith("BatchingPredictor")),
               key=lambda r: r.rate)


def best_ratio(results: list[Result]) -> float:
    """Best BatchingPredictor slices/s over the batch-1 loop's (``results[0]``)."""
    return best_predictor(results).rate / results[0].rate


def summary_row(case: Case, prec: str, results: list[Result]) -> str:
    base = results[0].rate
    best = best_predictor(results)
    upper = [r for r in results if r.path.startswith("plain")]
    bound = f"{max(r.rate for r in upper) / base:.1f}x" if upper else "n/a"
    ratio = best_ratio(results)
    met = "yes" if ratio >= GOAL else "no"
    return (f"| {case.name} | {tuple(case.shape)} | {prec} | {base:.0f} | {best.rate:.0f} "
            f"(max_batch {best.path.rsplit(' ', 1)[-1]}) | **{ratio:.1f}x** | {bound} | {met} |")


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--analyzers", default=",".join(ANALYZERS),
                   help=f"comma-separated subset of {','.join(ANALYZERS)}")
    p.add_argument("--seconds", type=float, help="timed window per path (default 2; quick 0.5)")
    p.add_argument("--warmup", type=float,
                   help="untimed window before each path (default 0.3; quick 0: one call)")
    p.add_argument("--max-batch", help="BatchingPredictor max_batch values (default 32,128)")
    p.add_argument("--jobs", type=int, default=0,
                   help="concurrent job threads; 0: enough to fill two batches")
    p.add_argument("--atrium-size", type=int, default=320, help="atrium slice side (pixels)")
    p.add_argument("--atrium-slices", type=int, help="slices per atrium volume (default 110)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="float16 autocast on CUDA, as inference.amp (default on)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC layout on CUDA for every path, as inference.channels_last "
                        "(default on)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain batched forward")
    p.add_argument("--quick", action="store_true", help="short windows, small batches (CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse()
    command = shlex.join(["python", "tests/bench/bench_batching.py", *sys.argv[1:]])
    names = [n.strip() for n in args.analyzers.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYZERS]
    if unknown:
        raise SystemExit(f"unknown analyzer(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(ANALYZERS)}")
    batches = [int(b) for b in str(args.max_batch).split(",")]
    device = select_device(args.device)
    if device.type == "cuda":  # as LocalRuntime does, for every path alike
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    started = time.perf_counter()
    sections: list[str] = []
    summary = ["| analyzer | input | precision | batch-1 slices/s | best BatchingPredictor "
               "slices/s | speed-up | plain forward (upper bound) | >= 10x |",
               "|---|---|---|---|---|---|---|---|"]
    failed = 0
    verdicts: dict[str, list[str]] = {"met": [], "not met": []}
    for name in names:
        try:
            case = load_case(name, args.atrium_size, args.atrium_slices)
            prec = precision(case, device, args.amp, args.channels_last)
            results = run_case(case, device, args, batches)
        except Exception:
            failed += 1
            traceback.print_exc()
            summary.append(f"| {name} | failed: see the run's stderr | | | | | | |")
            continue
        title = (f"### {name} ({case.what}; {case.bundle.name}/{case.bundle.version}), "
                 f"input {tuple(case.shape)}, {prec}")
        sections.append("\n".join([title, "", *case_table(results)]))
        summary.append(summary_row(case, prec, results))
        verdicts["met" if best_ratio(results) >= GOAL else "not met"].append(name)
        print("\n".join(["", title, "", *case_table(results)]), flush=True)
    total = time.perf_counter() - started
    note = (f"Device {device} ({gpu}); each path timed for {args.seconds:g} s after "
            f"{args.warmup:g} s of warm-up; BatchingPredictor max_wait_ms "
            f"{InferenceSettings().max_wait_ms:g}; "
            f"layout as the predictor's on every path of a net (NHWC where the precision "
            f"column says so, else NCHW; --no-channels-last: NCHW for all); random inputs "
            f"of the model input shape. "
            f"Speed-up = best BatchingPredictor slices/s over the batch-1 loop's; issue 10's "
            f"goal is {GOAL:g}x: met by {', '.join(verdicts['met']) or 'none'}; not met by "
            f"{', '.join(verdicts['not met']) or 'none'}. Whole run {total:.0f} s.")
    print("\n" + "\n".join(summary))
    print(note)
    if args.out:
        machine_line = (f"{gpu}; {cpu_model()}, {torch.get_num_threads()} torch threads, "
                        f"torch {torch.__version__}")
        write_section(args.out, f"## Batching per analyzer ({device.type})",
                      header(command, machine_line) + "\n\n" + "\n".join(summary)
                      + f"\n\n{note}\n\n" + "\n\n".join(sections))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
