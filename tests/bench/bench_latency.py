"""Result latency: last instance received -> EARL SR stored in the PACS (Orthanc).

Why: the operator waits for the answer while the patient may still be on the table.
This pushes one simulated ~300-slice FDG PET with dcmtk storescu to `qcd serve`,
which classifies it, builds the SR and delivers it to a real Orthanc; the time from
the last acknowledged instance to the SR being visible in Orthanc is split into the
quiet period (configured) and qcd's own processing, and set against the issue's
budget (quiet + 10 s on CPU, quiet + 2 s on GPU) as a ratio.

    python tests/bench/bench_latency.py [--repeats 3] [--quiet 2] [--slices 300]
                                        [--out docs/BENCHMARKS.md]
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
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from qcd.synth import write_pet_series  # noqa: E402
from tests.bench.report import machine, write_section  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.orthanc import OrthancServer  # noqa: E402
from training.earl.simulate import simulate_case  # noqa: E402


def _sr_count(http_port: int) -> int:
    body = json.dumps({"Level": "Instance", "Query": {"Modality": "SR"}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/tools/find", data=body)
    with urllib.request.urlopen(req, timeout=5) as rsp:
        return len(json.loads(rsp.read()))


def one_run(work: Path, files: list[Path], quiet: float, device: str) -> tuple[float, float]:
    """Returns (seconds from last ack to SR in Orthanc, push seconds)."""
    orthanc = OrthancServer(work / "orthanc").start()
    port = free_port()
    config = work / "qcd.toml"
    config.write_text(
        f'[[delivery.destinations]]\nname = "pacs"\nhost = "127.0.0.1"\n'
        f'port = {orthanc.dicom_port}\nae_title = "{orthanc.aet}"\n')
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
        deadline = time.monotonic() + 60
        while subprocess.run(["echoscu", "-aec", "QCD", "127.0.0.1", str(port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("qcd serve did not start: " + (work / "serve.log").read_text())
            time.sleep(0.2)
        start = time.monotonic()
        subprocess.run(["storescu", "-aec", "QCD", "-aet", "BENCH", "127.0.0.1", str(port),
                        *map(str, files)], check=True, capture_output=True)
        acked = time.monotonic()
        while _sr_count(orthanc.http_port) < 1:
            if time.monotonic() - acked > 300:
                raise RuntimeError("no SR after 300 s: " + (work / "serve.log").read_text())
            time.sleep(0.05)
        return time.monotonic() - acked, acked - start
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        orthanc.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quiet", type=float, default=2.0)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="qcd-latency-"))
    volume, params, label, _ = simulate_case(np.random.default_rng(4242), "EARL1")
    volume = volume[: args.slices]
    files = write_pet_series(volume, tuple(params.voxel_mm), scratch / "pet")
    results = []
    for i in range(args.repeats):
        work = scratch / f"run{i}"
        work.mkdir()
        results.append(one_run(work, files, args.quiet, args.device))
        print(f"[{i + 1}/{args.repeats}] last ack -> SR in Orthanc {results[-1][0]:.2f} s "
              f"(push {results[-1][1]:.2f} s)")
    shutil.rmtree(scratch, ignore_errors=True)
    total = statistics.median(r[0] for r in results)
    qcd_part = total - args.quiet
    budget = 10.0 if args.device == "cpu" else 2.0
    rows = ["| measure | seconds (median of %d) |" % args.repeats, "|---|---|",
            f"| last instance acknowledged -> SR stored in Orthanc | {total:.2f} |",
            f"| of which the quiet period (configured) | {args.quiet:.2f} |",
            f"| qcd processing (sweep, EARL on {args.device}, SR, delivery) | {qcd_part:.2f} |",
            f"| budget from the issue ({args.device}) | {budget:.2f} |"]
    summary = (f"{len(files)} slices of {volume.shape[1]}x{volume.shape[2]} (simulated "
               f"{label} PET), processing/budget ratio **{qcd_part / budget:.2f}** "
               f"(< 1 meets the target).")
    print("\n".join(rows))
    print(summary)
    if args.out:
        write_section(args.out, f"## Result latency ({args.device})",
                      f"Command: `python tests/bench/bench_latency.py --device {args.device} "
                      f"--out {args.out}`\n\n- Date: "
                      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n- Machine: "
                      f"{machine()}\n\n" + "\n".join(rows) + f"\n\n{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
