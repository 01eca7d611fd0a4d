"""A real full disk in the middle of an association (a tmpfs of a few MB as the spool).

Instances that fit are acknowledged and intact; the first write that hits ENOSPC is
answered 0xA700 (out of resources) with no partial file under a final name and no temp
file left behind; the daemon keeps serving; once space is freed, the scanner's re-send
of the refused instances succeeds. Needs root to mount the tmpfs (skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from qcd.app import Daemon
from qcd.db.models import Instance
from qcd.ingest.filemeta import split_part10
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings
from tests.integration.dcmtk import echoscu, storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FS_BYTES = 4 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "spoolfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_mid_association_refuses_cleanly_and_recovers(
        tmp_path: Path, small_fs: Path) -> None:
    files = make_study(tmp_path / "in", [SeriesSpec("CT", 200, "CT big", "CHEST")],
                       size=128, seed=5)  # ~33 kB each, ~6.6 MB in all: more than fits
    ballast = small_fs / "ballast.bin"
    ballast.write_bytes(b"\0" * (1 << 20))  # space to free later
    daemon = Daemon(make_settings(tmp_path, QCD_SPOOL__PATH=str(small_fs / "spool"),
                                  QCD_WORKERS__THREADS="0"), registry={})
    daemon.start()
    try:
        result = storescu(files, daemon.scp.port)
        assert result.acknowledged, "nothing fitted at all"
        assert result.failed, "the disk never filled"
        assert all("outofresources" in text.lower().replace(" ", "")
                   for text in result.failed.values()), set(result.failed.values())
        assert echoscu(daemon.scp.port) == 0  # still serving
        assert list((small_fs / "spool" / ".tmp").iterdir()) == []  # no temp file left
        with daemon.db.session() as s:
            rows = {i.sop_uid: i for i in s.scalars(select(Instance))}
        for f in result.acknowledged:  # acknowledged = complete, intact, recorded
            meta, body = split_part10(f.read_bytes())
            row = rows[str(meta.MediaStorageSOPInstanceUID)]
            assert split_part10((daemon.spool.root / row.path).read_bytes())[1] == body
        names = {p.stem for p in (small_fs / "spool").rglob("*.dcm")}
        assert names == set(rows), "a file under a final name has no row (or the reverse)"

        ballast.unlink()  # the operator frees space; the scanner re-sends what failed
        refused = sorted(result.failed)
        fits = refused[: max(1, len(refused) // 2)]  # ~1 MB freed: about 30 instances
        again = storescu(fits[:20], daemon.scp.port)
        assert again.failed == {} and len(again.acknowledged) == len(fits[:20])
    finally:
        daemon.stop()
