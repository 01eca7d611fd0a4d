"""The DICOM listener: C-ECHO, C-STORE, association policy, TLS, draining.

The C-STORE handler hands the encoded dataset to :class:`IngestService` and answers
with its status; it never decodes pixels or runs analysis.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from typing import Any, cast

from pydicom.dataset import Dataset
import pynetdicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from qcd.config import IngestSettings, TlsSettings
from qcd.ingest import reactor, status
from qcd.ingest.events import IngestEvents
from qcd.ingest.service import IngestService
from qcd.secrets import check_private_file, pem_has_private_key

LOGGER = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def configure_pynetdicom() -> None:
    """pynetdicom's module globals, set once per process: no identifiers (PHI) in its logs.

    Received datasets stay in memory (the handler checks free space before writing
    them); files we send are streamed as stored, never decoded and re-encoded.
    """
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = False
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server without its periodic full garbage collection.

    pynetdicom 3.0 runs ``gc.collect()`` on every 60th turn of the accept loop (each
    association and each 0.5 s idle poll), "for whatever reason dead Association threads
    aren't being garbage collected". In qcd's process (torch and the models loaded,
    ~355,000 objects) a full collection holds the GIL for ~120 ms, stalling every
    association's ingest; Python's own generational collector frees the association
    cycles anyway (the sustained-load run checks memory, threads and descriptors).
    """

    def service_actions(self) -> None:
        pass


