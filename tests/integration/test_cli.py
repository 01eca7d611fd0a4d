"""The CLI end to end: check-config, db, import, status, send (against a live daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcd.app import Daemon
from qcd.cli import main
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QCD_DATABASE__URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("QCD_SPOOL__PATH", str(tmp_path / "spool"))
    monkeypatch.setenv("QCD_SPOOL__MIN_FREE_BYTES", "0")
    return tmp_path


def test_check_config_reports_bad_key_with_exit_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spool"]["path"] == str(env / "spool")
    monkeypatch.setenv("QCD_INGEST__MAX_ASSOCIATIONS", "0")
    assert main(["check-config"]) == 2
    assert "ingest.max_associations: 0 is not allowed; allowed: 1-1000" in capsys.readouterr().err


def test_db_import_status(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 3  # not migrated yet: a sentence, not a traceback
    assert "qcd db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade"]) == 0
    assert "revision 0006 (head 0006)" in capsys.readouterr().out
    files = make_study(env / "in", [SeriesSpec("PT", 5, "PET"), SeriesSpec("MR", 3, "LA")], 16)
    (env / "in" / "notes.txt").write_text("not DICOM")
    assert main(["import", str(env / "in")]) == 1  # one file refused
    assert "imported 8 instance(s); refused 1, 0xC210 x1" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["instances"] == len(files) and summary["series"] == {"RECEIVED": 2}


def test_send_to_live_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = Daemon(make_settings(tmp_path))
    daemon.start()
    try:
        files = make_study(tmp_path / "in", [SeriesSpec("CT", 4, "CT", compression="rle")], 16)
        port = daemon.scp.port
        assert main(["send", str(tmp_path / "in"), "--to", f"127.0.0.1:{port}"]) == 0
        assert "sent 4 of 4 file(s)" in capsys.readouterr().out
        assert len(list(daemon.spool.root.glob("*/*/*.dcm"))) == len(files)
        assert main(["send", str(files[0]), "--to", "nonsense"]) == 2
    finally:
        daemon.stop()


def test_earl_phantom_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from qcd.analyzers.earl.phantom import ReconParams, render_phantom
    from qcd.synth import write_pet_series

    params = ReconParams((2.0, 4.0, 4.0), 7.5, 0.0, 0.03)  # EARL1 by SCIENCE 1d
    volume, _ = render_phantom(params, np.random.default_rng(1))
    write_pet_series(volume, params.voxel_mm, tmp_path / "phantom")
    assert main(["earl-phantom", str(tmp_path / "phantom"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["label"] == "EARL1"
    assert [s["diameter_mm"] for s in report["spheres"]] == [37, 28, 22, 17, 13, 10]


def test_check_config_hides_passwords(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QCD_DATABASE__URL", "postgresql+psycopg://qcd:s3cret@db.example/qcd")
    monkeypatch.setenv("QCD_CELERY__BROKER_URL", "amqp://qcd:br0ker@rabbit:5672/qcd")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "qcd:***@db.example" in out
    assert "br0ker" not in out and "amqp://qcd:***@rabbit:5672/qcd" in out
    assert main(["check-config", "--show-secrets"]) == 0
    assert "s3cret" in capsys.readouterr().out
