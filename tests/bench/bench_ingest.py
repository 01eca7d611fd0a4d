"""Ingest throughput benchmark: qcd's Storage SCP against dcmtk storescp and Orthanc.

Why this exists
    qcd's DICOM listener is written in Python (pynetdicom), so its ingest rate is the
    number most likely to disappoint a site. This script puts a figure on it next to
    two C++ receivers on the same machine, the same data and the same sender, so a
    change to the ingest path can be judged against a stable reference.

What it measures
    One generated series of N (default 500) 512x512 16-bit CT slices, uncompressed
    Explicit VR Little Endian (``qcd.synth.make_study``), is pushed with dcmtk
    ``storescu`` to three receivers, with 1 and with 4 concurrent associations
    (4 = the file list cut into 4 equal parts, 4 ``storescu`` processes started at
    once; wall time from the start of the first to the end of the last):

    * ``qcd serve`` (subprocess; fresh spool and SQLite database for every run), once per
      ``--qcd-processes`` value (``ingest.processes``: receiving processes on the port),
      with ``--qcd-no-fsync`` also without fsync (like-for-like with storescp), and
      with ``--qcd-polling`` also with pynetdicom's own polling association threads
      (``ingest.reactor = polling``; the default is ``event``, qcd.ingest.reactor),
    * dcmtk ``storescp -od DIR PORT`` (``--fork`` for 4 associations when it works,
      otherwise plain storescp, which serves the associations one after another),
    * Orthanc (minimal config in a temp dir, no plugins).

    Every receiver is started fresh for every run and runs with ``TCP_NODELAY=1`` in
    its environment (dcmtk and Orthanc otherwise stall ~40 ms per instance on
    delayed ACKs, see RECIPES.md pitfall 1; qcd sets TCP_NODELAY itself). After each
    push the receiver must hold all N instances, or the script fails. Repeats are
    interleaved (repeat 1 of every case, then repeat 2, ...) so a burst of load on a
    shared machine does not hit one receiver only.

How to run
    python tests/bench/bench_ingest.py [--n 500] [--size 512] [--repeats 3]
                                       [--qcd-processes 1,2] [--qcd-no-fsync]
                                       [--qcd-polling]
                                       [--sender-nodelay] [--out docs/BENCHMARKS.md]

    Prints a Markdown table; with ``--out`` it writes (or replaces) the section
    "## Ingest throughput" of that file. Needs dcmtk (storescu, storescp, echoscu)
    and Orthanc on PATH (or /usr/sbin). Takes a few minutes for the defaults.

This is a script, not a pytest test: nothing here is named ``test_*``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qcd import __version__ as QCD_VERSION
from qcd.synth import SeriesSpec, make_study

SECTION = "## Ingest throughput"
ASSOCIATION_COUNTS = (1, 4)
MB = 1_000_000
"""MB/s uses decimal megabytes of Part 10 file bytes as read by storescu."""
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
PUSH_TIMEOUT = 600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A receiver failed to start, lost instances, or a push failed."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_tool(name: str) -> str:
    """Absolute path of an executable on PATH or in /usr/sbin; fail loudly if absent."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BenchError(f"{name} not found on PATH or in /usr/sbin")
    return found


def find_qcd() -> str:
    """The ``qcd`` console script of the interpreter running this benchmark."""
    beside = Path(sys.executable).parent / "qcd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return find_tool("qcd")


