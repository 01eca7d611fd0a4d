"""Alerts for rescans and urgent findings: raised from findings, routed, sent, recorded.

:func:`raise_from_findings` turns the findings of a DONE job that match an
:class:`~qcd.outputs.alert_settings.AlertRule` into ``alerts`` rows (idempotent on
``dedupe_key``). :class:`AlertDispatcher` routes each new OPEN alert to channels (one
``alert_notifications`` row per alert and channel, so each alert records its delivery
status), sends the due ones through webhooks (JSON POST, HMAC-SHA256 signed) or e-mail,
applies a per-channel rate limit, and retries with back-off until DEAD.

Alert content is built only from the database: station, modality, series receive time,
analyzer, finding name and value, and UIDs. qcd stores no patient name, ID or birth date,
and this module reads no DICOM file, so none can leak into a notification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Protocol

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from qcd.clock import SYSTEM_CLOCK, Clock, due, longest_waits
from qcd.db.models import AlertNotification, NotificationState
from qcd.db.engine import Database
from qcd.db.models import Alert, AlertState, Finding, Job, JobState, Series, utcnow
from qcd.errors import ConfigError
from qcd.outputs.alert_settings import (
    AlertRoute,
    AlertRule,
    AlertSettings,
    EmailChannel,
    WebhookChannel,
)
from qcd.outputs.delivery import insert_ignore
from qcd.secrets import read_secret

__all__ = [
    "AlertDispatcher",
    "AlertPayload",
    "EmailSender",
    "SendResult",
    "Sender",
    "WebhookSender",
    "raise_from_findings",
    "rule_matches",
    "sign",
]

LOGGER = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-QCD-Signature"
ROUTE_WINDOW = dt.timedelta(days=1)
"""Only alerts created this recently are routed (no flood of old alerts on first start)."""
MAX_RETRY_DELAY = 3600.0
RATE_WINDOW = dt.timedelta(hours=1)


# --------------------------------------------------------------------------- raising


def rule_matches(rule: AlertRule, finding: Finding) -> bool:
    """Whether ``finding`` triggers ``rule`` (every condition the rule sets must hold)."""
    if rule.analyzer != finding.analyzer or rule.finding != finding.name:
        return False
    if rule.values:
        text = (finding.value_text or "").strip().lower()
        if text not in {v.strip().lower() for v in rule.values}:
            return False
    if rule.min_value is None:
        return True
    return finding.value_num is not None and finding.value_num >= rule.min_value


def raise_from_findings(db: Database, job_id: int, rules: tuple[AlertRule, ...]) -> int:
    """Create one OPEN alert per (rule, matching finding) of a DONE job; return how many are new.

    Idempotent: the dedupe key is ``"{kind}:{job_id}:{finding_id}"``, so running it again
    (or concurrently) adds nothing. A job that is not DONE raises nothing (returns 0).
    """
    added = 0
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job with id {job_id}")
        if job.state != JobState.DONE:
            return 0
        series = session.get(Series, job.series_id)
        findings = session.scalars(
            select(Finding).where(Finding.job_id == job_id).order_by(Finding.id)).all()
        for finding in findings:
            for rule in rules:
                if not rule_matches(rule, finding):
                    continue
                added += insert_ignore(
                    session, Alert, ["dedupe_key"],
                    dedupe_key=f"{rule.kind}:{job_id}:{finding.id}"[:128],
                    series_id=job.series_id, job_id=job_id, kind=rule.kind[:32],
                    severity=rule.severity, message=_message(rule, finding, series, job),
                    state=AlertState.OPEN, created_at=utcnow())
    if added:
        LOGGER.info("job %d raised %d alert(s)", job_id, added)
    return added


def _value(finding: Finding) -> str | None:
    if finding.value_num is not None:
        return f"{finding.value_num:g}" + (f" {finding.unit}" if finding.unit else "")
    return finding.value_text


def _message(rule: AlertRule, finding: Finding, series: Series | None, job: Job) -> str:
    station = (series.station_name if series else None) or "unknown station"
    modality = (series.modality if series else None) or "?"
    received = _iso(series.first_received_at) if series else "?"
    uid = series.series_uid if series else "?"
    value = _value(finding)
    shown = f"{finding.name} = {value}" if value is not None else finding.name
    text = (f"{rule.severity.upper()} {rule.kind}: {job.analyzer} found {shown} on a "
            f"{modality} series from {station} received {received} UTC; "
            f"Series Instance UID {uid}")
    if job.report_sop_uid:
        text += f"; report SOP Instance UID {job.report_sop_uid}"
    return text


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class AlertPayload:
    """Everything a notification may carry; the webhook's JSON body is exactly these keys.

    No patient name, ID, birth date or accession number: UIDs are the handles.
    """

    alert_id: int
    kind: str
    severity: str
    message: str
    created_at: str
    station: str | None
    modality: str | None
    series_received_at: str | None
    """When qcd first received the series (naive UTC, ISO 8601)."""
    analyzer: str | None
    finding: str | None
    value: str | None
    series_uid: str | None
    report_sop_uid: str | None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def subject(self) -> str:
        return f"[qcd] {self.severity} {self.kind} {self.station or 'unknown station'}"

    def text(self) -> str:
        lines = [self.message, ""]
        lines += [f"{key}: {value}" for key, value in asdict(self).items()
                  if key != "message" and value is not None]
        return "\n".join(lines) + "\n"


PAYLOAD_KEYS = frozenset(AlertPayload.__dataclass_fields__)


# --------------------------------------------------------------------------- senders


@dataclass(frozen=True)
class SendResult:
    """What happened to one notification."""

    ok: bool
    detail: str = ""
    permanent: bool = False
    """When not ok: retrying cannot help (a 4xx answer, a refused recipient)."""


class Sender(Protocol):
    """Sends one alert on one channel; must not raise on network or peer errors."""

    def send(self, payload: AlertPayload) -> SendResult: ...


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-QCD-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POSTs the payload as JSON; signs it when the channel names a secret variable.

    2xx is sent; 408, 429 and 5xx answers and connection errors are retried; other
    answers (4xx, redirects that urllib does not follow) are permanent.

    Raises
    ------
    ConfigError
        The channel names a ``secret_env`` that is not set (checked once, here).
    """

    def __init__(self, channel: WebhookChannel,
                 environ: Mapping[str, str] | None = None) -> None:
        self.channel = channel
        env = os.environ if environ is None else environ
        self._secret: bytes | None = None
        if channel.secret_env:
            secret = read_secret(channel.secret_env, f"webhook {channel.name} secret_env", env)
            if not secret:
                raise ConfigError(f"webhook {channel.name}: environment variable "
                                  f"{channel.secret_env} (its secret_env) is not set "
                                  f"(nor {channel.secret_env}_FILE)")
            self._secret = secret.encode()

    def send(self, payload: AlertPayload) -> SendResult:
        body = payload.to_json()
        headers = {"Content-Type": "application/json", "User-Agent": "qcd-alerts"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        request = urllib.request.Request(self.channel.url, data=body, headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.channel.timeout) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return SendResult(False, f"webhook {self.channel.name} unreachable: {reason}")
        if 200 <= status < 300:
            return SendResult(True, f"HTTP {status}")
        retry = status >= 500 or status in (408, 429)
        return SendResult(False, f"webhook {self.channel.name} answered HTTP {status}",
                          permanent=not retry)


class EmailSender:
    """Sends a plain-text mail per alert through an SMTP relay (optionally STARTTLS).

    5xx SMTP replies (refused sender, recipients or data) are permanent; 4xx replies,
    disconnects and connection errors are retried.
    """

    def __init__(self, channel: EmailChannel) -> None:
        self.channel = channel

    def send(self, payload: AlertPayload) -> SendResult:
        c = self.channel
        msg = EmailMessage()
        msg["Subject"] = payload.subject()
        msg["From"] = c.sender
        msg["To"] = ", ".join(c.recipients)
        msg.set_content(payload.text())
        try:
            with smtplib.SMTP(c.host, c.port, timeout=c.timeout) as smtp:
                if c.starttls:  # verify the relay's certificate and host name
                    smtp.starttls(context=ssl.create_default_context())
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            return SendResult(False, f"mail {c.name}: all recipients refused {codes}",
                              permanent=all(code >= 500 for code in codes))
        except smtplib.SMTPResponseException as exc:
            return SendResult(False, f"mail {c.name}: SMTP {exc.smtp_code} {exc.smtp_error!r}",
                              permanent=exc.smtp_code >= 500)
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(False, f"mail {c.name}: {exc!r}")
        if refused:
            return SendResult(True, f"some recipients refused: {sorted(refused)}")
        return SendResult(True)


# --------------------------------------------------------------------------- dispatching


@dataclass(frozen=True)
class _Context:
    """What routing and the payload need to know about one alert."""

    payload: AlertPayload
    site: str | None


def route_matches(route: AlertRoute, severity: str, analyzer: str | None,
                  station: str | None, site: str | None) -> bool:
    """Whether an alert passes every non-empty filter of ``route``."""

    def ok(allowed: tuple[str, ...], value: str | None) -> bool:
        if not allowed:
            return True
        return value is not None and value.strip().lower() in {a.strip().lower()
                                                               for a in allowed}

    return (ok(route.severities, severity) and ok(route.analyzers, analyzer)
            and ok(route.stations, station) and ok(route.sites, site))


@dataclass(frozen=True)
class _Claimed:
    id: int
    alert_id: int
    channel: str


class AlertDispatcher:
    """Routes new alerts to channels and sends the due notifications.

    Parameters
    ----------
    db
        Holds ``alerts``, ``alert_notifications`` and the series/jobs/findings they name.
    settings
        Channels, routes, rate limit and retries.
    senders
        Per channel name; replaces the default sender built from the settings
        (:class:`WebhookSender`, :class:`EmailSender`) for the names it contains.
    clock
        Where ``now`` comes from when :meth:`sweep` is not given one.

    Raises
    ------
    ValueError
        Duplicate channel names, or a route naming a channel without a sender.
    ConfigError
        A webhook's ``secret_env`` variable is not set.
    """

    def __init__(self, db: Database, settings: AlertSettings,
                 senders: Mapping[str, Sender] | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        names = [c.name for c in settings.webhooks] + [c.name for c in settings.emails]
        if len(set(names)) != len(names):
            raise ValueError(f"alert channel names must be unique, got {names}")
        given = dict(senders or {})
        built: dict[str, Sender] = {}
        for hook in settings.webhooks:
            built[hook.name] = given[hook.name] if hook.name in given else WebhookSender(hook)
        for mail in settings.emails:
            built[mail.name] = given[mail.name] if mail.name in given else EmailSender(mail)
        built.update(given)
        self.senders: dict[str, Sender] = built
        for i, route in enumerate(settings.routes):
            for name in route.channels:
                if name not in self.senders:
                    raise ValueError(f"alerts.routes[{i}] names channel {name!r}; "
                                     f"known channels: {sorted(self.senders)}")
        longest = max([c.timeout for c in settings.webhooks] +
                      [c.timeout for c in settings.emails] + [10.0])
        self.claim_lease = dt.timedelta(seconds=4 * longest)
        self._waits = longest_waits(self._delay, self.claim_lease, settings.max_attempts)
        """Attempts so far -> the longest wait a row can have been given (:func:`due`)."""

    def _delay(self, attempts: int) -> float:
        return min(self.settings.retry_seconds * 2 ** (attempts - 1), MAX_RETRY_DELAY)

    def sweep(self, now: dt.datetime | None = None) -> dict[str, int]:
        """Route new alerts, then send every due notification once.

        Returns counts: ``routed`` (new notification rows), ``sent``, ``retried``,
        ``dead`` and ``suppressed``.
        """
        at = now or self.clock.wall()
        counts = {"routed": self._route(at), "sent": 0, "retried": 0, "dead": 0,
                  "suppressed": 0}
        claimed = self._claim(at, counts)
        for row in claimed:
            self._send(row, at, counts)
        return counts

    # ---- routing

    def _route(self, now: dt.datetime) -> int:
        if not self.settings.routes:
            return 0
        added = 0
        with self.db.session() as session:
            alerts = session.scalars(
                select(Alert)
                .where(Alert.state == AlertState.OPEN, Alert.created_at >= now - ROUTE_WINDOW,
                       ~exists().where(AlertNotification.alert_id == Alert.id))
                .order_by(Alert.id)).all()
            for alert in alerts:
                ctx = _context(session, alert)
                channels: dict[str, None] = {}
                for route in self.settings.routes:
                    if route_matches(route, alert.severity, ctx.payload.analyzer,
                                     ctx.payload.station, ctx.site):
                        channels.update(dict.fromkeys(route.channels))
                for channel in channels:
                    added += insert_ignore(
                        session, AlertNotification, ["alert_id", "channel"],
                        alert_id=alert.id, channel=channel, state=NotificationState.PENDING,
                        attempts=0, next_attempt_at=None, created_at=now)
        if added:
            LOGGER.info("routed alerts: %d new notification(s)", added)
        return added

    # ---- sending

    def _claim(self, now: dt.datetime, counts: dict[str, int]) -> list[_Claimed]:
        """Take the due rows (pushing them past a lease); suppress those over the limit."""
        limit = self.settings.max_per_channel_per_hour
        with self.db.session() as session:
            query = (
                select(AlertNotification)
                .where(AlertNotification.state == NotificationState.PENDING,
                       AlertNotification.channel.in_(list(self.senders)),
                       due(AlertNotification.next_attempt_at, AlertNotification.attempts, now,
                           self._waits))
                .order_by(AlertNotification.id))
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            used: dict[str, int] = {channel: count for channel, count in session.execute(
                select(AlertNotification.channel, func.count())
                .where(AlertNotification.state == NotificationState.SENT,
                       AlertNotification.sent_at > now - RATE_WINDOW)
                .group_by(AlertNotification.channel)).all()}
            claimed: list[_Claimed] = []
            for row in rows:
                alert = session.get(Alert, row.alert_id)
                if alert is None or alert.state != AlertState.OPEN:
                    row.state = NotificationState.SUPPRESSED
                    row.last_error = "alert acknowledged before it was sent"
                    row.next_attempt_at = None
                    counts["suppressed"] += 1
                    continue
                if used.get(row.channel, 0) >= limit:
                    row.state = NotificationState.SUPPRESSED
                    row.last_error = (f"rate limit: {limit} notifications per hour on "
                                      f"channel {row.channel} reached")
                    row.next_attempt_at = None
                    counts["suppressed"] += 1
                    LOGGER.warning("alert %d not sent to %s: %s", row.alert_id, row.channel,
                                   row.last_error)
                    continue
                used[row.channel] = used.get(row.channel, 0) + 1  # reserve a slot
                row.next_attempt_at = now + self.claim_lease
                claimed.append(_Claimed(row.id, row.alert_id, row.channel))
            return claimed

    def _send(self, claimed: _Claimed, now: dt.datetime, counts: dict[str, int]) -> None:
        with self.db.session() as session:
            alert = session.get(Alert, claimed.alert_id)
            if alert is None:
                return
            payload = _context(session, alert).payload
        try:
            result = self.senders[claimed.channel].send(payload)
        except Exception as exc:  # a bug in a sender must not wedge the outbox
            LOGGER.exception("alert sender for channel %s failed", claimed.channel)
            result = SendResult(False, f"sender error: {exc!r}")
        self._record(claimed, result, now, counts)

    def _record(self, claimed: _Claimed, result: SendResult, now: dt.datetime,
                counts: dict[str, int]) -> None:
        s = self.settings
        with self.db.session() as session:
            row = session.get(AlertNotification, claimed.id, with_for_update=True)
            if row is None or row.state != NotificationState.PENDING:
                return
            row.attempts += 1
            if result.ok:
                row.state = NotificationState.SENT
                row.sent_at = now
                row.next_attempt_at = None
                row.last_error = result.detail[:2000] or None
                outcome = "sent"
            elif not result.permanent and row.attempts < s.max_attempts:
                delay = self._delay(row.attempts)
                row.next_attempt_at = now + dt.timedelta(seconds=delay)
                row.last_error = result.detail[:2000]
                outcome = "retried"
            else:
                text = result.detail
                if not result.permanent:
                    text = f"gave up after {row.attempts} attempts; last error: {text}"
                row.state = NotificationState.DEAD
                row.next_attempt_at = None
                row.last_error = text[:2000]
                outcome = "dead"
            counts[outcome] += 1
        LOGGER.info("alert %d on %s: %s (attempt %d)%s", claimed.alert_id, claimed.channel,
                    outcome, row.attempts, f": {result.detail}" if not result.ok else "")


def _finding_id(alert: Alert) -> int | None:
    """The finding behind an alert raised by :func:`raise_from_findings` (from its key)."""
    parts = alert.dedupe_key.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != alert.kind or not parts[2].isdigit():
        return None
    if alert.job_id is None or parts[1] != str(alert.job_id):
        return None
    return int(parts[2])


def _context(session: Session, alert: Alert) -> _Context:
    series = session.get(Series, alert.series_id) if alert.series_id is not None else None
    job = session.get(Job, alert.job_id) if alert.job_id is not None else None
    finding_id = _finding_id(alert)
    finding = session.get(Finding, finding_id) if finding_id is not None else None
    if finding is not None and finding.job_id != alert.job_id:
        finding = None
    payload = AlertPayload(
        alert_id=alert.id, kind=alert.kind, severity=alert.severity, message=alert.message,
        created_at=alert.created_at.isoformat(timespec="seconds"),
        station=series.station_name if series else None,
        modality=series.modality if series else None,
        series_received_at=_iso(series.first_received_at) if series else None,
        analyzer=job.analyzer if job else None,
        finding=finding.name if finding else None,
        value=_value(finding) if finding else None,
        series_uid=series.series_uid if series else None,
        report_sop_uid=job.report_sop_uid if job else None,
    )
    return _Context(payload, series.institution_name if series else None)

