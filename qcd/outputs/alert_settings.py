"""Settings of alert notification (stdlib only, so that loading the config stays fast).

Rules turn findings into ``alerts`` rows; routes send alerts to channels (webhooks and
e-mail). See :mod:`qcd.outputs.alerts`.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("info", "warning", "critical")
"""Allowed alert severities, least to most severe."""


@dataclass(frozen=True)
class WebhookChannel:
    """An HTTP(S) endpoint that receives each alert as a JSON POST."""

    name: str
    """Stable key stored on each notification row; renaming it orphans pending rows."""
    url: str
    secret_env: str = ""
    """Name of an environment variable holding the HMAC-SHA256 secret; empty = unsigned."""
    timeout: float = 10.0


@dataclass(frozen=True)
class EmailChannel:
    """An SMTP relay and the recipients of plain-text alert mails."""

    name: str
    host: str
    sender: str
    recipients: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    timeout: float = 10.0


@dataclass(frozen=True)
class AlertRule:
    """A finding that raises an alert.

    Matches a finding of ``analyzer`` named ``finding`` when every condition given holds:
    its ``value_text`` is one of ``values`` (case-insensitive; empty = any) and its
    ``value_num`` is at least ``min_value`` (None = any).
    """

    kind: str
    analyzer: str
    finding: str
    values: tuple[str, ...] = ()
    min_value: float | None = None
    severity: str = "warning"


@dataclass(frozen=True)
class AlertRoute:
    """Sends matching alerts to ``channels``; every empty filter matches anything.

    ``stations`` match ``series.station_name`` and ``sites`` ``series.institution_name``
    (both case-insensitive, exact).
    """

    channels: tuple[str, ...]
    severities: tuple[str, ...] = ()
    analyzers: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(kind="rescan", analyzer="motion", finding="rescan_recommended",
              values=("true", "yes"), severity="critical"),
    AlertRule(kind="urgent_finding", analyzer="chest", finding="urgent", severity="critical"),
    AlertRule(kind="earl_disagreement", analyzer="earl", finding="header_cnn_disagreement",
              severity="info"),
)


@dataclass(frozen=True)
class AlertSettings:
    """Alert rules, channels, routes, rate limit and retries."""

    webhooks: tuple[WebhookChannel, ...] = ()
    emails: tuple[EmailChannel, ...] = ()
    rules: tuple[AlertRule, ...] = DEFAULT_RULES
    routes: tuple[AlertRoute, ...] = ()
    max_per_channel_per_hour: int = 60
    """Notifications sent per channel in any rolling hour; more are SUPPRESSED."""
    max_attempts: int = 5
    """A notification that failed this many times is DEAD."""
    retry_seconds: float = 60.0
    """After failed attempt n the notification waits ``retry * 2**(n-1)`` seconds (max 1 h)."""
    sweep_interval_seconds: float = 5.0
