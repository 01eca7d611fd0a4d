"""Scanner to PACS: storescu -> qcd -> analysis -> SR -> a real Orthanc, exactly once."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from qcd.app import Daemon
from qcd.db.models import Delivery, DeliveryState, Job, JobState
from qcd.synth import SeriesSpec, make_study
from tests.conftest import make_settings
from tests.integration.dcmtk import storescu
from tests.integration.conftest import Receiver
from tests.integration.orthanc import OrthancServer
from tests.toy_analyzers import CountAnalyzer, write_toy_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


def _wait(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_findings_reach_the_pacs_as_one_sr(tmp_path: Path, orthanc: OrthancServer) -> None:
    models = tmp_path / "models"
    write_toy_bundle(models)
    rules = tmp_path / "qcd.toml"
    rules.write_text(
        '[[routing.rules]]\nanalyzer = "count"\nmodalities = ["PT"]\n'
        f'[[delivery.destinations]]\nname = "orthanc"\nhost = "127.0.0.1"\n'
        f'port = {orthanc.dicom_port}\nae_title = "{orthanc.aet}"\n')
    settings = make_settings(
        tmp_path, QCD_CONFIG=str(rules), QCD_WORKERS__MODELS_PATH=str(models),
        QCD_OUTPUTS__PATH=str(tmp_path / "outputs"), QCD_OUTPUTS__SWEEP_INTERVAL_SECONDS="0.3",
        QCD_DELIVERY__SWEEP_INTERVAL_SECONDS="0.3")
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 5, "PET WB")], 16)
    daemon = Daemon(settings, registry={"count": CountAnalyzer()})
    daemon.start()
    try:
        assert len(storescu(files, daemon.scp.port).acknowledged) == 5

        def delivered() -> bool:
            with daemon.db.session() as s:
                return [d.state for d in s.scalars(select(Delivery))] == [DeliveryState.SENT]

        _wait(delivered)
        with daemon.db.session() as s:
            job = s.scalars(select(Job)).one()
            delivery = s.scalars(select(Delivery)).one()
        assert job.state == JobState.DONE and job.report_sop_uid == delivery.sop_instance_uid
        [hit] = orthanc.lookup(delivery.sop_instance_uid)
        assert hit["Type"] == "Instance"
        time.sleep(1.0)  # further sweeps must not send or build anything again
        assert orthanc.count() == 1
        with daemon.db.session() as s:
            assert len(s.scalars(select(Delivery)).all()) == 1
    finally:
        daemon.stop()
    sr = hd.sr.srread(tmp_path / "outputs" / delivery.path)
    assert sr.SOPInstanceUID == delivery.sop_instance_uid
    assert sr.StudyInstanceUID == str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert "not for primary diagnosis" in sr.SeriesDescription
    assert "toy" in str(sr)  # model provenance travels with the SR
    values = {m.name.meaning: m.value for group in sr.content.get_image_measurement_groups()
              for m in group.get_measurements()}
    assert 5.0 in values.values()  # the analyzer's "instances" finding, as measured


def test_a_finding_that_matches_an_alert_rule_reaches_the_webhook(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's own wiring: job DONE -> alert raised -> routed -> signed webhook POST."""
    import json

    models = tmp_path / "models"
    write_toy_bundle(models)
    monkeypatch.setenv("QCD_TEST_HOOK_SECRET", "s3cret")
    config = tmp_path / "qcd.toml"
    config.write_text(
        '[[routing.rules]]\nanalyzer = "count"\nmodalities = ["PT"]\n'
        '[alerts]\nsweep_interval_seconds = 0.3\n'
        '[[alerts.rules]]\nkind = "too_many"\nanalyzer = "count"\nfinding = "instances"\n'
        'min_value = 3\nseverity = "critical"\n'
        f'[[alerts.webhooks]]\nname = "ops"\nurl = "{receiver.url}"\n'
        'secret_env = "QCD_TEST_HOOK_SECRET"\n'
        '[[alerts.routes]]\nchannels = ["ops"]\n')
    settings = make_settings(tmp_path, QCD_CONFIG=str(config),
                             QCD_WORKERS__MODELS_PATH=str(models),
                             QCD_OUTPUTS__PATH=str(tmp_path / "outputs"))
    files = make_study(tmp_path / "in", [SeriesSpec("PT", 4, "PET WB")], 16)
    daemon = Daemon(settings, registry={"count": CountAnalyzer()})
    daemon.start()
    try:
        assert len(storescu(files, daemon.scp.port).acknowledged) == 4
        _wait(lambda: len(receiver.requests) >= 1)
        time.sleep(1.0)  # a second sweep must not send it again
    finally:
        daemon.stop()
    [(headers, body)] = receiver.requests
    payload = json.loads(body)
    assert (payload["kind"], payload["severity"], payload["finding"]) == (
        "too_many", "critical", "instances")
    assert payload["station"] == "QCDSIM1" and payload["modality"] == "PT"
    assert headers["x-qcd-signature"] == "sha256=" + hmac.new(
        b"s3cret", body, hashlib.sha256).hexdigest()
    assert b"QCD^DEMO" not in body and b"QCD-DEMO-0001" not in body
