"""Settings of the outputs side (stdlib only, so that loading the config stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientTlsSettings:
    """TLS on an association qcd opens (to a PACS): who the peer must be, who we are.

    The peer's certificate is always verified; there is no setting that turns that off.
    """

    enabled: bool = False
    ca_file: str = ""
    """PEM CA bundle the peer's certificate must chain to; empty = the system trust store."""
    check_hostname: bool = True
    """The certificate must name the host we connect to (``server_name`` if set)."""
    server_name: str = ""
    """Name checked against the certificate and sent as SNI; empty = the host itself
    (set it when connecting by IP address to a PACS whose certificate names its DNS name)."""
    cert_file: str = ""
    """Our client certificate (PEM) for mutual TLS; empty = none offered."""
    key_file: str = ""
    """Its private key (PEM, owner-only: mode 0600 or 0400); required with ``cert_file``."""


@dataclass(frozen=True)
class Destination:
    """A PACS (C-STORE SCP) that result objects are delivered to."""

    name: str
    """Stable key stored on each delivery row; renaming it orphans pending rows."""
    host: str = ""
    port: int = 104
    ae_title: str = ""
    """The PACS's (called) AE title."""
    calling_ae: str = "QCD"
    timeout: float = 30.0
    """Seconds for connect, association negotiation, each response and idle network."""
    stow_url: str = ""
    """DICOMweb base URL (e.g. ``https://pacs/dicom-web``): deliver by STOW-RS instead of
    C-STORE; host, port and AE titles are then unused."""
    auth_env: str = ""
    """Environment variable holding the HTTP Authorization header value for STOW-RS."""
    tls: ClientTlsSettings = field(default_factory=ClientTlsSettings)
    """DICOM TLS for C-STORE (``stow_url`` destinations use https:// instead)."""


@dataclass(frozen=True)
class DeliverySettings:
    """Where results go and how hard we try."""

    destinations: tuple[Destination, ...] = ()
    max_attempts: int = 8
    """A row that failed this many times is dead-lettered (DEAD plus an alert)."""
    backoff_seconds: float = 30.0
    """After failed attempt n the row waits ``backoff * 2**(n-1)`` seconds ..."""
    max_backoff_seconds: float = 3600.0
    """... but never longer than this."""
    sweep_interval_seconds: float = 5.0
    batch: int = 50
    """Rows claimed per round; one association per destination and round."""


@dataclass(frozen=True)
class OutputSettings:
    """Where result objects (SR, later SEG) are written before delivery."""

    enabled: bool = True
    """Build an SR for every finished analysis."""
    path: str = "var/outputs"
    sweep_interval_seconds: float = 2.0


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one file sent to one destination."""

    status: int | None
    """The C-STORE-RSP status, or None when no response came."""
    comment: str = ""
    """Error Comment of the response, or why no response came."""
    permanent: bool = False
    """With no status: retrying cannot help (e.g. the PACS refused the SOP class)."""
