"""Outgoing DICOM associations (delivery, audit, ``qcd send``): TCP_NODELAY, timeouts, TLS.

Every association qcd opens goes through :func:`associate`, so the client side of DICOM
TLS is set up in one place: TLS >= 1.2, the peer's certificate verified against
``ca_file`` (or the system trust store) and, unless told otherwise, its host name
checked; an optional client certificate for mutual TLS. :func:`send_files` is ``qcd
send``, a small Storage SCU for operators (and qcd's own tests).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from qcd.errors import ConfigError, ExportError, IngestError
from qcd.ingest.filemeta import split_part10
from qcd.ingest.scp import set_nodelay
from qcd.outputs.settings import ClientTlsSettings
from qcd.secrets import check_private_file, pem_has_private_key

LOGGER = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class _RecordingSocket(ssl.SSLSocket):
    """Keeps why the handshake failed on its context: pynetdicom only logs it."""

    def connect(self, addr: Any) -> None:
        try:
            super().connect(addr)
        except ssl.SSLError as exc:
            context = self.context
            if isinstance(context, ClientContext):
                context.failure = getattr(exc, "verify_message", "") or exc.reason or str(exc)
                if isinstance(exc, ssl.SSLCertVerificationError):
                    context.failure = f"certificate verify failed: {context.failure}"
            raise


class ClientContext(ssl.SSLContext):
    """A client TLS context that remembers the reason of a failed handshake."""

    sslsocket_class = _RecordingSocket
    failure: str = ""


def client_context(tls: ClientTlsSettings, where: str) -> ClientContext:
    """The client-side TLS context for ``tls``; built per association, so renewed
    certificates and CA bundles are picked up without a restart.

    Parameters
    ----------
    where
        The settings key, named in errors (e.g. ``delivery.destinations[0].tls``).

    Raises
    ------
    ConfigError
        A key file open to group or others, or a file that cannot be read as PEM.
    """
    if tls.key_file:
        check_private_file(tls.key_file, f"{where}.key_file")
    if tls.cert_file and tls.cert_file != tls.key_file and pem_has_private_key(tls.cert_file):
        check_private_file(tls.cert_file, f"{where}.cert_file (it holds a private key)")
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    try:
        if tls.ca_file:
            context.load_verify_locations(cafile=tls.ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}: cannot load the CA bundle or client certificate/key: "
                          f"{exc}") from None
    return context


def new_ae(calling_ae: str, timeout: float) -> AE:
    """An AE for one outgoing association; ``timeout`` bounds connect + TLS handshake,
    negotiation, each response and each network read."""
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def associate(ae: AE, host: str, port: int, called_ae: str,
              tls: ClientTlsSettings | None = None, *, where: str = "tls",
              evt_handlers: list[Any] | None = None, **kwargs: Any) -> Association:
    """Request an association (TCP_NODELAY set, TLS when ``tls.enabled``).

    Returns the association, established or not (rejected, aborted, refused contexts:
    the caller decides what that means).

    Raises
    ------
    ExportError
        No connection: the host cannot be resolved or reached in a way pynetdicom lets
        through, or the TLS handshake failed (the message says why, e.g. "certificate
        verify failed" or a host name mismatch).
    ConfigError
        The TLS settings' files cannot be used (:func:`client_context`).
    """
    peer = f"{called_ae}@{host}:{port}"
    context = client_context(tls, where) if tls is not None and tls.enabled else None
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay), *(evt_handlers or [])]
    tls_args = (context, tls.server_name or host) if context is not None and tls else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=handlers,
                             tls_args=tls_args, **kwargs)
    except OSError as exc:  # e.g. an unknown host name: pynetdicom lets it through
        raise ExportError(f"cannot connect to {peer}: {exc}") from None
    if context is not None and context.failure:
        raise ExportError(f"TLS handshake with {peer} failed: {context.failure}")
    return assoc


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None
    """None when no response came (association lost or file unreadable)."""
    comment: str = ""


def send_files(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_ae: str = "QCD",
    calling_ae: str = "QCDSEND",
    timeout: float = 30.0,
    tls: ClientTlsSettings | None = None,
) -> list[SendResult]:
    """Send Part 10 files as-is (no re-encoding) over one association.

    Raises
    ------
    ExportError
        The association could not be established (TLS refused included), or needs
        more than 128 contexts.
    """
    results: list[SendResult] = []
    sendable: list[tuple[Path, str, str]] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                meta, _ = split_part10(fh.read(1 << 16))
            sendable.append((path, str(meta.MediaStorageSOPClassUID),
                             str(meta.TransferSyntaxUID)))
        except (IngestError, OSError, AttributeError) as exc:
            results.append(SendResult(path, None, f"not sendable: {exc}"))
    contexts = sorted({(c, t) for _, c, t in sendable})
    if len(contexts) > MAX_CONTEXTS:
        raise ExportError(f"{len(contexts)} SOP class/transfer syntax pairs; at most "
                          f"{MAX_CONTEXTS} fit one association: send in smaller groups")
    ae = new_ae(calling_ae, timeout)
    ae.requested_contexts = [build_context(c, [t]) for c, t in contexts]
    if not sendable:
        return results
    assoc = associate(ae, host, port, called_ae, tls, where="send --tls")
    if not assoc.is_established:
        raise ExportError(f"association with {called_ae}@{host}:{port} was not established")
    try:
        for path, _, _ in sendable:
            if not assoc.is_established:
                results.append(SendResult(path, None, "association lost"))
                continue
            rsp = assoc.send_c_store(path)
            code = int(rsp.Status) if rsp and "Status" in rsp else None
            results.append(SendResult(path, code, str(rsp.get("ErrorComment", "")) if rsp else
                                      "no response"))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
