"""Alerts: raised from findings, routed, rate-limited, sent to a real HTTP receiver and SMTP sink."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from qcd.db.models import AlertNotification, NotificationState
from qcd.db.engine import Database
from qcd.db.models import Alert, AlertState, Finding, Job, JobState, Series, Study, utcnow
from qcd.errors import ConfigError
from qcd.outputs.alert_settings import (
    DEFAULT_RULES,
    AlertRoute,
    AlertRule,
    AlertSettings,
    EmailChannel,
    WebhookChannel,
)
from qcd.outputs.alerts import (
    PAYLOAD_KEYS,
    SIGNATURE_HEADER,
    AlertDispatcher,
    AlertPayload,
    SendResult,
    raise_from_findings,
)
from tests.conftest import free_port
from tests.integration.conftest import Receiver
from tests.integration.test_delivery import alerts

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests"
PHI = ("DOE^JANE", "PAT-0042", "19700101")
"""Patient data that must never reach a notification (it is not in the DB either)."""
_uid = iter(range(1, 1_000_000))


# --------------------------------------------------------------------------- fixtures



class _Sink:
    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos),
                           message_from_bytes(envelope.original_content)))
        return "250 OK"


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, _Sink]]:
    """A local SMTP server (aiosmtpd) on a free port keeping every mail."""
    sink = _Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, sink
    controller.stop()


class FakeSender:
    def __init__(self, result: SendResult | None = None) -> None:
        self.sent: list[AlertPayload] = []
        self.result = result or SendResult(True)

    def send(self, payload: AlertPayload) -> SendResult:
        self.sent.append(payload)
        return self.result


def make_job(db: Database, findings: list[dict[str, Any]], *, analyzer: str = "motion",
             station: str = "CT1", site: str = "North", modality: str = "CT",
             state: JobState = JobState.DONE) -> int:
    """A series with a job and its findings; the description plants patient-like text."""
    n = next(_uid)
    with db.session() as s:
        study = Study(study_uid=f"1.2.826.0.1.3680043.10.1.{n}", accession_number="ACC1")
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_uid=f"1.2.826.0.1.3680043.10.2.{n}",
                        modality=modality, station_name=station, institution_name=site,
                        series_description=PHI[0], first_received_at=dt.datetime(2026, 11, 27, 8))
        s.add(series)
        s.flush()
        job = Job(series_id=series.id, analyzer=analyzer, state=state,
                  report_sop_uid=f"1.2.826.0.1.3680043.10.3.{n}")
        s.add(job)
        s.flush()
        for f in findings:
            s.add(Finding(job_id=job.id, series_id=series.id, analyzer=analyzer, **f))
        return job.id


def notifications(db: Database) -> list[AlertNotification]:
    with db.session() as s:
        return list(s.scalars(select(AlertNotification).order_by(AlertNotification.id)))


RESCAN = {"name": "rescan_recommended", "value_text": "true"}
ALL = AlertRoute(channels=("hook",))


# --------------------------------------------------------------------------- schema


def test_migrations_match_the_model(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from qcd.db.models import Base

    assert db.current_revision() == db.head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


# --------------------------------------------------------------------------- raising


def test_raise_from_findings_follows_rules_and_is_idempotent(db: Database) -> None:
    motion = make_job(db, [RESCAN, {"name": "rescan_recommended", "value_text": "no"},
                           {"name": "motion_score", "value_num": 0.9}])
    chest = make_job(db, [{"name": "urgent", "value_text": "pneumothorax"}], analyzer="chest",
                     modality="DX")
    earl = make_job(db, [{"name": "header_cnn_disagreement", "value_text": "A vs B"}],
                    analyzer="earl", modality="PT")
    queued = make_job(db, [RESCAN], state=JobState.QUEUED)
    assert raise_from_findings(db, motion, DEFAULT_RULES) == 1
    assert raise_from_findings(db, motion, DEFAULT_RULES) == 0
    assert raise_from_findings(db, chest, DEFAULT_RULES) == 1
    assert raise_from_findings(db, earl, DEFAULT_RULES) == 1
    assert raise_from_findings(db, queued, DEFAULT_RULES) == 0
    got = alerts(db)
    assert [(a.kind, a.severity, a.state) for a in got] == [
        ("rescan", "critical", AlertState.OPEN),
        ("urgent_finding", "critical", AlertState.OPEN),
        ("earl_disagreement", "info", AlertState.OPEN)]
    assert got[0].dedupe_key.startswith(f"rescan:{motion}:") and got[0].job_id == motion
    assert "CT1" in got[0].message and "rescan_recommended = true" in got[0].message
    for alert in got:
        assert not any(p in alert.message for p in PHI + ("ACC1", "North"))
    with pytest.raises(ValueError, match="no job"):
        raise_from_findings(db, 999_999, DEFAULT_RULES)


def test_min_value_rule(db: Database) -> None:
    rule = AlertRule(kind="high", analyzer="motion", finding="motion_score", min_value=0.5)
    low = make_job(db, [{"name": "motion_score", "value_num": 0.2}])
    high = make_job(db, [{"name": "motion_score", "value_num": 0.7, "unit": "1"}])
    assert raise_from_findings(db, low, (rule,)) == 0
    assert raise_from_findings(db, high, (rule,)) == 1


# --------------------------------------------------------------------------- sending


def test_webhook_and_email_receive_signed_minimal_alerts(
    db: Database, receiver: Receiver, smtp_sink: tuple[int, _Sink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QCD_TEST_HOOK_SECRET", SECRET)
    port, sink = smtp_sink
    settings = AlertSettings(
        webhooks=(WebhookChannel("hook", receiver.url, secret_env="QCD_TEST_HOOK_SECRET"),),
        emails=(EmailChannel("mail", "127.0.0.1", "qcd@example.org",
                             ("physicist@example.org", "tech@example.org"), port=port),),
        routes=(AlertRoute(channels=("hook", "mail")),))
    job = make_job(db, [RESCAN], station="SCANCO-1")
    assert raise_from_findings(db, job, DEFAULT_RULES) == 1
    dispatcher = AlertDispatcher(db, settings)
    counts = dispatcher.sweep()
    assert counts == {"routed": 2, "sent": 2, "retried": 0, "dead": 0, "suppressed": 0}

    (headers, body), = receiver.requests
    assert headers["content-type"] == "application/json"
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER.lower()] == f"sha256={expected}"
    doc = json.loads(body)
    assert set(doc) == PAYLOAD_KEYS
    assert doc["kind"] == "rescan" and doc["severity"] == "critical"
    assert doc["station"] == "SCANCO-1" and doc["modality"] == "CT"
    assert doc["analyzer"] == "motion" and doc["finding"] == "rescan_recommended"
    assert doc["value"] == "true" and doc["series_received_at"] == "2026-11-27T08:00:00"
    assert doc["series_uid"].startswith("1.2.826.0.1.3680043.10.2.")
    assert doc["report_sop_uid"].startswith("1.2.826.0.1.3680043.10.3.")
    for secret in PHI + ("ACC1", "North"):
        assert secret.encode() not in body

    (mail_from, rcpts, msg), = sink.mails
    assert mail_from == "qcd@example.org"
    assert rcpts == ["physicist@example.org", "tech@example.org"]
    assert msg["Subject"] == "[qcd] critical rescan SCANCO-1"
    text = msg.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "rescan_recommended" in text and doc["series_uid"] in text
    assert not any(p in text for p in PHI + ("ACC1",))

    rows = notifications(db)
    assert [(r.channel, r.state, r.attempts) for r in rows] == [
        ("hook", NotificationState.SENT, 1), ("mail", NotificationState.SENT, 1)]
    assert all(r.sent_at is not None for r in rows)

    # de-duplicated: raising and sweeping again sends nothing more
    assert raise_from_findings(db, job, DEFAULT_RULES) == 0
    assert dispatcher.sweep()["routed"] == 0
    assert len(receiver.requests) == 1 and len(sink.mails) == 1
    assert len(alerts(db)) == 1 and len(notifications(db)) == 2


def test_routes_filter_by_severity_analyzer_station_and_site(db: Database) -> None:
    senders = {name: FakeSender() for name in ("crit", "earl", "ct1", "south")}
    settings = AlertSettings(routes=(
        AlertRoute(channels=("crit",), severities=("critical",)),
        AlertRoute(channels=("earl",), analyzers=("earl",)),
        AlertRoute(channels=("ct1",), stations=("ct1",)),  # case-insensitive
        AlertRoute(channels=("south",), sites=("South",), severities=("critical",)),
    ))
    a = make_job(db, [RESCAN], station="CT1", site="North")
    b = make_job(db, [RESCAN], station="CT2", site="South")
    c = make_job(db, [{"name": "header_cnn_disagreement", "value_text": "x"}],
                 analyzer="earl", station="PET1", site="South", modality="PT")
    for job in (a, b, c):
        raise_from_findings(db, job, DEFAULT_RULES)
    ids = {al.job_id: al.id for al in alerts(db)}
    counts = AlertDispatcher(db, settings, senders).sweep()
    assert counts["routed"] == counts["sent"] == 5
    got = {name: sorted(p.alert_id for p in s.sent) for name, s in senders.items()}
    assert got == {"crit": sorted([ids[a], ids[b]]), "earl": [ids[c]], "ct1": [ids[a]],
                   "south": [ids[b]]}


def test_rate_limit_suppresses_and_records_why(db: Database) -> None:
    sender = FakeSender()
    settings = AlertSettings(routes=(ALL,), max_per_channel_per_hour=2)
    for _ in range(3):
        raise_from_findings(db, make_job(db, [RESCAN]), DEFAULT_RULES)
    dispatcher = AlertDispatcher(db, settings, {"hook": sender})
    counts = dispatcher.sweep()
    assert (counts["sent"], counts["suppressed"]) == (2, 1)
    rows = notifications(db)
    assert [r.state for r in rows] == [NotificationState.SENT] * 2 + [NotificationState.SUPPRESSED]
    assert "rate limit: 2 notifications per hour" in (rows[2].last_error or "")
    # an hour later the window has room again
    raise_from_findings(db, make_job(db, [RESCAN]), DEFAULT_RULES)
    later = dispatcher.sweep(utcnow() + dt.timedelta(minutes=61))
    assert (later["sent"], later["suppressed"]) == (1, 0)


def test_acknowledged_alert_is_not_sent(db: Database) -> None:
    sender = FakeSender()
    raise_from_findings(db, make_job(db, [RESCAN]), DEFAULT_RULES)
    dispatcher = AlertDispatcher(db, AlertSettings(routes=(ALL,)), {"hook": sender})
    with db.session() as s:  # route it, then acknowledge before the send
        s.execute(update(Alert).values(state=AlertState.ACKNOWLEDGED))
    assert dispatcher.sweep()["routed"] == 0  # acknowledged alerts are not routed
    with db.session() as s:
        s.execute(update(Alert).values(state=AlertState.OPEN))
    dispatcher._route(utcnow())
    with db.session() as s:
        s.execute(update(Alert).values(state=AlertState.ACKNOWLEDGED))
    assert dispatcher.sweep()["suppressed"] == 1 and sender.sent == []
    assert notifications(db)[0].last_error == "alert acknowledged before it was sent"


def test_receiver_down_retries_with_backoff_then_dead(db: Database) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    settings = AlertSettings(webhooks=(WebhookChannel("hook", url, timeout=2.0),),
                             routes=(ALL,), max_attempts=3, retry_seconds=60.0)
    raise_from_findings(db, make_job(db, [RESCAN]), DEFAULT_RULES)
    dispatcher = AlertDispatcher(db, settings)
    t0 = utcnow()
    assert dispatcher.sweep(t0)["retried"] == 1
    row, = notifications(db)
    assert row.state == NotificationState.PENDING and row.attempts == 1
    assert row.next_attempt_at == t0 + dt.timedelta(seconds=60)
    assert "unreachable" in (row.last_error or "")
    assert dispatcher.sweep(t0 + dt.timedelta(seconds=30))["retried"] == 0  # not due yet
    assert dispatcher.sweep(t0 + dt.timedelta(seconds=61))["retried"] == 1
    assert notifications(db)[0].next_attempt_at == t0 + dt.timedelta(seconds=61 + 120)
    assert dispatcher.sweep(t0 + dt.timedelta(seconds=200))["dead"] == 1
    row, = notifications(db)
    assert row.state == NotificationState.DEAD and row.attempts == 3
    assert (row.last_error or "").startswith("gave up after 3 attempts")
    assert dispatcher.sweep(t0 + dt.timedelta(hours=2)) == {
        "routed": 0, "sent": 0, "retried": 0, "dead": 0, "suppressed": 0}


def test_4xx_is_dead_at_once_and_5xx_is_retried(db: Database, receiver: Receiver) -> None:
    settings = AlertSettings(webhooks=(WebhookChannel("hook", receiver.url),), routes=(ALL,))
    dispatcher = AlertDispatcher(db, settings)
    receiver.status = 503
    raise_from_findings(db, make_job(db, [RESCAN]), DEFAULT_RULES)
    assert dispatcher.sweep()["retried"] == 1
    receiver.status = 400
    t1 = utcnow() + dt.timedelta(seconds=61)
    assert dispatcher.sweep(t1)["dead"] == 1
    row, = notifications(db)
    assert row.state == NotificationState.DEAD and row.attempts == 2
    assert row.last_error == "webhook hook answered HTTP 400"
    assert SIGNATURE_HEADER.lower() not in receiver.requests[0][0]  # no secret: unsigned


# --------------------------------------------------------------------------- construction


def test_construction_fails_fast(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCD_TEST_MISSING", raising=False)
    hook = WebhookChannel("hook", "http://127.0.0.1:9/", secret_env="QCD_TEST_MISSING")
    with pytest.raises(ConfigError, match="QCD_TEST_MISSING"):
        AlertDispatcher(db, AlertSettings(webhooks=(hook,)))
    with pytest.raises(ValueError, match="names channel 'nope'"):
        AlertDispatcher(db, AlertSettings(routes=(AlertRoute(channels=("nope",)),)))
    dup = WebhookChannel("x", "http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="unique"):
        AlertDispatcher(db, AlertSettings(webhooks=(dup, dup)))
