"""No PHI leaves qcd through its logs, metrics, alerts, database or dashboard API.

Distinctive patient data is planted in simulated chest radiographs (one PA view with a
pneumothorax, which raises the urgent-finding alert, and one lateral view, which is
declined with ``not_applicable``), pushed with dcmtk's storescu into a running daemon
with a webhook and an e-mail route, and every output qcd produces is searched for the
planted strings: all log records down to DEBUG (qcd's and pynetdicom's), the
``/metrics`` text, the webhook bodies and headers, the mails, every row of every table,
and the dashboard's JSON API and study page.

The SR that goes back to the PACS is not searched: it must carry the patient module
so that the PACS files it with the right patient.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import MetaData, select

from qcd.analyzers.chest.analyzer import ChestAnalyzer
from qcd.app import Daemon
from qcd.db.models import Job, JobState
from qcd.outputs.alert_settings import AlertRoute, AlertSettings, EmailChannel, WebhookChannel
from qcd.web.auth import add_user
from tests.conftest import make_settings
from tests.integration.conftest import Receiver
from tests.integration.dcmtk import storescu
from tests.integration.test_alerts import _Sink, smtp_sink  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

MODELS = Path(__file__).parents[2] / "models"

PLANTED = {
    "PatientName": "ZZPHI^LEAKTEST",
    "PatientID": "PHI-ID-99123",
    "PatientBirthDate": "19010203",
    "OtherPatientIDs": "PHI-OTHER-55817",
    "PatientAddress": "PHI-ADDR 7 Leak Lane",
    "PatientTelephoneNumbers": "PHI-TEL-0123",
    "ReferringPhysicianName": "ZZREF^PHIDOC",
}
"""Element -> planted value; each must appear nowhere in qcd's outputs."""

NEEDLES = [v for value in PLANTED.values() for v in {value, value.replace("^", " ")}] + [
    "LEAKTEST", "PHIDOC"]
"""What is searched for: each value, the person names with ``^`` as a space, and
distinctive fragments (a log line that reformats a name still contains them)."""


def _plant(path: Path) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def _leaks(where: str, text: str) -> list[str]:
    return [f"{needle!r} in {where}" for needle in NEEDLES if needle.lower() in text.lower()]


def _get(url: str, auth: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode("utf-8", "replace"))


@pytest.fixture
def daemon(tmp_path: Path, receiver: Receiver,
           smtp_sink: tuple[int, _Sink]) -> Iterator[Daemon]:  # noqa: F811
    smtp_port, _ = smtp_sink
    settings = make_settings(tmp_path, QCD_WORKERS__MODELS_PATH=str(MODELS),
                             QCD_INFERENCE__DEVICE="cpu")
    alerts = AlertSettings(
        webhooks=(WebhookChannel(name="hook", url=receiver.url),),
        emails=(EmailChannel(name="mail", host="127.0.0.1", port=smtp_port,
                             sender="qcd@example.org", recipients=("qa@example.org",)),),
        # every finding of the chest analyzer raises an alert, declined series included
        rules=(*AlertSettings().rules,
               dataclasses.replace(AlertSettings().rules[1], kind="declined",
                                   finding="not_applicable", severity="info")),
        routes=(AlertRoute(channels=("hook", "mail")),),
        sweep_interval_seconds=0.2, retry_seconds=0.2)
    d = Daemon(dataclasses.replace(settings, alerts=alerts),
               registry={"chest": ChestAnalyzer()})
    add_user(d.db, "viewer", "viewer-password", "viewer")
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_planted_patient_data_appears_in_no_output(
        tmp_path: Path, daemon: Daemon, receiver: Receiver,
        smtp_sink: tuple[int, _Sink],  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    from training.chest.demo import write_study

    # set_level also sets the capture handler's level: the last call must be DEBUG
    caplog.set_level(logging.WARNING, "sqlalchemy")  # SQL text; the tables are read below
    caplog.set_level(logging.DEBUG, "pynetdicom")
    caplog.set_level(logging.DEBUG)  # the root logger: qcd, pynetdicom, apscheduler ...
    paths = write_study(tmp_path / "cxr", ["Pneumothorax"], seed=21, shape=(160, 132))
    files = [paths["pa"], paths["lateral"]]
    for f in files:
        _plant(f)
    assert pydicom.dcmread(files[0]).PatientName == PLANTED["PatientName"]

    pushed = storescu(files, daemon.scp.port)
    assert len(pushed.acknowledged) == len(files), pushed.failed
    _, sink = smtp_sink
    deadline = time.monotonic() + 90
    while True:
        with daemon.db.session() as s:
            states = [j.state for j in s.scalars(select(Job))]
        if (len(states) == 2 and all(st == JobState.DONE for st in states)
                and len(receiver.requests) >= 2 and len(sink.mails) >= 2):
            break
        assert time.monotonic() < deadline, (states, len(receiver.requests), len(sink.mails))
        time.sleep(0.3)
    # positive controls: the planted data did reach qcd (its spool keeps the instances
    # as received), and the outputs searched below are not empty
    spooled = [p.read_bytes() for p in Path(daemon.settings.spool.path).rglob("*.dcm")]
    assert len(spooled) == 2
    assert all(PLANTED["PatientName"].encode() in data for data in spooled)
    bodies = [body.decode() for _, body in receiver.requests]
    assert any('"kind":"urgent_finding"' in b for b in bodies), bodies
    assert any('"kind":"declined"' in b for b in bodies), bodies

    leaks: list[str] = []
    for i, (headers, body) in enumerate(receiver.requests):
        leaks += _leaks(f"webhook {i} body", body.decode("utf-8", "replace"))
        leaks += _leaks(f"webhook {i} headers", repr(headers))
    for i, (sender, rcpts, message) in enumerate(sink.mails):
        leaks += _leaks(f"mail {i}", f"{sender} {rcpts} {message.as_string()}")

    assert daemon.http is not None
    base = f"http://127.0.0.1:{daemon.http.port}"
    metrics = _get(f"{base}/metrics")
    assert "qcd_instances_received_total" in metrics
    leaks += _leaks("/metrics", metrics)

    auth = "Basic " + base64.b64encode(b"viewer:viewer-password").decode()
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    for path in ("/api/series", "/api/alerts", "/api/sites", "/api/stations",
                 f"/api/studies/{study_uid}", f"/study/{study_uid}", "/operator", "/sites",
                 "/sites.csv"):
        page = _get(base + path, auth)
        assert page, path
        leaks += _leaks(path, page)

    meta = MetaData()
    meta.reflect(daemon.db.engine)
    rows = 0
    with daemon.db.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()):
                rows += 1
                leaks += _leaks(f"table {table.name}", repr(tuple(row)))
    assert rows > 0

    records = [r for r in caplog.records]
    assert any(r.name.startswith("pynetdicom") and r.levelno == logging.DEBUG for r in records)
    assert any(r.name.startswith("qcd") for r in records)
    for r in records:
        leaks += _leaks(f"log {r.name}:{r.levelname}", r.getMessage())
    leaks += _leaks("captured log text", caplog.text)

    assert not leaks, leaks
