"""Automated kill -9 trials: does a crash at a random moment lose or duplicate anything?

Why: an instance acknowledged with Success must survive any crash, and an analysis
must reach the PACS exactly once (as one SR instance) however often qcd dies on the
way. Each trial starts `qcd serve` (SQLite, a real Orthanc as PACS), pushes a study
(a simulated 120-slice PET that the EARL analyzer classifies, plus 200 CT instances)
with dcmtk storescu over 2 associations, and SIGKILLs qcd at a random moment, either
mid-push ("ingest") or after the push while it completes, analyses, builds and
delivers ("processing"). qcd is restarted, the scanner re-sends what was not
acknowledged, and the trial checks:

- acknowledged instances lost (file missing, sha256 or bytes differ, no DB row): must be 0;
- findings lost (the EARL job never DONE with findings): must be 0;
- SR instances in Orthanc for the study: exactly one per EARL analysis (job generation)
  that reported; duplicates = SR instances beyond that, must be 0. A kill mid-push can
  leave the PET series quiet long enough to complete before the scanner re-sends the
  rest; the late instances then re-open it (generation 2) and it is analysed again:
  that is a second, different analysis (counted as a re-analysis), not a duplicate;
- recovery time: restart to the DICOM port answering C-ECHO.

    python tests/bench/fault_injection.py [--trials 10] [--seed 1] [--out docs/RELIABILITY.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from qcd.db.engine import Database  # noqa: E402
from qcd.db.models import Finding, Instance, Job, JobState  # noqa: E402
from qcd.ingest.filemeta import split_part10  # noqa: E402
from qcd.synth import SeriesSpec, make_study, write_pet_series  # noqa: E402
from tests.bench.report import header, machine, write_section  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.dcmtk import PushResult, echoscu, push_concurrently  # noqa: E402
from tests.integration.orthanc import OrthancServer  # noqa: E402
from training.earl.simulate import simulate_case  # noqa: E402

QUIET = 4.0
"""Quiet period: longer than a restart plus the scanner's re-send, as in practice."""


@dataclass
class Trial:
    phase: str
    acknowledged_before_kill: int
    lost: int
    findings_lost: int
    sr_instances: int
    analyses: int
    recovery_s: float


def make_files(work: Path, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    volume, params, _, _ = simulate_case(rng, str(rng.choice(["EARL1", "clinical"])))
    study_uid = f"2.25.{random.Random(seed).getrandbits(120)}"
    pet = write_pet_series(volume[:120], tuple(params.voxel_mm), work / "pet",
                           study_uid=study_uid, seed=seed)
    ct = make_study(work / "ct", [SeriesSpec("CT", 200, "CT AC", "WHOLEBODY")], size=128,
                    seed=seed, study_uid=study_uid)
    return pet + ct


def sop_of(path: Path) -> str:
    meta, _ = split_part10(path.read_bytes()[: 1 << 16])
    return str(meta.MediaStorageSOPInstanceUID)


class Served:
    def __init__(self, work: Path, orthanc: OrthancServer) -> None:
        self.port = free_port()
        self.work = work
        config = work / "qcd.toml"
        config.write_text(
            f'[[delivery.destinations]]\nname = "pacs"\nhost = "127.0.0.1"\n'
            f'port = {orthanc.dicom_port}\nae_title = "{orthanc.aet}"\n')
        self.db_url = f"sqlite:///{work}/qcd.db"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("QCD_")},
                    "QCD_CONFIG": str(config), "QCD_INGEST__PORT": str(self.port),
                    "QCD_INGEST__HOST": "127.0.0.1", "QCD_HTTP__PORT": "0",
                    "QCD_SPOOL__PATH": str(work / "spool"), "QCD_SPOOL__MIN_FREE_BYTES": "0",
                    "QCD_DATABASE__URL": self.db_url, "QCD_OUTPUTS__PATH": str(work / "out"),
                    "QCD_ASSEMBLY__QUIET_SECONDS": str(QUIET),
                    "QCD_ASSEMBLY__SWEEP_INTERVAL_SECONDS": "0.2",
                    "QCD_WORKERS__POLL_INTERVAL_SECONDS": "0.1",
                    "QCD_OUTPUTS__SWEEP_INTERVAL_SECONDS": "0.2",
                    "QCD_DELIVERY__SWEEP_INTERVAL_SECONDS": "0.2",
                    "QCD_DELIVERY__BACKOFF_SECONDS": "0.5",
                    "QCD_LOGGING__LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        t0 = time.monotonic()
        with open(self.work / "serve.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "qcd.cli", "serve"],
                                         env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)
        while echoscu(self.port) != 0:
            if self.proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError((self.work / "serve.log").read_text()[-3000:])
            time.sleep(0.05)
        return time.monotonic() - t0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def sr_count(orthanc: OrthancServer, study_uid: str) -> int:
    body = json.dumps({"Level": "Instance",
                       "Query": {"Modality": "SR", "StudyInstanceUID": study_uid}}).encode()
    return len(orthanc.post("/tools/find", body))


