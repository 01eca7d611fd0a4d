"""One typed, immutable settings object: defaults < TOML file < ``QCD_*`` environment.

Settings are loaded once by the entry point and passed down; nothing reads the
environment or the file again. Environment keys are ``QCD_<SECTION>__<KEY>``, e.g.
``QCD_INGEST__PORT=11113`` (nested tables: ``QCD_INGEST__TLS__ENABLED``); lists are comma-separated; ``QCD_CONFIG`` names the TOML
file. Every invalid value raises :class:`~qcd.errors.ConfigError` naming the key and
what is allowed.
"""

from __future__ import annotations

import copyreg
import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcd.errors import ConfigError
from qcd.outputs.alert_settings import SEVERITIES, AlertSettings
from qcd.outputs.settings import ClientTlsSettings, DeliverySettings, OutputSettings
from qcd.secrets import check_private_file, pem_has_private_key
from qcd.workers.inference import DEVICE_CHOICES, DEVICE_RE, InferenceSettings

ENV_PREFIX = "QCD_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
MODALITY_RE = re.compile(r"^[A-Z]{2,16}$")
DESTINATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
BUNDLE_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AE_TITLE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")


def _read_only(table: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    return types.MappingProxyType(table)


def _pickle_mapping(proxy: types.MappingProxyType[Any, Any]) -> tuple[Any, ...]:
    return _read_only, (dict(proxy),)


# Settings cross into spawned processes (ingest receivers, qcd.ingest.receivers); their
# read-only tables are mapping proxies, which pickle cannot take on its own.
copyreg.pickle(types.MappingProxyType, _pickle_mapping)


@dataclass(frozen=True)
class NodeSettings:
    """Identity of this qcd node."""

    ae_title: str = "QCD"
    """Our DICOM AE title (1-16 characters, no backslash)."""
    site: str = ""
    """Free-text site label used in logs and dashboards (never patient data)."""


@dataclass(frozen=True)
class TlsSettings:
    """Optional TLS on the DICOM listener (both ends of the trust chain are files)."""

    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    """CA bundle used to verify client certificates; empty means no client check."""
    require_client_cert: bool = False


@dataclass(frozen=True)
class IngestSettings:
    """The Storage SCP and its association policy."""

    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    """Calling AE titles accepted; empty accepts every caller (logged at start)."""
    allowed_networks: tuple[str, ...] = ()
    """Source IP networks accepted (CIDR); empty accepts every address (logged)."""
    require_called_aet: bool = True
    """Reject associations whose called AE title is not ours."""
    max_associations: int = 16
    """Open associations at once, per receiving process (see ``processes``)."""
    processes: int = 1
    """Processes receiving on the listener's port: the daemon and ``processes - 1`` extra
    receivers (Linux ``SO_REUSEPORT``; the kernel spreads new associations over them).
    One process took ~130-170 instances/s of 512 KB on a 2-core test machine, where a
    second one gained little because the host's cores were already busy; raise this on
    a host with idle cores whose scanners send more than that (docs/BENCHMARKS.md)."""
    reactor: str = "event"
    """How each accepted association's two pynetdicom threads wait for work: ``event``
    (they sleep until the peer sends or a response is queued, qcd.ingest.reactor) or
    ``polling`` (pynetdicom's own loops, which wake every millisecond). ``event`` needs
    the pynetdicom 3.0 series; with another one qcd logs a warning and polls."""
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 1048576
    """Maximum PDU we receive; 1 MiB measured faster than the 16 KiB default."""
    drain_timeout: float = 30.0
    """Seconds SIGTERM waits for in-flight associations before aborting them."""
    max_inflated_mb: int = 256
    """Largest size (MiB) a deflated data set may inflate to; beyond it the instance is
    refused with 0xC214 (a decompression bomb). Checking one costs up to twice this."""
    tls: TlsSettings = field(default_factory=TlsSettings)

    @property
    def max_inflated_bytes(self) -> int:
        """``max_inflated_mb`` in bytes, as the ingest checks take it."""
        return self.max_inflated_mb << 20


@dataclass(frozen=True)
class SpoolSettings:
    """Where received instances are kept."""

    path: str = "var/spool"
    min_free_bytes: int = 512 * 1024 * 1024
    """Refuse instances (status 0xA700) when free space would drop below this."""
    fsync: bool = True
    """fsync file and directory before answering Success; only turn off for tests."""


@dataclass(frozen=True)
class DatabaseSettings:
    """The SQL database (SQLite by default, PostgreSQL in production)."""

    url: str = "sqlite:///var/qcd.db"
    auto_upgrade: bool = True
    """Apply pending migrations when ``qcd serve`` starts."""
    echo: bool = False


@dataclass(frozen=True)
class AssemblySettings:
    """When is a series complete."""

    quiet_seconds: float = 10.0
    """A series is complete when no instance arrived for this long."""
    quiet_seconds_by_modality: Mapping[str, float] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    """Per-modality overrides, e.g. ``{PT = 30}``."""
    sweep_interval_seconds: float = 1.0
    reopen_on_late_instance: bool = True
    """A late instance re-opens a completed series for re-analysis."""


@dataclass(frozen=True)
class RouteRule:
    """A declarative rule sending matching series to one analyzer.

    Empty fields match anything; ``modalities`` is a set, the others are regular
    expressions searched case-insensitively.
    """

    analyzer: str
    modalities: tuple[str, ...] = ()
    body_part: str = ""
    manufacturer: str = ""
    series_description: str = ""


DEFAULT_ROUTES: tuple[RouteRule, ...] = (
    RouteRule(analyzer="earl", modalities=("PT",)),
    RouteRule(analyzer="motion", modalities=("CT",), manufacturer="scanco"),
    # CT volumes a site tags as HR-pQCT (another vendor, or a re-export)
    RouteRule(analyzer="motion", modalities=("CT",),
              series_description=r"hr-?\s*p?qct|xtreme\s*ct"),
    # an empty Body Part Examined routes too: the analyzer then decides from ViewPosition
    RouteRule(analyzer="chest", modalities=("CR", "DX"), body_part=r"chest|thorax|lung|^$"),
    RouteRule(
        analyzer="atrium",
        modalities=("MR",),
        series_description=r"atri|cardiac|heart|cine|lge|\bla\b",
    ),
)


@dataclass(frozen=True)
class RoutingSettings:
    """Routing rules; every matching rule yields one job."""

    rules: tuple[RouteRule, ...] = DEFAULT_ROUTES


@dataclass(frozen=True)
class WorkerSettings:
    """The executor that runs analysis jobs."""

    mode: str = "local"
    """``local``: worker threads in ``qcd serve`` (nothing else needed). ``distributed``:
    ``qcd serve`` publishes each QUEUED job as a Celery task ([celery]) and ``qcd worker``
    processes on any node run them; PostgreSQL and a shared spool path are then required."""
    threads: int = 2
    """Worker threads in ``qcd serve``; 0 runs no analysis on this node."""
    poll_interval_seconds: float = 0.5
    max_attempts: int = 3
    """A job that failed this many times stays FAILED (with its reason)."""
    retry_backoff_seconds: float = 30.0
    """Delay before retry n is backoff * 2**(n-1)."""
    lease_seconds: float = 900.0
    """A RUNNING job whose lease expired (its worker died) is queued again."""
    models_path: str = ""
    """Root of the model bundles (``<name>/<version>/model.json``); empty = the
    ``models/`` folder shipped beside the ``qcd`` package (works from any directory)."""
    bundle_versions: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    """Pinned bundle version by name, e.g. ``{earl = "1.0.0"}`` (env
    ``QCD_WORKERS__BUNDLE_VERSIONS=earl=1.0.0``); a bundle not named here is used in its
    newest version under ``models_path``."""


@dataclass(frozen=True)
class CelerySettings:
    """The distributed backend (``workers.mode = "distributed"``): Celery on RabbitMQ."""

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/qcd"
    """AMQP URL, with its own vhost (``/qcd``)."""
    queue_prefix: str = "qcd"
    """Tasks of analyzer A go to queue ``<prefix>.<A>`` (``<prefix>.<A>.gpu`` when A is
    in ``gpu_analyzers``); a worker consumes the queues of the analyzers it runs."""
    gpu_analyzers: tuple[str, ...] = ()
    task_time_limit: float = 600.0
    """Hard limit (seconds) per task, enforced by the prefork pool; keep it below
    ``workers.lease_seconds`` and RabbitMQ's consumer_timeout (default 1800 s)."""
    task_soft_time_limit: float = 540.0
    max_retries: int = 10
    """Celery retries of a task that hit an infrastructure error (database, broker)."""
    retry_backoff_seconds: float = 5.0
    retry_backoff_max_seconds: float = 300.0
    publish_interval_seconds: float = 1.0
    """How often ``qcd serve`` looks for QUEUED jobs to publish."""
    republish_seconds: float = 120.0
    """A job still QUEUED this long after its task was published is published again
    (a lost message or a broker that was down cannot strand it; duplicates are no-ops)."""
    pool: str = "prefork"
    """Celery pool of ``qcd worker``: ``prefork`` (time limits, crash isolation),
    ``threads`` (one process shares the batching predictors: one per GPU) or ``solo``."""
    concurrency: int = 0
    """Tasks at once per ``qcd worker`` process; 0 = ``workers.threads``."""


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and the web dashboard."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    dashboard: bool = True
    """Serve the web UI and JSON API (``/sites``, ``/operator``, ``/study``, ``/api``)."""
    auth: str = "local"
    """``local`` (users in the database, ``qcd user add``) or ``proxy`` (a reverse proxy
    authenticates and names the user in ``proxy_user_header``)."""
    proxy_user_header: str = "X-Remote-User"
    proxy_trusted_networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    """Only requests from these addresses may name a user in the header (the proxy's)."""
    proxy_default_role: str = "viewer"
    """Role of a proxy-authenticated user without a local account (viewer or operator)."""
    session_hours: float = 12.0
    secure_cookies: bool = False
    """Mark cookies ``Secure`` (set when the UI is served over HTTPS)."""
    viewer_url_template: str = ""
    """PACS viewer link, e.g. ``https://pacs/viewer?StudyInstanceUIDs={study_uid}``;
    ``{study_uid}`` and ``{series_uid}`` are filled in; empty = no links."""
    stow_enabled: bool = False
    """Accept STOW-RS pushes (``POST /dicom-web/studies``) from operators into the spool."""
    stow_max_bytes: int = 256 * 1024 * 1024
    """Largest STOW-RS request body accepted (larger: 413)."""


@dataclass(frozen=True)
class AuditSettings:
    """Retrospective audit: query a PACS (C-FIND), retrieve matching series into qcd.

    The PACS must know qcd's AE title (``move_destination``) as a modality for C-MOVE;
    with ``method = "get"`` qcd receives on the query association instead.
    """

    pacs_host: str = ""
    """Empty = no PACS configured (``qcd audit`` refuses to run, no scheduled job)."""
    pacs_port: int = 104
    pacs_ae_title: str = "PACS"
    calling_ae_title: str = ""
    """Our calling AE title towards the PACS; empty = ``node.ae_title``."""
    move_destination: str = ""
    """C-MOVE destination AE title (qcd's Storage SCP); empty = ``node.ae_title``."""
    method: str = "move"
    """``move`` (the PACS pushes to our listener), ``get`` (C-GET on one association) or
    ``dicomweb`` (QIDO-RS query, WADO-RS retrieve from ``dicomweb_url``)."""
    dicomweb_url: str = ""
    """DICOMweb service root for ``method = "dicomweb"``, e.g. ``http://pacs/dicom-web``."""
    dicomweb_auth_env: str = ""
    """Environment variable holding the Authorization header value (or ``<VAR>_FILE``)."""
    max_concurrent_retrieves: int = 2
    window: str = ""
    """Local-time window for retrieves, e.g. ``20:00-06:00``; empty = any time. The
    scheduled job keeps to it; ``qcd audit`` only with ``--respect-window``."""
    schedule: str = ""
    """Empty = no scheduled audit; ``interval:SECONDS`` or a 5-field crontab (local time)."""
    lookback_days: int = 7
    """The scheduled job audits studies dated within this many days."""
    modality: str = "PT"
    stations: tuple[str, ...] = ()
    """Default StationName filters (DICOM wildcards * and ?); empty = all."""
    institutions: tuple[str, ...] = ()
    """Default InstitutionName filters (DICOM wildcards); empty = all."""
    analyzer: str = "earl"
    """The analyzer (and model bundle of the same name) the audit is for."""
    max_attempts: int = 3
    """Failed retrieves of a series are retried by later runs up to this many times."""
    timeout: float = 600.0
    """Seconds one retrieve (and one query) may take."""
    tls: ClientTlsSettings = field(default_factory=ClientTlsSettings)
    """DICOM TLS for the C-FIND/C-MOVE/C-GET associations with the PACS."""
    stale_seconds: float = 3600.0
    """A RETRIEVING row older than this belongs to a dead run and is retried."""
    write_back_harmonised: bool = False
    """Write a harmonised copy (extra Gaussian, new series in the same study) of every
    series the ``analyzer`` finds outside ``harmonise_to`` and deliver it with the SR."""
    harmonise_to: str = "EARL1"
    """The site's target band for harmonised copies: ``EARL1`` or ``EARL2``."""


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    """Everything qcd can be told; built once by :func:`load_settings`."""

    node: NodeSettings = field(default_factory=NodeSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    assembly: AssemblySettings = field(default_factory=AssemblySettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    celery: CelerySettings = field(default_factory=CelerySettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def quiet_seconds_for(self, modality: str | None) -> float:
        """The quiet period that applies to a series of ``modality``."""
        overrides = self.assembly.quiet_seconds_by_modality
        return float(overrides.get((modality or "").upper(), self.assembly.quiet_seconds))

    def to_dict(self) -> dict[str, Any]:
        """A plain, printable copy (secrets are file paths, so nothing to mask)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- loading


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, an optional TOML file and the environment.

    Parameters
    ----------
    path
        TOML file; if ``None``, ``$QCD_CONFIG`` is used when set.
    environ
        Environment to read ``QCD_*`` keys from (default: ``os.environ``).

    Raises
    ------
    ConfigError
        Unreadable file, unknown key, or a value of the wrong type or range.
    """
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    file = path if path is not None else env.get(ENV_PREFIX + "CONFIG")
    if file:
        try:
            with open(file, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"environment variable {key}: expected QCD_<SECTION>__<KEY>, "
                f"e.g. QCD_INGEST__PORT or QCD_INGEST__TLS__ENABLED"
            )
        table = raw
        for depth, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{key}: [{'.'.join(parts[: depth + 1])}] must be a table")
        table[parts[-1]] = _EnvString(value)
    settings = _build(Settings, raw, "")
    _validate(settings)
    return settings


class _EnvString(str):
    """A string from the environment, coerced to the field's type when built."""


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {_key(where, unknown[0])}; allowed keys: {', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(hints[name], raw[name], _key(where, name)) for name in raw}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):  # only ``X | None``; TOML has no null
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _coerce(args[0], value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, _EnvString) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, _EnvString) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        try:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, _EnvString):
            value = [v.strip() for v in value.split(",") if v.strip()]
            value = [_EnvString(v) for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or (
        isinstance(origin, type) and issubclass(origin, Mapping)
    ):
        _, val_tp = typing.get_args(tp)
        if isinstance(value, _EnvString):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{key}: expected KEY=VALUE[,KEY=VALUE], got {value!r}")
            value = {k.strip(): _EnvString(v.strip()) for k, v in pairs}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return types.MappingProxyType(
            {str(k): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
        )
    raise TypeError(f"unsupported settings type {tp!r} for {key}")  # programming error


def _need(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise the one ConfigError format: the key, the bad value, what is allowed."""
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


def _validate(s: Settings) -> None:
    """Range and enum checks that types alone cannot express."""
    need = _need

    for key, aet in [("node.ae_title", s.node.ae_title)] + [
        (f"ingest.allowed_calling_aets[{i}]", a)
        for i, a in enumerate(s.ingest.allowed_calling_aets)
    ]:
        need(bool(AE_TITLE_RE.match(aet)), key, "1-16 printable ASCII characters, no backslash", aet)
    need(0 < s.ingest.port < 65536, "ingest.port", "1-65535", s.ingest.port)
    for name, version in s.workers.bundle_versions.items():
        need(bool(BUNDLE_PART_RE.match(name)) and bool(BUNDLE_PART_RE.match(version)),
             f"workers.bundle_versions.{name}", "a bundle name and version (letters, digits, "
             "'.', '_', '-')", version)
    need(0 <= s.http.port < 65536, "http.port", "0-65535 (0 = any free port)", s.http.port)
    need(s.http.auth in ("local", "proxy"), "http.auth", "local, proxy", s.http.auth)
    need(s.http.proxy_default_role in ("viewer", "operator"), "http.proxy_default_role",
         "viewer, operator", s.http.proxy_default_role)
    need(s.http.session_hours > 0, "http.session_hours", "hours > 0", s.http.session_hours)
    need(s.http.stow_max_bytes > 0, "http.stow_max_bytes", "bytes > 0", s.http.stow_max_bytes)
    for net in s.http.proxy_trusted_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            need(False, "http.proxy_trusted_networks", "IP networks such as 10.0.0.0/8", net)
    need(1 <= s.ingest.max_associations <= 1000, "ingest.max_associations", "1-1000",
         s.ingest.max_associations)
    need(s.ingest.reactor in ("event", "polling"), "ingest.reactor", "event or polling",
         s.ingest.reactor)
    need(1 <= s.ingest.processes <= 64, "ingest.processes", "1-64", s.ingest.processes)
    need(s.ingest.processes == 1 or hasattr(socket, "SO_REUSEPORT"), "ingest.processes",
         "1 on a system without SO_REUSEPORT", s.ingest.processes)
    need(s.ingest.max_pdu == 0 or 4096 <= s.ingest.max_pdu <= 64 * 1024 * 1024,
         "ingest.max_pdu", "0 (unlimited) or 4096-67108864", s.ingest.max_pdu)
    need(s.ingest.max_inflated_mb > 0, "ingest.max_inflated_mb", "MiB > 0",
         s.ingest.max_inflated_mb)
    for name in ("acse_timeout", "dimse_timeout", "network_timeout", "drain_timeout"):
        value = getattr(s.ingest, name)
        need(value > 0, f"ingest.{name}", "a number of seconds > 0", value)
    for i, net in enumerate(s.ingest.allowed_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            need(False, f"ingest.allowed_networks[{i}]", "CIDR networks like 10.0.0.0/8", net)
    if s.ingest.tls.enabled:
        for name in ("cert_file", "key_file"):
            value = getattr(s.ingest.tls, name)
            need(bool(value) and Path(value).is_file(), f"ingest.tls.{name}",
                 "an existing PEM file when TLS is enabled", value)
        if s.ingest.tls.require_client_cert:
            need(bool(s.ingest.tls.ca_file), "ingest.tls.ca_file",
                 "a CA bundle when require_client_cert is true", s.ingest.tls.ca_file)
    need(s.spool.min_free_bytes >= 0, "spool.min_free_bytes", "bytes >= 0", s.spool.min_free_bytes)
    need(bool(s.spool.path), "spool.path", "a directory path", s.spool.path)
    need(s.database.url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql"),
         "database.url", "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB", s.database.url)
    need(s.assembly.quiet_seconds > 0, "assembly.quiet_seconds", "seconds > 0",
         s.assembly.quiet_seconds)
    need(s.assembly.sweep_interval_seconds > 0, "assembly.sweep_interval_seconds",
         "seconds > 0", s.assembly.sweep_interval_seconds)
    for mod, secs in s.assembly.quiet_seconds_by_modality.items():
        need(bool(MODALITY_RE.match(mod)), f"assembly.quiet_seconds_by_modality.{mod}",
             "upper-case DICOM modality codes such as PT, CT, MR", mod)
        need(secs > 0, f"assembly.quiet_seconds_by_modality.{mod}", "seconds > 0", secs)
    for i, rule in enumerate(s.routing.rules):
        need(bool(re.match(r"^[a-z][a-z0-9_]*$", rule.analyzer)),
             f"routing.rules[{i}].analyzer", "a lower-case analyzer name", rule.analyzer)
        for mod in rule.modalities:
            need(bool(MODALITY_RE.match(mod)), f"routing.rules[{i}].modalities",
                 "upper-case DICOM modality codes such as PT, CT, MR", mod)
        for name in ("body_part", "manufacturer", "series_description"):
            pattern = getattr(rule, name)
            try:
                re.compile(pattern)
            except re.error as exc:
                need(False, f"routing.rules[{i}].{name}", f"a valid regular expression ({exc})",
                     pattern)
    need(0 <= s.workers.threads <= 64, "workers.threads", "0-64", s.workers.threads)
    need(1 <= s.workers.max_attempts <= 100, "workers.max_attempts", "1-100",
         s.workers.max_attempts)
    for name in ("poll_interval_seconds", "retry_backoff_seconds", "lease_seconds"):
        value = getattr(s.workers, name)
        need(value > 0, f"workers.{name}", "a number of seconds > 0", value)
    _validate_celery(s, need)
    need(bool(DEVICE_RE.match(s.inference.device.strip().lower())), "inference.device",
         DEVICE_CHOICES, s.inference.device)
    need(1 <= s.inference.max_batch <= 4096, "inference.max_batch", "1-4096",
         s.inference.max_batch)
    need(0 <= s.inference.max_wait_ms <= 1000, "inference.max_wait_ms", "0-1000 milliseconds",
         s.inference.max_wait_ms)
    need(0 <= s.inference.cpu_threads <= 256, "inference.cpu_threads",
         "0 (torch default) or 1-256", s.inference.cpu_threads)
    need(bool(s.outputs.path), "outputs.path", "a directory path", s.outputs.path)
    need(s.outputs.sweep_interval_seconds > 0, "outputs.sweep_interval_seconds", "seconds > 0",
         s.outputs.sweep_interval_seconds)
    d = s.delivery
    names = [dest.name for dest in d.destinations]
    for i, dest in enumerate(d.destinations):
        key = f"delivery.destinations[{i}]"
        need(bool(DESTINATION_RE.match(dest.name)), f"{key}.name",
             "1-128 letters, digits, '_', '.' or '-'", dest.name)
        need(names.count(dest.name) == 1, f"{key}.name", "a name no other destination uses",
             dest.name)
        if dest.stow_url:
            need(re.match(r"^https?://[^/\s]+", dest.stow_url) is not None, f"{key}.stow_url",
                 "an http:// or https:// DICOMweb base URL", dest.stow_url)
            need(dest.auth_env == "" or bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$",
                 dest.auth_env)), f"{key}.auth_env", "an environment variable name or empty",
                 dest.auth_env)
        else:
            need(bool(dest.host.strip()), f"{key}.host", "a host name or IP address (or set "
                 "stow_url)", dest.host)
            need(0 < dest.port < 65536, f"{key}.port", "1-65535", dest.port)
            for name in ("ae_title", "calling_ae"):
                aet = getattr(dest, name)
                need(bool(AE_TITLE_RE.match(aet)), f"{key}.{name}",
                     "1-16 printable ASCII characters, no backslash", aet)
        need(dest.timeout > 0, f"{key}.timeout", "a number of seconds > 0", dest.timeout)
        need(not (dest.tls.enabled and dest.stow_url), f"{key}.tls.enabled",
             "false for a stow_url destination (use an https:// URL)", dest.tls.enabled)
        _validate_client_tls(f"{key}.tls", dest.tls, need)
    need(1 <= d.max_attempts <= 100, "delivery.max_attempts", "1-100", d.max_attempts)
    for name in ("backoff_seconds", "sweep_interval_seconds"):
        value = getattr(d, name)
        need(value > 0, f"delivery.{name}", "a number of seconds > 0", value)
    need(d.max_backoff_seconds >= d.backoff_seconds, "delivery.max_backoff_seconds",
         "seconds >= delivery.backoff_seconds", d.max_backoff_seconds)
    need(1 <= d.batch <= 1000, "delivery.batch", "1-1000", d.batch)
    _validate_alerts(s, need)
    _validate_audit(s, need)
    need(s.logging.level.upper() in LOG_LEVELS, "logging.level", ", ".join(LOG_LEVELS),
         s.logging.level)
    need(s.logging.format in LOG_FORMATS, "logging.format", ", ".join(LOG_FORMATS),
         s.logging.format)


def _validate_celery(s: Settings, need: typing.Callable[[bool, str, str, Any], None]) -> None:
    c = s.celery
    need(s.workers.mode in ("local", "distributed"), "workers.mode", "local, distributed",
         s.workers.mode)
    need(bool(re.match(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", c.queue_prefix)), "celery.queue_prefix",
         "1-64 letters, digits, '_', '.' or '-'", c.queue_prefix)
    for i, name in enumerate(c.gpu_analyzers):
        need(bool(re.match(r"^[a-z][a-z0-9_]*$", name)), f"celery.gpu_analyzers[{i}]",
             "lower-case analyzer names", name)
    for name in ("task_time_limit", "task_soft_time_limit", "retry_backoff_seconds",
                 "retry_backoff_max_seconds", "publish_interval_seconds", "republish_seconds"):
        value = getattr(c, name)
        need(value > 0, f"celery.{name}", "a number of seconds > 0", value)
    need(c.task_soft_time_limit <= c.task_time_limit, "celery.task_soft_time_limit",
         "seconds <= celery.task_time_limit", c.task_soft_time_limit)
    need(0 <= c.max_retries <= 1000, "celery.max_retries", "0-1000", c.max_retries)
    need(c.pool in ("prefork", "threads", "solo"), "celery.pool", "prefork, threads, solo",
         c.pool)
    need(0 <= c.concurrency <= 256, "celery.concurrency", "0 (= workers.threads) or 1-256",
         c.concurrency)
    if s.workers.mode == "distributed":
        need(c.broker_url.split(":", 1)[0] in ("amqp", "amqps", "pyamqp"), "celery.broker_url",
             "amqp://USER:PASSWORD@HOST:5672/VHOST (RabbitMQ)", _mask_url(c.broker_url))
        need(s.database.url.startswith("postgresql"), "database.url",
             "a postgresql+psycopg:// URL shared by every node in distributed mode",
             s.database.url.split("@")[-1])
        need(s.workers.lease_seconds > c.task_time_limit, "workers.lease_seconds",
             "seconds > celery.task_time_limit in distributed mode", s.workers.lease_seconds)


def _mask_url(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


def _validate_audit(s: Settings, need: typing.Callable[[bool, str, str, Any], None]) -> None:
    from qcd.audit.window import parse_schedule, parse_window  # pure, no DICOM imports

    a = s.audit
    need(0 < a.pacs_port < 65536, "audit.pacs_port", "1-65535", a.pacs_port)
    for name in ("pacs_ae_title", "calling_ae_title", "move_destination"):
        aet = getattr(a, name)
        need(aet == "" and name != "pacs_ae_title" or bool(AE_TITLE_RE.match(aet)),
             f"audit.{name}", "1-16 printable ASCII characters, no backslash", aet)
    need(a.method in ("move", "get", "dicomweb"), "audit.method", "move, get, dicomweb",
         a.method)
    need(a.method != "dicomweb" or a.dicomweb_url.startswith(("http://", "https://")),
         "audit.dicomweb_url", "an http(s) URL when audit.method is dicomweb", a.dicomweb_url)
    need(1 <= a.max_concurrent_retrieves <= 32, "audit.max_concurrent_retrieves", "1-32",
         a.max_concurrent_retrieves)
    try:
        parse_window(a.window)
    except ValueError as exc:
        need(False, "audit.window", f"empty or HH:MM-HH:MM ({exc})", a.window)
    try:
        parse_schedule(a.schedule)
    except ValueError as exc:
        need(False, "audit.schedule", f"empty, interval:SECONDS or a 5-field crontab ({exc})",
             a.schedule)
    need(0 <= a.lookback_days <= 36500, "audit.lookback_days", "0-36500", a.lookback_days)
    need(bool(MODALITY_RE.match(a.modality)), "audit.modality",
         "an upper-case DICOM modality code such as PT", a.modality)
    need(bool(re.match(r"^[a-z][a-z0-9_]*$", a.analyzer)), "audit.analyzer",
         "a lower-case analyzer name", a.analyzer)
    need(1 <= a.max_attempts <= 100, "audit.max_attempts", "1-100", a.max_attempts)
    for name in ("timeout", "stale_seconds"):
        value = getattr(a, name)
        need(value > 0, f"audit.{name}", "a number of seconds > 0", value)
    need(a.harmonise_to in ("EARL1", "EARL2"), "audit.harmonise_to", "EARL1, EARL2",
         a.harmonise_to)
    _validate_client_tls("audit.tls", a.tls, need)
    need(not a.write_back_harmonised or s.outputs.enabled, "audit.write_back_harmonised",
         "false while outputs.enabled is false (copies are written with the reports)",
         a.write_back_harmonised)


def validate_client_tls(key: str, tls: ClientTlsSettings) -> None:
    """Check outgoing-TLS settings built elsewhere (``qcd send`` flags) like the config's."""
    _validate_client_tls(key, tls, _need)


def _validate_client_tls(key: str, tls: ClientTlsSettings,
                         need: typing.Callable[[bool, str, str, Any], None]) -> None:
    """Outgoing TLS: files exist, a client key comes with its certificate and is owner-only.

    Raises
    ------
    ConfigError
        Names the key (e.g. ``delivery.destinations[0].tls.key_file``) and what is allowed;
        a key file open to group or others fails :func:`qcd.secrets.check_private_file`.
    """
    if not tls.enabled:
        return
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, name)
        need(not value or Path(value).is_file(), f"{key}.{name}",
             "an existing PEM file, or empty", value)
    need(bool(tls.cert_file) == bool(tls.key_file) or pem_has_private_key(tls.cert_file),
         f"{key}.key_file", "set together with cert_file (mutual TLS), or both empty",
         tls.key_file)
    need(tls.server_name == "" or re.match(r"^[A-Za-z0-9.:-]{1,253}$", tls.server_name)
         is not None, f"{key}.server_name", "empty or a DNS name / IP address",
         tls.server_name)
    if tls.key_file:
        check_private_file(tls.key_file, f"{key}.key_file")
    if tls.cert_file and tls.cert_file != tls.key_file and pem_has_private_key(tls.cert_file):
        check_private_file(tls.cert_file, f"{key}.cert_file (it holds a private key)")


def _validate_alerts(s: Settings, need: typing.Callable[[bool, str, str, Any], None]) -> None:
    a = s.alerts
    channels = [("webhooks", c.name) for c in a.webhooks] + [("emails", c.name) for c in a.emails]
    names = [name for _, name in channels]
    for i, (kind, name) in enumerate(channels):
        idx = i if kind == "webhooks" else i - len(a.webhooks)
        key = f"alerts.{kind}[{idx}].name"
        need(bool(DESTINATION_RE.match(name)) and len(name) <= 64, key,
             "1-64 letters, digits, '_', '.' or '-'", name)
        need(names.count(name) == 1, key, "a name no other webhook or e-mail channel uses", name)
    for i, hook in enumerate(a.webhooks):
        key = f"alerts.webhooks[{i}]"
        need(hook.url.split(":", 1)[0].lower() in ("http", "https") and "://" in hook.url,
             f"{key}.url", "an http:// or https:// URL", hook.url)
        need(hook.secret_env == "" or bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$",
             hook.secret_env)), f"{key}.secret_env", "an environment variable name or empty",
             hook.secret_env)
        need(hook.timeout > 0, f"{key}.timeout", "a number of seconds > 0", hook.timeout)
    for i, mail in enumerate(a.emails):
        key = f"alerts.emails[{i}]"
        need(bool(mail.host.strip()), f"{key}.host", "a host name or IP address", mail.host)
        need(0 < mail.port < 65536, f"{key}.port", "1-65535", mail.port)
        need("@" in mail.sender, f"{key}.sender", "an e-mail address", mail.sender)
        need(bool(mail.recipients) and all("@" in r for r in mail.recipients),
             f"{key}.recipients", "a non-empty list of e-mail addresses", mail.recipients)
        need(mail.timeout > 0, f"{key}.timeout", "a number of seconds > 0", mail.timeout)
    for i, rule in enumerate(a.rules):
        key = f"alerts.rules[{i}]"
        need(bool(re.match(r"^[a-z][a-z0-9_]{0,31}$", rule.kind)), f"{key}.kind",
             "1-32 lower-case letters, digits or '_'", rule.kind)
        need(bool(re.match(r"^[a-z][a-z0-9_]*$", rule.analyzer)), f"{key}.analyzer",
             "a lower-case analyzer name", rule.analyzer)
        need(bool(rule.finding), f"{key}.finding", "a finding name", rule.finding)
        need(rule.severity in SEVERITIES, f"{key}.severity", ", ".join(SEVERITIES),
             rule.severity)
    for i, route in enumerate(a.routes):
        key = f"alerts.routes[{i}]"
        need(bool(route.channels), f"{key}.channels", "at least one channel name",
             route.channels)
        for name in route.channels:
            need(name in names, f"{key}.channels", f"channel names: {', '.join(names) or 'none'}",
                 name)
        for sev in route.severities:
            need(sev in SEVERITIES, f"{key}.severities", ", ".join(SEVERITIES), sev)
    need(1 <= a.max_per_channel_per_hour <= 100000, "alerts.max_per_channel_per_hour",
         "1-100000", a.max_per_channel_per_hour)
    need(1 <= a.max_attempts <= 100, "alerts.max_attempts", "1-100", a.max_attempts)
    for name in ("retry_seconds", "sweep_interval_seconds"):
        value = getattr(a, name)
        need(value > 0, f"alerts.{name}", "a number of seconds > 0", value)