def receiver_env() -> dict[str, str]:
    """Environment for a receiving process: Nagle off for dcmtk-based servers."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def sender_env(nodelay: bool = False) -> dict[str, str]:
    """Environment for storescu/echoscu: Debian's default (Nagle on) unless ``nodelay``."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def echo_ok(aec: str, port: int) -> bool:
    """Whether a C-ECHO to 127.0.0.1:port with called AE ``aec`` succeeds."""
    result = subprocess.run(
        [find_tool("echoscu"), "-to", "5", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sender_env(), check=False,
    )
    return result.returncode == 0


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of a live process and its reaped children, from /proc; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the ")": state is field 3, utime..cstime are fields 14..17 (1-based)
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float | None:
    """:func:`cpu_seconds` of a process plus its live descendants (qcd's receivers)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    try:
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
    except OSError:
        children = []
    return own + sum(tree_cpu_seconds(c) or 0.0 for c in children)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def split_even(items: Sequence[Path], parts: int) -> list[list[Path]]:
    """Cut ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    chunks: list[list[Path]] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return [c for c in chunks if c]


def push(files: Sequence[Path], aec: str, port: int, associations: int, log_dir: Path,
         nodelay: bool) -> float:
    """Send ``files`` with ``associations`` storescu processes started at once.

    Returns the wall seconds from the start of the first process to the end of the
    last. Raises BenchError if any storescu exits non-zero.
    """
    storescu = find_tool("storescu")
    env = sender_env(nodelay)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    started = time.perf_counter()
    for i, chunk in enumerate(split_even(files, associations)):
        log = log_dir / f"storescu-{i}.log"
        with log.open("wb") as out:
            cmd = [storescu, "-aec", aec, "-aet", "BENCH", "127.0.0.1", str(port),
                   *map(str, chunk)]
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env),
                          log))
    failed: list[str] = []
    for proc, log in procs:
        try:
            rc = proc.wait(timeout=PUSH_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        if rc != 0:
            failed.append(f"storescu exited {rc}:\n{tail(log)}")
    elapsed = time.perf_counter() - started
    if failed:
        raise BenchError("\n".join(failed))
    return elapsed


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal a process and wait for it; SIGKILL after STOP_TIMEOUT. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(
                f"pid {proc.pid} ignored signal {sig} for {STOP_TIMEOUT:.0f} s") from None
    return int(proc.returncode)


# --------------------------------------------------------------------------- receivers


class Receiver(ABC):
    """One receiving server, started fresh in its own scratch directory."""

    ae_title: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that starts the server."""

    @abstractmethod
    def env(self) -> dict[str, str]:
        """The server's environment."""

    @abstractmethod
    def count(self) -> int:
        """How many instances the server holds now."""

    def prepare(self) -> None:
        """Write config files and directories before start (default: just the workdir)."""
        self.workdir.mkdir(parents=True, exist_ok=True)

    def ready(self) -> bool:
        """Whether the server accepts work (default: C-ECHO succeeds)."""
        return echo_ok(self.ae_title, self.port)

    def start(self) -> None:
        """Start the server and wait until it is ready; fail loudly on early exit."""
        self.prepare()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env(), cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.command()[0]} exited {self.proc.returncode} at start:\n"
                                 f"{tail(self.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.command()[0]} not ready after {START_TIMEOUT:.0f} s:\n"
                                 f"{tail(self.log)}")
            time.sleep(0.1)

    def cpu(self) -> float | None:
        """CPU seconds used so far by the server process (None if unknown)."""
        return cpu_seconds(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        """Stop the server and wait until the process is gone."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """Last resort after an error: kill the server's process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class QcdReceiver(Receiver):
    """``qcd serve`` with a fresh spool and SQLite database.

    ``processes`` is ``ingest.processes``; ``fsync`` false is ``spool.fsync = false``,
    a test-only setting that makes qcd as undurable as storescp (a like-for-like row).
    Ready means ``/readyz`` answers 200: every receiving process listens.
    """

    ae_title = "QCD"

    def __init__(self, workdir: Path, processes: int = 1, fsync: bool = True,
                 reactor: str = "event") -> None:
        super().__init__(workdir)
        self.spool = workdir / "spool"
        self.processes = processes
        self.fsync = fsync
        self.reactor = reactor
        self.http_port = free_port()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz",
                                        timeout=2) as rsp:
                return bool(rsp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def cpu(self) -> float | None:
        return tree_cpu_seconds(self.proc.pid) if self.proc is not None else None

    def command(self) -> list[str]:
        return [find_qcd(), "serve"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QCD_")}
        env.pop("TCP_NODELAY", None)  # qcd sets TCP_NODELAY on its sockets itself
        env.update({
            "QCD_INGEST__PORT": str(self.port),
            "QCD_HTTP__HOST": "127.0.0.1",
            "QCD_HTTP__PORT": str(self.http_port),
            "QCD_INGEST__PROCESSES": str(self.processes),
            "QCD_SPOOL__FSYNC": "true" if self.fsync else "false",
            "QCD_INGEST__REACTOR": self.reactor,
            "QCD_SPOOL__PATH": str(self.spool),
            "QCD_DATABASE__URL": f"sqlite:///{self.workdir / 'qcd.db'}",
            "QCD_ASSEMBLY__QUIET_SECONDS": "3600",
            "QCD_SPOOL__MIN_FREE_BYTES": "0",
            "QCD_LOGGING__LEVEL": "WARNING",
        })
        return env

    def count(self) -> int:
        return sum(1 for p in self.spool.rglob("*.dcm")
                   if ".tmp" not in p.relative_to(self.spool).parts)

    def stop(self) -> None:
        if self.proc is not None:
            rc = stop_process(self.proc)
            self.proc = None
            if rc != 0:
                raise BenchError(f"qcd serve exited {rc} after SIGTERM:\n{tail(self.log)}")


class StorescpReceiver(Receiver):
    """dcmtk storescp writing every instance to one directory (no fsync)."""

    ae_title = "STORESCP"

    def __init__(self, workdir: Path, fork: bool) -> None:
        super().__init__(workdir)
        self.fork = fork
        self.out = workdir / "out"

    def prepare(self) -> None:
        self.out.mkdir()

    def command(self) -> list[str]:
        fork = ["--fork"] if self.fork else []
        return [find_tool("storescp"), *fork, "-aet", self.ae_title, "-od", str(self.out),
                str(self.port)]

    def env(self) -> dict[str, str]:
        return receiver_env()

    def count(self) -> int:
        return sum(1 for p in self.out.iterdir() if p.is_file())

    def cpu(self) -> float | None:
        # forked children are only counted once storescp has reaped them
        return None if self.fork else super().cpu()


class OrthancReceiver(Receiver):
    """Orthanc with a minimal config: SQLite index and storage in the scratch dir."""

    ae_title = "ORTHANC"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        self.config = workdir / "orthanc.json"

    def prepare(self) -> None:
        config = {
            "Name": "qcd-bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
        }
        self.config.write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [find_tool("Orthanc"), str(self.config)]

    def env(self) -> dict[str, str]:
        return receiver_env()

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self._url("/system"), timeout=2) as rsp:
                if rsp.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        return echo_ok(self.ae_title, self.port)  # the DICOM side must answer too

    def count(self) -> int:
        with urllib.request.urlopen(self._url("/statistics"), timeout=30) as rsp:
            return int(json.load(rsp)["CountInstances"])

    def stop(self) -> None:
        if self.proc is None:
            return
        request = urllib.request.Request(self._url("/tools/shutdown"), data=b"", method="POST")
        with contextlib.suppress(urllib.error.URLError, OSError):  # SIGTERM below instead
            urllib.request.urlopen(request, timeout=10).close()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        self.proc = None


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Case:
    """One table row: a receiver kind and an association count."""

    receiver: str
    """'qcd', 'storescp' or 'orthanc'."""
    associations: int
    fork: bool = False
    """storescp only: run with --fork."""
    processes: int = 1
    """qcd only: ``ingest.processes``."""
    fsync: bool = True
    """qcd only: ``spool.fsync``."""
    reactor: str = "event"
    """qcd only: ``ingest.reactor``."""

    @property
    def label(self) -> str:
        if self.receiver == "storescp":
            return "dcmtk storescp --fork" if self.fork else "dcmtk storescp"
        if self.receiver == "qcd":
            return "qcd serve" + (f", {self.processes} processes" if self.processes > 1 else "") \
                + ("" if self.fsync else ", fsync off") \
                + ("" if self.reactor == "event" else f", {self.reactor} reactors")
        return "Orthanc"

    def make(self, workdir: Path) -> Receiver:
        if self.receiver == "qcd":
            return QcdReceiver(workdir, self.processes, self.fsync, self.reactor)
        if self.receiver == "storescp":
            return StorescpReceiver(workdir, self.fork)
        return OrthancReceiver(workdir)


@dataclass
class Result:
    """All repeats of one case."""

    case: Case
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)


