"""C-MOVE (to qcd's own Storage SCP) or C-GET of one series, with the outcome counted.

With C-MOVE the PACS opens its own association to ``move_destination`` (qcd's
listener), so the daemon must be running and known to the PACS as a modality. With
C-GET the instances come back on our association and go through the same
:class:`~qcd.ingest.service.IngestService` (spool + database) as any C-STORE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from qcd.audit.query import PENDING, Peer, SeriesCandidate
from qcd.ingest import status
from qcd.ingest.service import IngestService
from qcd.scu import associate, new_ae

LOGGER = logging.getLogger(__name__)
MAX_GET_CONTEXTS = 127  # one context is the C-GET model itself (PS3.8: 128 at most)


@dataclass(frozen=True)
class RetrieveResult:
    """What the PACS reported for one series."""

    ok: bool
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str = ""


def _identifier(c: SeriesCandidate) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = c.study_uid
    q.SeriesInstanceUID = c.series_uid
    return q


def _final(responses: Any, expected: int | None) -> RetrieveResult:
    """Read the C-MOVE/C-GET responses up to the final one."""
    last: Dataset | None = None
    for rsp, _ in responses:
        if rsp is None or "Status" not in rsp:
            return RetrieveResult(False, error="no response from the PACS (timeout or aborted)")
        last = rsp
        if int(rsp.Status) not in PENDING:
            break
    if last is None:
        return RetrieveResult(False, error="no response from the PACS")
    code = int(last.Status)
    done = int(last.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(last.get("NumberOfFailedSuboperations", 0) or 0)
    warning = int(last.get("NumberOfWarningSuboperations", 0) or 0)
    if code != 0x0000 or failed:
        comment = str(last.get("ErrorComment", "")).strip()
        return RetrieveResult(False, done, failed, warning,
                              f"status 0x{code:04X}, {done} done, {failed} failed"
                              + (f": {comment}" if comment else ""))
    if expected is not None and done + warning < expected:
        return RetrieveResult(False, done, failed, warning,
                              f"{done + warning} of {expected} instance(s) retrieved")
    return RetrieveResult(True, done, failed, warning)


def retrieve_move(peer: Peer, candidate: SeriesCandidate, destination: str) -> RetrieveResult:
    """C-MOVE the series to ``destination`` (our own AE title); never raises."""
    ae = new_ae(peer.calling_ae, peer.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    try:
        assoc = associate(ae, peer.host, peer.port, peer.ae_title, peer.tls, where="audit.tls")
    except Exception as exc:  # unreachable, TLS refused, unusable TLS files
        return RetrieveResult(False, error=f"cannot connect: {exc}")
    if not assoc.is_established:
        return RetrieveResult(False, error=f"association with {peer.ae_title} not established")
    try:
        return _final(assoc.send_c_move(_identifier(candidate), destination,
                                        StudyRootQueryRetrieveInformationModelMove),
                      candidate.instances)
    finally:
        if assoc.is_established:
            assoc.release()


def retrieve_get(peer: Peer, candidate: SeriesCandidate, service: IngestService
                 ) -> RetrieveResult:
    """C-GET the series; each instance goes through ``service`` (spool + DB); never raises."""
    ae = new_ae(peer.calling_ae, peer.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles: list[Any] = []
    for context in StoragePresentationContexts[:MAX_GET_CONTEXTS]:
        assert context.abstract_syntax is not None
        ae.add_requested_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES[:4])
        roles.append(build_role(context.abstract_syntax, scp_role=True))

    def on_store(event: evt.Event) -> int | Dataset:
        request = cast(C_STORE, event.request)
        result = service.store(event.encoded_dataset(include_meta=False),
                               transfer_syntax=str(event.context.transfer_syntax),
                               sop_class_uid=str(request.AffectedSOPClassUID or ""),
                               sop_uid=str(request.AffectedSOPInstanceUID or ""),
                               calling_ae=peer.ae_title)
        if result.status == status.SUCCESS:
            return status.SUCCESS
        rsp = Dataset()
        rsp.Status = result.status
        return rsp

    try:
        assoc = associate(ae, peer.host, peer.port, peer.ae_title, peer.tls, where="audit.tls",
                          ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    except Exception as exc:  # unreachable, TLS refused, unusable TLS files
        return RetrieveResult(False, error=f"cannot connect: {exc}")
    if not assoc.is_established:
        return RetrieveResult(False, error=f"association with {peer.ae_title} not established")
    try:
        return _final(assoc.send_c_get(_identifier(candidate),
                                       StudyRootQueryRetrieveInformationModelGet),
                      candidate.instances)
    finally:
        if assoc.is_established:
            assoc.release()