class _SharedPortServer(_Server):
    """An association server whose port other processes of the same user may also bind
    (``SO_REUSEPORT``: the kernel spreads new connections over the listeners)."""

    def server_bind(self) -> None:
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class SharedContexts(list):  # type: ignore[type-arg]
    """The server's presentation contexts, handed to each association without a deep copy.

    pynetdicom deep-copies the server's contexts for every association it accepts
    (``RequestHandler._create_association``): for qcd's 171 contexts that is ~65 ms of
    CPU, 80% of an association's set-up, capping a sender that opens one association per
    instance at ~12 instances/s. The copy protects handlers that edit contexts per
    association; negotiation itself only reads them (pynetdicom 3.0
    ``presentation.negotiate_as_acceptor`` builds new result contexts) and qcd binds no
    handler that edits them, so each association gets a new list of the same contexts.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle so each response leaves at once.

    Without it every C-STORE-RSP waits for the peer's delayed ACK (~40 ms per
    instance, measured in RECIPES.md); pynetdicom has no option for it.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the peer may already be gone
            pass


def build_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """Server-side TLS context from the configured PEM files, or None.

    Raises
    ------
    ConfigError
        The private key file (or a certificate file that bundles the key) is missing
        or readable by group or others (:func:`qcd.secrets.check_private_file`).
    """
    if not tls.enabled:
        return None
    check_private_file(tls.key_file, "ingest.tls.key_file")
    if tls.cert_file != tls.key_file and pem_has_private_key(tls.cert_file):
        check_private_file(tls.cert_file, "ingest.tls.cert_file (it holds a private key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        context.load_verify_locations(tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


class StorageSCP:
    """A pynetdicom AE configured from :class:`IngestSettings`.

    Parameters
    ----------
    ae_title
        Our AE title (the called AE title peers must use).
    settings
        Listener and policy settings.
    service
        Where received datasets go.
    events
        Told of accepted, rejected and refused associations.
    shared_port
        Bind with ``SO_REUSEPORT`` so that receiving processes
        (:mod:`qcd.ingest.receivers`) can listen on the same port.
    """

    def __init__(
        self, ae_title: str, settings: IngestSettings, service: IngestService,
        events: IngestEvents, shared_port: bool = False,
    ) -> None:
        self.settings = settings
        self.service = service
        self.events = events
        self.shared_port = shared_port
        self.networks: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks
        ]
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.require_called_aet = settings.require_called_aet
        ae.require_calling_aet = list(settings.allowed_calling_aets)
        ae.maximum_associations = settings.max_associations
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.maximum_pdu_size = settings.max_pdu
        self.ae = ae
        self.server: ThreadedAssociationServer | None = None
        if not settings.allowed_calling_aets:
            LOGGER.warning("no calling AE allow-list: every calling AE title is accepted")
        if not self.networks:
            LOGGER.warning("no network allow-list: associations from any address are accepted")

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 in tests)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def active(self) -> int:
        """Associations open now."""
        return len(self.ae.active_associations)

    def start(self) -> None:
        """Bind and serve in background threads."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        address = (self.settings.host, self.settings.port)
        ssl_context = build_ssl_context(self.settings.tls)
        # what start_server(block=False) does, with our choice of server class: the
        # server, its serving thread, and registration with the AE (which its
        # shutdown() expects)
        server = self.ae.make_server(
            address, evt_handlers=handlers, ssl_context=ssl_context,
            server_class=_SharedPortServer if self.shared_port else _Server,
            request_handler=self._request_handler())
        server.verify_request = self._verify_request  # type: ignore[method-assign]
        server.contexts = SharedContexts(server.contexts)
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="qcd-dicom-listener",
                         daemon=True).start()
        self.server = server
        LOGGER.info("DICOM listener %s on %s:%d (TLS %s)", self.ae.ae_title,
                    self.settings.host, self.port, "on" if self.settings.tls.enabled else "off")

    def _request_handler(self) -> type[RequestHandler]:
        """pynetdicom's handler, or the one whose associations sleep until there is work."""
        if self.settings.reactor == "event":
            if reactor.supported():
                return reactor.EventDrivenRequestHandler
            LOGGER.warning("ingest.reactor = event needs pynetdicom %sx, this is %s: "
                           "associations poll", reactor.SUPPORTED_SERIES, pynetdicom.__version__)
        return RequestHandler

    def stop(self, drain_timeout: float | None = None) -> int:
        """Stop accepting, let in-flight associations finish, then abort the rest.

        Returns the number of associations that had to be aborted.
        """
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        if self.server is not None:
            self.server.shutdown()  # closes the listening socket; open associations go on
            self.server = None
        deadline = time.monotonic() + timeout
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = list(self.ae.active_associations)
        for assoc in leftover:
            LOGGER.warning("aborting association from %s after drain timeout",
                           assoc.requestor.ae_title)
            assoc.abort()
        self.ae.shutdown()
        return len(leftover)

    # -- policy -----------------------------------------------------------------

    def _verify_request(self, request: Any, client_address: Any) -> bool:
        """socketserver hook: refuse connections from outside the allowed networks."""
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(client_address[0])
        except (ValueError, IndexError, TypeError):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in net for net in self.networks):
            return True
        LOGGER.warning("refused connection from %s: not in allowed networks", address)
        self.events.association("-", "refused_network")
        return False

    # -- handlers ---------------------------------------------------------------

    def _on_conn_open(self, event: evt.Event) -> None:
        """Bound every read on an accepted socket by ``network_timeout``.

        pynetdicom leaves accepted sockets blocking: a peer that sends part of a PDU
        and then nothing (slowloris) blocks its reader forever, the ARTIM timer is
        never checked and the association slot is never freed, so a handful of such
        peers lock every scanner out (found by tests/integration/test_fuzz_pdu.py).
        The timeout applies per read, so a slow transfer that keeps moving is fine.
        """
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            try:
                sock.settimeout(self.settings.network_timeout)
            except OSError:  # the peer may already be gone
                pass

    def _on_accepted(self, event: evt.Event) -> None:
        self.events.association(_aet(event.assoc.requestor.ae_title), "accepted")

    def _on_rejected(self, event: evt.Event) -> None:
        aet = _aet(event.assoc.requestor.ae_title)
        LOGGER.warning("rejected association from %s (calling AE %s, called AE %s)",
                       event.assoc.requestor.address, aet,
                       _aet(event.assoc.acceptor.ae_title))
        self.events.association(aet, "rejected")

    def _on_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        request = cast(C_STORE, event.request)
        result = self.service.store(
            event.encoded_dataset(include_meta=False),
            transfer_syntax=str(event.context.transfer_syntax),
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_uid=str(request.AffectedSOPInstanceUID or ""),
            calling_ae=_aet(event.assoc.requestor.ae_title),
        )
        if result.status == status.SUCCESS:
            return status.SUCCESS
        rsp = Dataset()
        rsp.Status = result.status
        rsp.ErrorComment = _comment(result.comment)
        return rsp


def _aet(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return (value or "").strip() or "-"


def _comment(text: str) -> str:
    """Error Comment is LO: at most 64 characters, no backslash or control codes."""
    cleaned = "".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text)
    return cleaned[:64]