def run_once(case: Case, files: Sequence[Path], scratch: Path,
             sender_nodelay: bool) -> tuple[float, float | None]:
    """Fresh receiver, one timed push, count check, stop. Returns (wall s, server CPU s)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{case.receiver}-{case.associations}-", dir=scratch))
    receiver = case.make(workdir)
    try:
        receiver.start()
        os.sync()  # no dirty pages from earlier runs (storescp's) are flushed during this one
        cpu_before = receiver.cpu()
        wall = push(files, receiver.ae_title, receiver.port, case.associations, workdir,
                    sender_nodelay)
        cpu_after = receiver.cpu()
        got = receiver.count()
        if got != len(files):
            raise BenchError(f"{case.label} x{case.associations}: holds {got} of {len(files)} "
                             f"instances after the push:\n{tail(receiver.log)}")
        receiver.stop()
    except BaseException:
        receiver.kill()
        print(f"logs of the failed run kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return wall, cpu


def storescp_fork_works(files: Sequence[Path], scratch: Path) -> bool:
    """Probe: does ``storescp --fork`` take 4 parallel associations here?"""
    sample = list(files[:8])
    try:
        run_once(Case("storescp", 4, fork=True), sample, scratch, sender_nodelay=False)
    except BenchError as exc:
        print(f"storescp --fork probe failed, using plain storescp: {exc}", file=sys.stderr)
        return False
    return True


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    """Summary of one case."""

    case: Case
    n: int
    repeats: int
    wall_median: float
    wall_min: float
    inst_per_s: float
    mb_per_s: float
    cpu_median: float | None


def summarise(result: Result, n: int, total_bytes: int) -> Row:
    median = statistics.median(result.walls)
    return Row(
        case=result.case,
        n=n,
        repeats=len(result.walls),
        wall_median=median,
        wall_min=min(result.walls),
        inst_per_s=n / median,
        mb_per_s=total_bytes / MB / median,
        cpu_median=statistics.median(result.cpus) if result.cpus else None,
    )


def table(rows: Sequence[Row]) -> str:
    """The results and the qcd ratios as Markdown."""
    lines = [
        ("| receiver | assoc | n | repeats | wall median s | wall min s | inst/s (median) "
         "| MB/s (median) | server CPU s (median) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r.cpu_median:.2f}" if r.cpu_median is not None else "n/a"
        lines.append(f"| {r.case.label} | {r.case.associations} | {r.n} | {r.repeats} "
                     f"| {r.wall_median:.2f} | {r.wall_min:.2f} | {r.inst_per_s:.0f} "
                     f"| {r.mb_per_s:.1f} | {cpu} |")
    lines += ["", "| qcd | assoc | qcd / storescp throughput | qcd / Orthanc throughput |",
              "|---|---|---|---|"]
    peers = {(r.case.receiver, r.case.associations): r for r in rows
             if r.case.receiver != "qcd"}
    for qcd in (r for r in rows if r.case.receiver == "qcd"):
        assoc = qcd.case.associations
        ratios = [peers[(other, assoc)].wall_median / qcd.wall_median
                  for other in ("storescp", "orthanc")]
        lines.append(f"| {qcd.case.label} | {assoc} | {ratios[0]:.2f} | {ratios[1]:.2f} |")
    return "\n".join(lines)


def tool_version(cmd: Sequence[str]) -> str:
    """First meaningful line of a tool's --version output."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.strip():
            return line.strip().strip("$").strip()
    return "unknown"


