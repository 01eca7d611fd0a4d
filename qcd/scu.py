"""``qcd send``: a small Storage SCU for operators (and qcd's own tests)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from qcd.errors import ExportError, IngestError
from qcd.ingest.header import split_part10
from qcd.ingest.scp import set_nodelay

LOGGER = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


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
) -> list[SendResult]:
    """Send Part 10 files as-is (no re-encoding) over one association.

    Raises
    ------
    ExportError
        The association could not be established, or needs more than 128 contexts.
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
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = [build_context(c, [t]) for c, t in contexts]
    if not sendable:
        return results
    assoc = ae.associate(host, port, ae_title=called_ae,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
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
