"""Result latency: last instance received -> SR stored in the PACS, per analyzer.

Why: the operator waits for the answer while the patient may still be on the table
(a motion rescan decision is only useful before the patient leaves). This pushes one
simulated series to `qcd serve`, which analyses it, builds the SR (and SEG) and
delivers it to a PACS; the time from the last acknowledged instance to the SR being
in the PACS is split into the configured quiet period and qcd's own processing, and
set against the issue's budget (quiet + 10 s on CPU, quiet + 2 s on GPU) as a ratio.

The scanner is dcmtk ``storescu`` and the PACS a real Orthanc where they are
installed; on a machine without them (the lent GPU machines cannot install
packages) a pynetdicom SCU and a pynetdicom Storage SCP stand in, and the report
says so.

    python tests/bench/bench_latency.py [--analyzer earl|motion|atrium|chest]
        [--device cpu|cuda] [--repeats 3] [--quiet 2] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.report import header, machine, write_section  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.dcmtk import pynetdicom_echo  # noqa: E402

SeriesMaker = Callable[[Path], tuple[list[Path], str]]


def _earl_series(out: Path) -> tuple[list[Path], str]:
    import numpy as np

    from qcd.synth import write_pet_series
    from training.earl.simulate import simulate_case
    volume, params, label, _ = simulate_case(np.random.default_rng(4242), "EARL1")
    files = write_pet_series(volume[:300], tuple(params.voxel_mm), out)
    return files, f"{len(files)} slices of {volume.shape[1]}x{volume.shape[2]} simulated {label} PET"


def _demo_series(module: str) -> SeriesMaker:
    """The analyzer's own demo writer (``training.<name>.demo.write_demo_series``)."""
    def make(out: Path) -> tuple[list[Path], str]:
        mod = importlib.import_module(module)
        files, what = mod.write_demo_series(out)
        return list(files), what
    return make


SERIES: dict[str, SeriesMaker] = {
    "earl": _earl_series,
    "motion": _demo_series("training.motion.demo"),
    "atrium": _demo_series("training.atrium.demo"),
    "chest": _demo_series("training.chest.demo"),
}


class StandInPacs:
    """A pynetdicom Storage SCP that notes when an SR arrives (where Orthanc is absent)."""

    aet = "PACS"

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        self.sr_times: list[float] = []
        self.port = free_port()
        ae = AE(ae_title=self.aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.maximum_pdu_size = 0

        def on_store(event: Any) -> int:
            if str(event.dataset.get("Modality", "")) == "SR":
                self.sr_times.append(time.monotonic())
            return 0x0000

        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, on_store)])

    @property
    def dicom_port(self) -> int:
        return self.port

    def sr_count(self) -> int:
        return len(self.sr_times)

    def stop(self) -> None:
        self._server.shutdown()


class OrthancPacs:
    """The real PACS: Orthanc, counted through its REST API."""

    def __init__(self, work: Path) -> None:
        from tests.integration.orthanc import OrthancServer
        self._server = OrthancServer(work / "orthanc").start()
        self.aet = self._server.aet
        self.dicom_port = self._server.dicom_port

    def sr_count(self) -> int:
        import json
        body = json.dumps({"Level": "Instance", "Query": {"Modality": "SR"}}).encode()
        return len(self._server.post("/tools/find", body))

    def stop(self) -> None:
        self._server.stop()


def _echo(port: int, real: bool) -> bool:
    if real:
        return subprocess.run(["echoscu", "-aec", "QCD", "127.0.0.1", str(port)],
                              capture_output=True).returncode == 0
    return pynetdicom_echo(port, aet="BENCH")


def _push(port: int, files: Sequence[Path], real: bool) -> None:
    if real:
        subprocess.run(["storescu", "-aec", "QCD", "-aet", "BENCH", "127.0.0.1", str(port),
                        *map(str, files)], check=True, capture_output=True)
        return
    import pydicom
    from pynetdicom import AE
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="BENCH")
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, [str(ds.file_meta.TransferSyntaxUID)
                                             for ds in datasets[:1]] + ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="QCD")
    if not assoc.is_established:
        raise RuntimeError("qcd refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        assoc.release()


STAGES: tuple[tuple[str, str], ...] = (
    ("last instance stored -> series complete (quiet period + sweep)", "complete"),
    ("series complete -> job queued", "queued"),
    ("job queued -> claimed by a worker", "claimed"),
    ("analysis (load, preprocess, model, findings stored)", "analysed"),
    ("findings -> SR built and queued", "reported"),
)


def stage_seconds(db: Path) -> dict[str, float]:
    """Where the time after the last instance went, from the daemon's own timestamps.

    Each key of :data:`STAGES` is the seconds from the previous mark to its own: the
    series' last instance, its completion, the job's creation, start and end, and the
    SR's delivery row (written once the SR file exists). The send itself is left to the
    caller (the measured total less these): the outbox stamps the start of its sweep.
    """
    import datetime as dt
    import sqlite3

    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT s.last_received_at, s.completed_at, j.created_at, j.started_at, "
            "j.finished_at, d.created_at FROM series s "
            "JOIN jobs j ON j.series_id = s.id "
            "JOIN deliveries d ON d.series_id = s.id AND d.object_kind = 'SR' "
            "ORDER BY d.created_at LIMIT 1").fetchone()
    if row is None or any(v is None for v in row):
        return {}
    marks = [dt.datetime.fromisoformat(v) for v in row]
    return {key: (b - a).total_seconds()
            for (_, key), a, b in zip(STAGES, marks, marks[1:])}