def start_orthanc(root: Path, tries: int = 3) -> OrthancServer:
    """Orthanc on fresh free ports; another process may grab a port first, so retry."""
    for attempt in range(tries):
        try:
            return OrthancServer(root).start()
        except RuntimeError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def run_trial(work: Path, files: list[Path], rng: random.Random) -> Trial:
    import pydicom
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    orthanc = start_orthanc(work / "orthanc")
    served = Served(work, orthanc)
    try:
        served.start()
        phase = rng.choice(["ingest", "processing"])
        pushed: list[PushResult] = []
        pusher = threading.Thread(target=lambda: pushed.append(
            push_concurrently(files, served.port, lanes=2)))
        pusher.start()
        if phase == "ingest":
            target = rng.randrange(len(files) // 10, len(files) * 9 // 10)
            while (len(list((work / "spool").glob("*/*/*.dcm"))) < target
                   and pusher.is_alive()):
                time.sleep(0.01)
        else:
            pusher.join()
            time.sleep(rng.uniform(0.0, QUIET + 4.0))
        served.kill9()
        pusher.join(300)
        acknowledged = pushed[0].acknowledged
        recovery = served.start()
        missing = [f for f in files if f not in set(acknowledged)]
        if missing:  # the scanner re-sends what it had no Success for
            again = push_concurrently(missing, served.port, lanes=2)
            assert not again.failed, again.failed
        deadline = time.monotonic() + 180
        while sr_count(orthanc, study_uid) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("no SR after the restart: "
                                   + (work / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(QUIET + 3.0)  # room for a duplicate to show up
        db = Database(served.db_url)
        with db.session() as s:
            rows = {i.sop_uid: i for i in s.scalars(select(Instance))}
            earl = s.scalars(select(Job).where(Job.analyzer == "earl")).all()
            reported = sum(j.report_sop_uid is not None for j in earl)
            done = [j for j in earl if j.state == JobState.DONE]
            n_findings = len(s.scalars(select(Finding).where(
                Finding.job_id.in_([j.id for j in done]))).all()) if done else 0
        db.dispose()
        lost = 0
        for f in acknowledged:
            row = rows.get(sop_of(f))
            kept = (work / "spool" / row.path) if row else None
            if (row is None or kept is None or not kept.is_file()
                    or hashlib.sha256(kept.read_bytes()).hexdigest() != row.sha256
                    or split_part10(kept.read_bytes())[1] != split_part10(f.read_bytes())[1]):
                lost += 1
        return Trial(phase, len(acknowledged), lost, 0 if n_findings else 1,
                     sr_count(orthanc, study_uid), reported, recovery)
    finally:
        served.stop()
        orthanc.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="qcd-faults-"))
    trials: list[Trial] = []
    try:
        for i in range(args.trials):
            work = scratch / f"t{i}"
            work.mkdir()
            files = make_files(work / "in", args.seed * 1000 + i)
            t = run_trial(work, files, rng)
            trials.append(t)
            print(f"[{i + 1}/{args.trials}] {t.phase:10s} acked before kill "
                  f"{t.acknowledged_before_kill:3d}/{len(files)}  lost {t.lost}  "
                  f"findings lost {t.findings_lost}  SRs {t.sr_instances} for {t.analyses} "
                  f"analyses  "
                  f"recovery {t.recovery_s:.2f} s", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lost = sum(t.lost for t in trials)
    findings_lost = sum(t.findings_lost for t in trials)
    dups = sum(max(t.sr_instances - t.analyses, 0) for t in trials)
    reanalysed = sum(t.analyses > 1 for t in trials)
    missing_sr = sum(t.sr_instances == 0 for t in trials)
    rec = [t.recovery_s for t in trials]
    rows = ["| figure | value |", "|---|---|",
            f"| trials (ingest / processing kills) | {len(trials)} "
            f"({sum(t.phase == 'ingest' for t in trials)} / "
            f"{sum(t.phase == 'processing' for t in trials)}) |",
            f"| instances acknowledged before the kill (total) | "
            f"{sum(t.acknowledged_before_kill for t in trials)} |",
            f"| acknowledged instances lost | **{lost}** |",
            f"| findings lost | **{findings_lost}** |",
            f"| duplicate SRs delivered | **{dups}** |",
            f"| analyses with no SR in the PACS | **{missing_sr}** |",
            f"| trials where late re-sent instances re-opened the series (2 analyses) | "
            f"{reanalysed} |",
            f"| recovery time (restart to C-ECHO), median / max | "
            f"{statistics.median(rec):.2f} s / {max(rec):.2f} s |"]
    print("\n".join(rows))
    if args.out:
        write_section(args.out, "## Fault injection: kill -9 at random moments",
                      header(f"python tests/bench/fault_injection.py --trials {args.trials} "
                             f"--seed {args.seed} --out {args.out}", machine(),
                             "Study per trial: 120-slice simulated PET (EARL analyzer, SR to "
                             "Orthanc) + 200 CT instances, 2 storescu associations.")
                      + "\n\n" + "\n".join(rows))
    return 0 if lost == findings_lost == dups == missing_sr == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