def machine(label: str) -> str:
    """nproc, CPU model and RAM, prefixed with a human label."""
    nproc = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
            break
    return (f"{label}, {nproc} cores (`nproc` = {nproc}), CPU {model}, "
            f"RAM {mem_kib / 1024 / 1024:.1f} GiB")


def filesystem(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best, fstype = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and (resolved == parts[1] or resolved.startswith(
                parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return f"{fstype} (mounted on {best})"


@dataclass(frozen=True)
class Context:
    """What the report says about the run besides the numbers."""

    command: str
    started: dt.datetime
    machine: str
    size: int
    total_bytes: int
    scratch_fs: str
    sender_nodelay: bool
    load_start: str
    load_end: str


def section(rows: Sequence[Row], ctx: Context) -> str:
    """The "## Ingest throughput" section for docs/BENCHMARKS.md."""
    n = rows[0].n
    return "\n".join([
        SECTION,
        "",
        f"Command: `{ctx.command}`",
        "",
        f"- Date: {ctx.started.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- Machine: {ctx.machine}",
        (f"- Python {platform.python_version()}, qcd {QCD_VERSION}, "
         f"{tool_version([find_tool('storescp'), '--version'])}, "
         f"{tool_version([find_tool('Orthanc'), '--version'])}"),
        (f"- Data: {n} generated {ctx.size}x{ctx.size} 16-bit CT slices "
         f"(`qcd.synth.make_study`, uncompressed Explicit VR LE), "
         f"{ctx.total_bytes / MB:.1f} MB in all; scratch dirs on {ctx.scratch_fs}"),
        f"- Load average (1/5/15 min) at start: {ctx.load_start}; at end: {ctx.load_end}",
        "",
        "Sender: dcmtk `storescu -aec <AE> -aet BENCH 127.0.0.1 <port> <files>`, with the "
        "file list cut into 1 or 4 equal parts, one `storescu` per part, all started at once; "
        "wall time runs from the start of the first to the end of the last. Every receiver "
        "was started fresh (empty storage) for every run, and `sync` ran before each push so "
        "no run pays for an earlier run's dirty pages; the repeats were interleaved. "
        "dcmtk `storescp` and Orthanc ran with `TCP_NODELAY=1` in their environment (without "
        "it they stall ~40 ms per instance); qcd sets `TCP_NODELAY` on its own sockets. "
        "`--fork` lets storescp serve the 4 associations in parallel; without it they queue. "
        + ("storescu also ran with `TCP_NODELAY=1` (`--sender-nodelay`)."
           if ctx.sender_nodelay else
           "storescu itself ran as shipped (Nagle on; `--sender-nodelay` changes that)."),
        "",
        ("**storescp does not fsync; qcd and Orthanc do** (qcd fsyncs each file and its "
         "directories and commits a database row per instance before answering Success; "
         "Orthanc syncs its storage area and SQLite index). storescp is therefore an upper "
         "bound for the network and DIMSE path, not a like-for-like durable receiver."),
        "",
        ("Server CPU = user+system seconds of the server process during the push (n/a for "
         "storescp --fork, whose work happens in forked children). MB = 10^6 bytes of "
         "Part 10 files. Throughput ratio > 1 means qcd is faster. For qcd with several "
         "processes (`ingest.processes`) it is the CPU of the daemon and its receivers. "
         "\"fsync off\" rows run qcd with `spool.fsync = false`, a test-only setting that "
         "gives up durability exactly as storescp does: the like-for-like comparison with it, "
         "not a configuration to deploy."),
        "",
        table(rows),
        "",
    ])


def write_section(path: Path, text: str) -> None:
    """Write or replace the "## Ingest throughput" section of a Markdown file."""
    if path.exists():
        lines = path.read_text().splitlines()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# Benchmarks"]
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *text.rstrip("\n").splitlines()]
    else:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ") or lines[i].startswith("# ")), len(lines))
        rest = lines[end:]
        lines = lines[:start] + text.rstrip("\n").splitlines() + (["", *rest] if rest else [])
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=500, help="instances per push (default 500)")
    p.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case (default 3)")
    p.add_argument("--out", type=Path, help="Markdown file whose section to write/replace")
    p.add_argument("--scratch", type=Path, default=None,
                   help="parent of the temp dirs (default: the system temp dir)")
    p.add_argument("--sender-nodelay", action="store_true",
                   help="also run storescu with TCP_NODELAY=1 (default: Nagle on, as shipped)")
    p.add_argument("--qcd-processes", default="1,2",
                   help="comma-separated ingest.processes values to run qcd with (default 1,2)")
    p.add_argument("--qcd-no-fsync", action="store_true",
                   help="also run qcd with spool.fsync = false at the largest --qcd-processes "
                        "(like-for-like with storescp, which does not fsync)")
    p.add_argument("--qcd-polling", action="store_true",
                   help="also run qcd with ingest.reactor = polling (pynetdicom's own loops, "
                        "which wake every millisecond) at the smallest --qcd-processes")
    p.add_argument("--machine-label", default="python-svc machine",
                   help="human name of the machine for the report")
    args = p.parse_args(argv)
    if args.n < 4 or args.size < 8 or args.repeats < 1:
        p.error("need --n >= 4, --size >= 8, --repeats >= 1")
    try:
        args.qcd_processes = sorted({int(v) for v in args.qcd_processes.split(",")})
    except ValueError:
        p.error("--qcd-processes: comma-separated integers, e.g. 1,2")
    if not args.qcd_processes or min(args.qcd_processes) < 1:
        p.error("--qcd-processes: integers >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now().astimezone()
    command = " ".join(["python", "tests/bench/bench_ingest.py",
                        *(sys.argv[1:] if argv is None else argv)])
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    scratch = Path(tempfile.mkdtemp(prefix="qcd-bench-", dir=args.scratch))
    scratch_fs = filesystem(scratch)
    try:
        t0 = time.perf_counter()
        files = make_study(scratch / "data", [SeriesSpec("CT", args.n, "bench CT", "CHEST")],
                           size=args.size)
        total_bytes = sum(p.stat().st_size for p in files)
        print(f"generated {len(files)} files, {total_bytes / MB:.1f} MB in "
              f"{time.perf_counter() - t0:.1f} s under {scratch}", file=sys.stderr)
        fork = storescp_fork_works(files, scratch)
        cases = [Case("qcd", a, processes=n) for n in args.qcd_processes
                 for a in ASSOCIATION_COUNTS]
        if args.qcd_no_fsync:
            cases += [Case("qcd", a, processes=max(args.qcd_processes), fsync=False)
                      for a in ASSOCIATION_COUNTS]
        if args.qcd_polling:
            cases += [Case("qcd", a, processes=min(args.qcd_processes), reactor="polling")
                      for a in ASSOCIATION_COUNTS]
        cases += [Case("storescp", a, fork=fork and a > 1) for a in ASSOCIATION_COUNTS]
        cases += [Case("orthanc", a) for a in ASSOCIATION_COUNTS]
        results = {c: Result(c) for c in cases}
        for repeat in range(1, args.repeats + 1):
            for case in cases:
                wall, cpu = run_once(case, files, scratch, args.sender_nodelay)
                results[case].walls.append(wall)
                if cpu is not None:
                    results[case].cpus.append(cpu)
                cpu_text = f", server CPU {cpu:.2f} s" if cpu is not None else ""
                print(f"[{repeat}/{args.repeats}] {case.label} x{case.associations}: "
                      f"{wall:.2f} s{cpu_text}", file=sys.stderr)
    except BaseException as exc:
        shutil.rmtree(scratch / "data", ignore_errors=True)  # keep only the logs
        if isinstance(exc, BenchError):
            print(f"bench_ingest: FAILED: {exc}", file=sys.stderr)
            return 1
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = [summarise(results[c], len(files), total_bytes) for c in cases]
    print(table(rows))
    if args.out is not None:
        ctx = Context(command, started, machine(args.machine_label), args.size, total_bytes,
                      scratch_fs, args.sender_nodelay, load_start, load_end)
        write_section(args.out, section(rows, ctx))
        print(f"wrote section {SECTION!r} of {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