def one_run(work: Path, files: list[Path], quiet: float, device: str,
            real_pacs: bool) -> tuple[float, float, dict[str, float]]:
    """Returns (seconds from last ack to SR in the PACS, push seconds, :func:`stage_seconds`)."""
    pacs: Any = OrthancPacs(work) if real_pacs else StandInPacs()
    port = free_port()
    config = work / "qcd.toml"
    config.write_text(
        f'[[delivery.destinations]]\nname = "pacs"\nhost = "127.0.0.1"\n'
        f'port = {pacs.dicom_port}\nae_title = "{pacs.aet}"\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QCD_")},
           "QCD_CONFIG": str(config), "QCD_INGEST__PORT": str(port),
           "QCD_INGEST__HOST": "127.0.0.1", "QCD_HTTP__PORT": "0",
           "QCD_SPOOL__PATH": str(work / "spool"), "QCD_SPOOL__MIN_FREE_BYTES": "0",
           "QCD_DATABASE__URL": f"sqlite:///{work}/qcd.db",
           "QCD_OUTPUTS__PATH": str(work / "outputs"),
           "QCD_ASSEMBLY__QUIET_SECONDS": str(quiet),
           "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.1",
           "QCD_WORKERS__POLL_INTERVAL_SECONDS": "0.05",
           "QCD_OUTPUTS__SWEEP_INTERVAL_SECONDS": "0.1",
           "QCD_DELIVERY__SWEEP_INTERVAL_SECONDS": "0.1",
           "QCD_WORKERS__MODELS_PATH": str(ROOT / "models"),
           "QCD_INFERENCE__DEVICE": device, "QCD_LOGGING__LEVEL": "WARNING"}
    serve = subprocess.Popen([sys.executable, "-m", "qcd.cli", "serve"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb"))
    try:
        deadline = time.monotonic() + 90
        while not _echo(port, real_pacs):
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError("qcd serve did not start: " + (work / "serve.log").read_text())
            time.sleep(0.2)
        start = time.monotonic()
        _push(port, files, real_pacs)
        acked = time.monotonic()
        while pacs.sr_count() < 1:
            if time.monotonic() - acked > 300:
                raise RuntimeError("no SR after 300 s: " + (work / "serve.log").read_text())
            time.sleep(0.05)
        latency = time.monotonic() - acked
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        pacs.stop()
    return latency, acked - start, stage_seconds(work / "qcd.db")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--analyzer", choices=sorted(SERIES), default="earl")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quiet", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--stand-in", action="store_true",
                   help="use the pynetdicom SCU/SCP even where dcmtk and Orthanc exist")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    real = bool(shutil.which("storescu") and shutil.which("Orthanc")) and not args.stand_in
    scratch = Path(tempfile.mkdtemp(prefix="qcd-latency-"))
    files, what = SERIES[args.analyzer](scratch / "series")
    results = []
    for i in range(args.repeats):
        work = scratch / f"run{i}"
        work.mkdir()
        results.append(one_run(work, files, args.quiet, args.device, real))
        print(f"[{i + 1}/{args.repeats}] last ack -> SR in PACS {results[-1][0]:.2f} s "
              f"(push {results[-1][1]:.2f} s); " + ", ".join(
                  f"{k} {v:.2f}" for k, v in results[-1][2].items()), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    total = statistics.median(r[0] for r in results)
    qcd_part = total - args.quiet
    budget = 10.0 if args.device == "cpu" else 2.0
    pacs = ("dcmtk storescu -> qcd -> Orthanc" if real else
            "pynetdicom SCU -> qcd -> pynetdicom Storage SCP, standing in for dcmtk and Orthanc")
    rows = ["| measure | seconds (median of %d) |" % args.repeats, "|---|---|",
            f"| last instance acknowledged -> SR stored in the PACS | {total:.2f} |",
            f"| of which the quiet period (configured) | {args.quiet:.2f} |",
            f"| qcd processing (sweep, {args.analyzer} on {args.device}, SR, delivery) "
            f"| {qcd_part:.2f} |",
            f"| budget from the issue ({args.device}) | {budget:.2f} |"]
    split = [r[2] for r in results if r[2]]
    if split:
        rows += [f"| daemon timestamps: {label} | {statistics.median(s[key] for s in split):.2f} |"
                 for label, key in STAGES]
        rest = statistics.median(r[0] - sum(r[2].values()) for r in results if r[2])
        rows.append(f"| SR queued -> stored in the PACS (the total less the above) | {rest:.2f} |")
    summary = (f"{what}; path: {pacs}. Processing/budget ratio **{qcd_part / budget:.2f}** "
               f"(< 1 meets the target).")
    print("\n".join(rows))
    print(summary)
    if args.out:
        write_section(args.out, f"## Result latency: {args.analyzer} ({args.device})",
                      header(f"python tests/bench/bench_latency.py --analyzer {args.analyzer} "
                             f"--device {args.device} --out {args.out}", f"{machine()}{_gpu()}")
                      + "\n\n" + "\n".join(rows) + f"\n\n{summary}")
    return 0


def _gpu() -> str:
    try:
        import torch
        return f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    except Exception:  # a report line must not fail the benchmark
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
