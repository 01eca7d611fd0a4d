"""Memory per study size: peak RSS of analysis and of ingest as the study grows.

Why this exists
    A site sends whatever its scanners produce: a 600-slice whole-body PET, three
    stacked HR-pQCT scans, a 2.5k x 2k radiograph. qcd must say up front how much
    memory one study costs, and that cost must grow with the study's pixels (analysis)
    or not at all (ingest, which streams every instance to the spool).

What it measures
    1. Analysis. For each analyzer and two or three series sizes, ``qcd analyze PATH
       --json`` (the workers' own code path, on the CPU) runs in a fresh subprocess,
       which writes its own peak RSS (VmHWM) as it exits; ``ru_maxrss`` from ``wait4``
       would not do: Linux carries the parent's RSS at fork over the exec into it. The
       fixed cost is the peak RSS of a subprocess that imports what ``qcd analyze``
       imports (qcd, torch, the analyzer registry), loads the same bundle and builds its
       network. Increment = peak - fixed cost; the peer is the series' decoded pixel
       data as float32 (rows x columns x slices x 4 bytes), so increment / decoded = how
       many float32 copies of the volume qcd holds at its peak. Marginal copies =
       least-squares slope of peak RSS over decoded size across the sizes: the per-byte
       cost without the fixed start-up of the first inference. The full run measures
       the largest atrium series again with ``[inference] max_batch = 1``, which shows
       what the U-Net's batch activations weigh.
    2. Ingest. A fresh ``qcd serve`` (free ports, temp spool and SQLite database,
       quiet period 2 s) receives one CT series of N small instances (64 x 64, 16 bit;
       routed to no analyzer, so no model is loaded) over one association (dcmtk
       ``storescu`` where installed, else a pynetdicom SCU). Its RSS is read just before
       the push (idle), its peak during the push and the series' completion (VmHWM,
       reset before the push through /proc/PID/clear_refs, and 20 Hz VmRSS polling),
       and its RSS after the series was completed (held). The peer is dcmtk
       ``storescp -od DIR`` (no fork) receiving the same files, measured the same way.
       Growth per 1000 instances = least-squares slope of (peak - idle) over N; the
       ratio beside it is that growth over the bytes of 1000 instances received.

How to run
    python tests/bench/bench_memory.py [--quick] [--repeats 1] [--out docs/BENCHMARKS.md]

    About 5 minutes on 2 shared cores (``--quick``: about 3). With ``--out`` it writes
    (or replaces) the section "## Memory per study size" of that file. RSS counts the
    shared libraries too; they are in the fixed cost (~300 MiB, mostly torch), which is
    why increments, not totals, are compared.

This is a script, not a pytest test: nothing here is named ``test_*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from tests.bench.report import header, machine, write_section  # noqa: E402
from tests.conftest import free_port  # noqa: E402

MIB = 1024 * 1024
Writer = Callable[[Path], tuple[list[Path], str]]
"""Writes one series into a folder; returns its files and a description."""
HEADING = "## Memory per study size"

# The child's peak RSS (KiB) of its own address space, written to argv[1] as it exits.
HWM_AT_EXIT = """
import atexit, sys
from pathlib import Path
def _hwm(out=Path(sys.argv.pop(1))):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out.write_text(line.split()[1])
atexit.register(_hwm)
"""
# `qcd analyze ...`: the console script's own entry point.
ANALYZE = HWM_AT_EXIT + """
from qcd.cli import main
sys.exit(main(sys.argv[1:]))
"""
# What `qcd analyze` imports and loads before it reads a series: the fixed cost.
BASELINE = HWM_AT_EXIT + """
import importlib
import torch
import qcd.analyze, qcd.cli
from qcd.analyzers.registry import REGISTRY
from qcd.bundles import models_root
from qcd.config import load_settings
from qcd.workers.run import BundleCache
from qcd.workers.runtime import LocalRuntime
settings = load_settings(None)
name = sys.argv[1]
bundle = BundleCache(models_root(settings.workers.models_path)).get(REGISTRY[name].bundle)
runtime = LocalRuntime(settings.inference)
model = importlib.import_module(f"qcd.analyzers.{name}.analyzer").load_model(bundle)
runtime.close()
"""


class BenchError(RuntimeError):
    """A run did not do what the benchmark needs (failed analysis, refused instance)."""


# ---------------------------------------------------------------------------- series

@dataclass(frozen=True)
class Series:
    analyzer: str
    path: Path
    """What ``qcd analyze`` is given: a folder or one file."""
    what: str
    decoded_bytes: int
    """Pixel data decoded to float32: slices x rows x columns x 4."""
    max_batch: int | None = None
    """``[inference] max_batch`` for this run; None = the default."""

    @property
    def label(self) -> str:
        return self.analyzer + (f" (max_batch {self.max_batch})" if self.max_batch else "")


def _decoded_bytes(files: Sequence[Path]) -> int:
    total = 0
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        total += int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * 4
    return total


def earl_series(out: Path, slices: int) -> tuple[list[Path], str]:
    """bench_latency's simulated EARL1 PET, mirrored along z to reach ``slices``.

    The simulator renders 130 x 80 voxels of 2 mm around the body; the slices are
    padded with background to a 256 x 256 matrix (512 mm field), as a scanner writes them.
    """
    from qcd.synth import write_pet_series
    from training.earl.simulate import simulate_case

    volume, params, label, _ = simulate_case(np.random.default_rng(4242), "EARL1")
    while volume.shape[0] < slices:
        volume = np.concatenate([volume, volume[::-1]])
    volume = volume[:slices]
    ny, nx = volume.shape[1:]
    pad = ((0, 0), ((256 - ny) // 2, 256 - ny - (256 - ny) // 2),
           ((256 - nx) // 2, 256 - nx - (256 - nx) // 2))
    volume = np.pad(volume, pad)
    vz, vy, vx = (float(v) for v in params.voxel_mm)
    files = write_pet_series(volume, (vz, vy, vx), out)
    return files, f"{slices} x 256x256 PET ({label})"


def motion_series(out: Path, slices: int) -> tuple[list[Path], str]:
    from training.motion.demo import write_demo_series

    files, _ = write_demo_series(out, n_slices=slices)
    return list(files), f"{slices} x 384x384 HR-pQCT"


def atrium_series(out: Path, slices: int, size: int) -> tuple[list[Path], str]:
    from training.atrium.demo import write_case
    from training.atrium.simulate import SimConfig

    case = write_case(out, 7, config=SimConfig(nz=slices, sizes=(size,)))
    return case.paths, f"{slices} x {size}x{size} cardiac MR"


def chest_series(out: Path, rows: int, cols: int) -> tuple[list[Path], str]:
    from training.chest.demo import write_study

    paths = write_study(out, ["Pneumothorax"], 7, shape=(rows, cols))
    return [paths["pa"]], f"one {rows}x{cols} PA radiograph"


def plan(quick: bool) -> list[tuple[str, Writer, int | None]]:
    """(analyzer, writer, max_batch) for every run, smallest series first per analyzer.

    The full plan runs the largest atrium series once more with ``max_batch`` 1: the
    U-Net's activations for one batch of slices, not the volume, set its peak.
    """
    earl = (100, 300) if quick else (100, 300, 600)
    motion = (84, 168) if quick else (84, 168, 336)
    atrium = ((64, 128), (96, 160)) if quick else ((64, 128), (128, 128), (128, 224))
    chest = ((320, 264), (1280, 1056)) if quick else ((320, 264), (2560, 2112))
    out: list[tuple[str, Writer, int | None]] = []
    out += [("earl", partial(earl_series, slices=n), None) for n in earl]
    out += [("motion", partial(motion_series, slices=n), None) for n in motion]
    out += [("atrium", partial(atrium_series, slices=n, size=s), None) for n, s in atrium]
    if not quick:
        n, s = atrium[-1]
        out.append(("atrium", partial(atrium_series, slices=n, size=s), 1))
    out += [("chest", partial(chest_series, rows=r, cols=c), None) for r, c in chest]
    return out


# -------------------------------------------------------------------------- analysis

def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QCD_")}
    env.update({"QCD_INFERENCE__DEVICE": "cpu", "QCD_LOGGING__LEVEL": "WARNING",
                "QCD_WORKERS__MODELS_PATH": str(ROOT / "models"), **extra})
    return env


def peak_rss_of(code: str, args: Sequence[str], log: Path,
                env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run ``python -c code HWMFILE args``; (its peak RSS MiB, wall s, exit code).

    Output goes to ``log``. The peak is the VmHWM the child wrote at exit (see
    ``HWM_AT_EXIT``).
    """
    hwm = log.with_suffix(".hwm")
    start = time.monotonic()
    with log.open("wb") as out:
        rc = subprocess.run([sys.executable, "-c", code, str(hwm), *args],
                            env=_clean_env(**(env or {})), cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    if not hwm.exists():
        raise BenchError(f"no peak RSS written (exit {rc}): {log.read_text()[-2000:]}")
    return int(hwm.read_text()) / 1024, wall, rc


@dataclass
class AnalysisRow:
    series: Series
    peak_mib: float
    baseline_mib: float
    wall_s: float

    @property
    def increment_mib(self) -> float:
        return self.peak_mib - self.baseline_mib

    @property
    def copies(self) -> float:
        return self.increment_mib * MIB / self.series.decoded_bytes


def analyse(series: Series, work: Path, repeats: int) -> tuple[float, float]:
    """Median peak RSS (MiB) and median wall time of ``qcd analyze`` on ``series``."""
    peaks, walls = [], []
    for i in range(repeats):
        log = work / f"analyze-{series.path.name}-{series.max_batch}-{i}.json"
        extra = {"QCD_INFERENCE__MAX_BATCH": str(series.max_batch)} if series.max_batch else {}
        peak, wall, rc = peak_rss_of(ANALYZE, ["analyze", str(series.path), "--json"], log, extra)
        try:
            results = json.loads(log.read_text())["results"]
        except (ValueError, KeyError):
            results = []
        done = [r for r in results if r["analyzer"] == series.analyzer and r["status"] == "done"]
        if rc != 0 or not done:
            raise BenchError(f"qcd analyze {series.path} (exit {rc}): {log.read_text()[-2000:]}")
        peaks.append(peak)
        walls.append(wall)
    return statistics.median(peaks), statistics.median(walls)


def baseline(analyzer: str, work: Path, repeats: int) -> float:
    peaks = []
    for i in range(repeats):
        log = work / f"baseline-{analyzer}-{i}.log"
        peak, _, rc = peak_rss_of(BASELINE, [analyzer], log)
        if rc != 0:
            raise BenchError(f"baseline for {analyzer} failed: {log.read_text()[-2000:]}")
        peaks.append(peak)
    return statistics.median(peaks)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def analysis_tables(rows: list[AnalysisRow]) -> str:
    lines = ["| analyzer | series | decoded float32 MiB | fixed cost MiB (import + bundle) "
             "| peak RSS MiB | increment MiB | increment / decoded (copies) | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.series.label} | {r.series.what} | "
                     f"{r.series.decoded_bytes / MIB:.1f} | {r.baseline_mib:.0f} | "
                     f"{r.peak_mib:.0f} | {r.increment_mib:.0f} | {r.copies:.1f} | "
                     f"{r.wall_s:.1f} |")
    lines += ["", "| analyzer | decoded MiB, smallest -> largest | increment MiB, smallest -> "
              "largest | marginal copies (slope of peak over decoded) |", "|---|---|---|---|"]
    for name in dict.fromkeys(r.series.label for r in rows):
        mine = [r for r in rows if r.series.label == name]
        if len(mine) < 2:
            continue
        marginal = slope([r.series.decoded_bytes / MIB for r in mine],
                         [r.peak_mib for r in mine])
        lines.append(f"| {name} | {mine[0].series.decoded_bytes / MIB:.1f} -> "
                     f"{mine[-1].series.decoded_bytes / MIB:.1f} | {mine[0].increment_mib:.0f} "
                     f"-> {mine[-1].increment_mib:.0f} | **{marginal:.1f}** |")
    for r in rows:
        same = [d for d in rows if d.series.max_batch is None and d.series.what == r.series.what
                and d.series.analyzer == r.series.analyzer]
        if r.series.max_batch and same:
            lines += ["", f"{r.series.analyzer}, {r.series.what}: increment "
                      f"{same[0].increment_mib:.0f} MiB at the default max_batch, "
                      f"{r.increment_mib:.0f} MiB at max_batch {r.series.max_batch} "
                      f"({same[0].increment_mib / r.increment_mib:.1f}x): the activations of one "
                      f"batch of slices, not the volume, set this analyzer's peak."]
    top = max(rows, key=lambda r: r.increment_mib)
    lines += ["", f"Largest per-study increment: {top.increment_mib:.0f} MiB "
              f"({top.series.label}, {top.series.what}; peak RSS {top.peak_mib:.0f} MiB)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- ingest

def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


class RssWatch:
    """Peak RSS of one process from now on: VmHWM after a reset, and 20 Hz polling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle_mib = _status_kib(pid, "VmRSS") / 1024
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.polled_mib = self.idle_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.polled_mib = max(self.polled_mib, _status_kib(self.pid, "VmRSS") / 1024)
            except (OSError, BenchError):
                return

    def stop(self) -> tuple[float, float]:
        """(peak MiB since the watch began, RSS MiB now)."""
        self._stop.set()
        self._thread.join()
        now = _status_kib(self.pid, "VmRSS") / 1024
        peak = max(self.polled_mib, now)
        if self.hwm_reset:
            peak = max(peak, _status_kib(self.pid, "VmHWM") / 1024)
        return peak, now


def _echo(port: int, aec: str) -> bool:
    if shutil.which("echoscu"):
        return subprocess.run(["echoscu", "-aec", aec, "-aet", "BENCH", "127.0.0.1", str(port)],
                              capture_output=True, timeout=30).returncode == 0
    from tests.integration.dcmtk import pynetdicom_echo
    return pynetdicom_echo(port, aec=aec)


def _push(files: list[Path], port: int, aec: str) -> None:
    if shutil.which("storescu"):
        from tests.integration.dcmtk import storescu
        result = storescu(files, port, aec=aec, aet="BENCH")
        if result.failed or len(result.acknowledged) != len(files):
            raise BenchError(f"{aec}: {len(result.acknowledged)}/{len(files)} acknowledged, "
                             f"failed {dict(list(result.failed.items())[:3])}")
        return
    from qcd.errors import ExportError
    from qcd.scu import send_files  # qcd's own Storage SCU (`qcd send`)
    try:
        results = send_files(files, "127.0.0.1", port, called_ae=aec, calling_ae="BENCH")
    except ExportError as exc:
        raise BenchError(f"{aec} refused the association: {exc}") from None
    for r in results:
        if r.status != 0:
            raise BenchError(f"{aec}: C-STORE of {r.path.name} failed: {r.status} {r.comment}")


@dataclass
class IngestRow:
    receiver: str
    n: int
    idle_mib: float
    peak_mib: float
    held_mib: float
    push_s: float

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.idle_mib


def ingest_once(receiver: str, files: list[Path], work: Path, settle_s: float) -> IngestRow:
    port = free_port()
    work.mkdir(parents=True)
    if receiver == "qcd serve":
        aec = "QCD"
        env = _clean_env(**{
            "QCD_INGEST__PORT": str(port), "QCD_INGEST__HOST": "127.0.0.1",
            "QCD_HTTP__PORT": "0", "QCD_SPOOL__PATH": str(work / "spool"),
            "QCD_SPOOL__MIN_FREE_BYTES": "0", "QCD_DATABASE__URL": f"sqlite:///{work}/qcd.db",
            "QCD_OUTPUTS__PATH": str(work / "out"), "QCD_ASSEMBLY__QUIET_SECONDS": "2",
            "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.5"})
        cmd = [sys.executable, "-m", "qcd.cli", "serve"]
    else:
        aec = "STORESCP"
        (work / "out").mkdir()
        env = {**os.environ, "TCP_NODELAY": "1"}
        cmd = [shutil.which("storescp") or "storescp", "-aet", aec, "-od", str(work / "out"),
               str(port)]
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while not _echo(port, aec):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{receiver} did not start: {(work / 'server.log').read_text()}")
            time.sleep(0.2)
        time.sleep(1.0)  # let start-up work (first sweep, thread pools) finish
        watch = RssWatch(proc.pid)
        start = time.monotonic()
        _push(files, port, aec)
        push_s = time.monotonic() - start
        time.sleep(settle_s)  # quiet period + sweep: the series is completed in the window
        peak, held = watch.stop()
        return IngestRow(receiver, len(files), watch.idle_mib, peak, held, push_s)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def ingest_tables(rows: list[IngestRow], bytes_per_instance: float) -> str:
    lines = ["| receiver | instances | push s | idle RSS MiB | peak RSS MiB | peak - idle MiB "
             "| RSS after MiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.receiver} | {r.n} | {r.push_s:.1f} | {r.idle_mib:.1f} | "
                     f"{r.peak_mib:.1f} | {r.growth_mib:+.1f} | {r.held_mib:.1f} |")
    received_mib = bytes_per_instance * 1000 / MIB
    lines += ["", f"| receiver | peak growth per 1000 instances MiB | held growth per 1000 "
              f"instances MiB | peak growth / bytes received ({received_mib:.1f} MiB per 1000) |",
              "|---|---|---|---|"]
    per: dict[str, float] = {}
    for name in dict.fromkeys(r.receiver for r in rows):
        mine = [r for r in rows if r.receiver == name]
        ns = [r.n / 1000 for r in mine]
        per[name] = slope(ns, [r.growth_mib for r in mine])
        held = slope(ns, [r.held_mib - r.idle_mib for r in mine])
        lines.append(f"| {name} | {per[name]:+.2f} | {held:+.2f} | "
                     f"**{per[name] / received_mib:.3f}** |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main

ANALYSIS_NOTE = (
    "Peak RSS = VmHWM of the `qcd analyze PATH --json` child, read by itself as it "
    "exits (MiB, shared libraries included; not `ru_maxrss`, which on Linux also carries "
    "the parent's RSS at fork). Fixed cost = the same for a process that only imports "
    "qcd, torch and the analyzer registry, loads the bundle and builds its network. "
    "Decoded = slices x rows x columns x 4 bytes (float32), the peer of every increment: "
    "*copies* is the increment over it. Marginal copies = least-squares slope of peak RSS "
    "over decoded MiB across the sizes, which leaves out the first inference's fixed "
    "workspace.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller series and studies")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per measurement, median reported (peak RSS repeats to ~1 MiB)")
    p.add_argument("--skip-ingest", action="store_true", help="measure analysis only")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    repeats = args.repeats
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="qcd-memory-"))
    try:
        rows: list[AnalysisRow] = []
        baselines: dict[str, float] = {}
        for i, (name, write, max_batch) in enumerate(plan(args.quick)):
            files, what = write(scratch / f"series{i}")
            target = files[0] if len(files) == 1 else files[0].parent
            series = Series(name, target, what, _decoded_bytes(files), max_batch)
            if name not in baselines:
                baselines[name] = baseline(name, scratch, repeats)
            peak, wall = analyse(series, scratch, repeats)
            rows.append(AnalysisRow(series, peak, baselines[name], wall))
            r = rows[-1]
            print(f"{series.label:<18} {what:<34} decoded {series.decoded_bytes / MIB:6.1f} "
                  f"MiB peak {peak:6.0f} MiB  fixed {baselines[name]:4.0f}  "
                  f"+{r.increment_mib:5.0f} MiB = {r.copies:5.1f} copies  {wall:.1f} s", flush=True)
            shutil.rmtree(scratch / f"series{i}", ignore_errors=True)
        analysis = analysis_tables(rows)
        print(analysis)

        ingest = ""
        if not args.skip_ingest:
            from qcd.synth import SeriesSpec, make_study

            # dcmtk reads TCP_NODELAY from its environment; without it storescu stalls
            # ~40 ms per small instance on delayed ACKs (see bench_ingest.py)
            os.environ["TCP_NODELAY"] = "1"
            sizes = (100, 500) if args.quick else (100, 500, 2000)
            receivers = ["qcd serve"] + (["dcmtk storescp"] if shutil.which("storescp") else [])
            irows: list[IngestRow] = []
            per_instance: list[float] = []
            for n in sizes:
                files = make_study(scratch / f"ingest{n}",
                                   (SeriesSpec("CT", n, "CT memory bench", "CHEST"),), size=64,
                                   seed=n)
                per_instance.append(sum(f.stat().st_size for f in files) / n)
                for receiver in receivers:
                    irows.append(ingest_once(receiver, files, scratch / f"run-{receiver[:4]}{n}",
                                             settle_s=4.0))
                    ir = irows[-1]
                    print(f"{receiver:<15} {n:5d} instances in {ir.push_s:5.1f} s: idle "
                          f"{ir.idle_mib:6.1f}  peak {ir.peak_mib:6.1f}  after "
                          f"{ir.held_mib:6.1f} MiB", flush=True)
            ingest = ingest_tables(irows, statistics.fmean(per_instance))
            sender = "dcmtk storescu" if shutil.which("storescu") else "a pynetdicom SCU"
            ingest += (f"\n\nOne CT series of N instances of 64x64 16-bit "
                       f"({statistics.fmean(per_instance) / 1024:.1f} KiB each, Explicit VR LE, "
                       f"`qcd.synth.make_study`), one association from {sender} "
                       f"(`TCP_NODELAY=1` for the dcmtk tools); a fresh "
                       f"receiver per N. Peak = VmHWM (reset just before the push) over the "
                       f"push and 4 s after it (quiet period 2 s, so qcd completes the series "
                       f"inside the window; CT from this manufacturer routes to no analyzer).")
            print(ingest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print(f"whole run {elapsed:.0f} s")
    if args.out:
        import torch
        facts = [f"Python {sys.version.split()[0]}, torch {torch.__version__} "
                 f"({torch.get_num_threads()} threads, CPU), pydicom {pydicom.__version__}",
                 f"Runs per measurement: {repeats} (median); whole run {elapsed:.0f} s"]
        cmd = "python tests/bench/bench_memory.py" + (" --quick" if args.quick else "") + \
              f" --out {args.out}"
        body = (header(cmd, machine(), *facts) + "\n\n### Analysis (`qcd analyze`, CPU)\n\n"
                + analysis + "\n\n" + ANALYSIS_NOTE)
        if ingest:
            body += "\n\n### Ingest (`qcd serve`)\n\n" + ingest
        write_section(args.out, HEADING, body)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
