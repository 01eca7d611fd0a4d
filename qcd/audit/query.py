"""C-FIND SCU (Study Root): studies in a date range, then their series, as typed candidates.

The date range and modality go to the PACS as matching keys (StudyDate and
ModalitiesInStudy at study level, Modality at series level) and every filter is applied
again here, because PACS differ in which keys they really match on. Station and
institution are matched here only (wildcards, case-insensitive): DICOM matches LO/SH
values case-sensitively, so "site b" would miss "Site B" at the PACS.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from qcd.errors import ExportError
from qcd.outputs.settings import ClientTlsSettings
from qcd.scu import associate, new_ae

LOGGER = logging.getLogger(__name__)
PENDING = (0xFF00, 0xFF01)
QUERY_ATTEMPTS = 3
"""Times one C-FIND is sent when pynetdicom drops one of its responses (:class:`_LostResponses`)."""


class _LostResponses(logging.Filter):
    """Counts C-FIND responses pynetdicom 3 dropped.

    Between two requests on one association, pynetdicom's association reactor thread can
    take a response off the DIMSE queue before ``send_c_find`` reads it (its pause is a
    check-then-act on ``_is_paused``; a loaded host widens the window). The reactor then
    logs "Received unexpected C-FIND service message" and drops the response: a lost
    Pending response is a series missing from the result with no error at all (seen in
    tests/integration/test_audit.py on a busy 2-core machine). This filter sees that log
    record, so a query that lost a response is sent again instead of returning short.
    """

    MESSAGE = "Received unexpected C-FIND service message"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.MESSAGE):
            self.count += 1
        return True


@dataclass(frozen=True)
class Peer:
    """The PACS and how we call it."""

    host: str
    port: int
    ae_title: str
    calling_ae: str
    timeout: float = 60.0
    tls: ClientTlsSettings = ClientTlsSettings()
    """DICOM TLS towards the PACS (``[audit.tls]``)."""


@dataclass(frozen=True)
class AuditFilters:
    """What to audit. ``date_from``/``date_to`` are inclusive; None = open."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str = "PT"
    stations: tuple[str, ...] = ()
    institutions: tuple[str, ...] = ()

    def date_range(self) -> str:
        """The DICOM DA range matching key (``YYYYMMDD-YYYYMMDD``, open ends allowed)."""
        lo = self.date_from.strftime("%Y%m%d") if self.date_from else ""
        hi = self.date_to.strftime("%Y%m%d") if self.date_to else ""
        return f"{lo}-{hi}" if (lo or hi) else ""

    def accepts(self, c: SeriesCandidate) -> bool:
        """Client-side check of every filter (wildcards * and ?, case-insensitive)."""
        if self.modality and (c.modality or "").upper() != self.modality.upper():
            return False
        if c.study_date and (self.date_from or self.date_to):
            try:
                day = dt.datetime.strptime(c.study_date[:8], "%Y%m%d").date()
            except ValueError:
                return False
            if (self.date_from and day < self.date_from) or (self.date_to and day > self.date_to):
                return False
        return _matches(self.stations, c.station_name) and _matches(
            self.institutions, c.institution_name)


def _matches(patterns: Sequence[str], value: str | None) -> bool:
    if not patterns:
        return True
    text = (value or "").strip().lower()
    return any(fnmatch.fnmatchcase(text, p.strip().lower()) for p in patterns)


@dataclass(frozen=True)
class SeriesCandidate:
    """One archived series as the PACS describes it (no patient identifiers kept)."""

    study_uid: str
    series_uid: str
    modality: str | None
    study_date: str | None
    institution_name: str | None
    station_name: str | None
    device_serial: str | None
    series_description: str | None
    instances: int | None
    """NumberOfSeriesRelatedInstances, when the PACS returns it."""


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    text = str(value).strip()
    return text[:64] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _associate(peer: Peer) -> Association:
    ae = new_ae(peer.calling_ae, peer.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, peer.host, peer.port, peer.ae_title, peer.tls, where="audit.tls")
    if not assoc.is_established:
        raise ExportError(f"C-FIND: association with {peer.ae_title}@{peer.host}:{peer.port} "
                          "was not established (is the PACS up and does it know our AE?)")
    return assoc


def _find(assoc: Association, query: Dataset) -> Iterator[Dataset]:
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(status.Status) if status is not None and "Status" in status else None
        if code is None:
            raise ExportError("C-FIND: no response from the PACS (timeout or aborted)")
        if code in PENDING:
            if identifier is not None:
                yield identifier
        elif code != 0x0000:
            raise ExportError(f"C-FIND failed with status 0x{code:04X}"
                              f" {status.get('ErrorComment', '')}".rstrip())


def _complete_find(assoc: Association, query: Dataset, lost: _LostResponses) -> list[Dataset]:
    """All identifiers of one C-FIND, sent again while pynetdicom drops a response.

    Raises
    ------
    ExportError
        As :func:`_find`, or responses were still dropped after :data:`QUERY_ATTEMPTS`.
    """
    for attempt in range(1, QUERY_ATTEMPTS + 1):
        before = lost.count
        found = list(_find(assoc, query))
        if lost.count == before:
            return found
        LOGGER.warning("C-FIND at %s level: pynetdicom dropped a response (attempt %d of %d); "
                       "sending the query again", query.QueryRetrieveLevel, attempt,
                       QUERY_ATTEMPTS)
    raise ExportError(f"C-FIND at {query.QueryRetrieveLevel} level: responses dropped by "
                      f"pynetdicom in {QUERY_ATTEMPTS} attempts")


def _study_query(filters: AuditFilters) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.StudyDate = filters.date_range()
    q.ModalitiesInStudy = filters.modality
    q.InstitutionName = ""
    return q


def _series_query(study_uid: str, filters: AuditFilters) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.Modality = filters.modality
    q.SeriesDate = ""
    q.SeriesDescription = ""
    q.StationName = ""
    q.InstitutionName = ""
    q.DeviceSerialNumber = ""
    q.NumberOfSeriesRelatedInstances = ""
    return q


def find_series(peer: Peer, filters: AuditFilters) -> list[SeriesCandidate]:
    """Study-level then series-level C-FIND on one association; filtered candidates.

    Raises
    ------
    ExportError
        The PACS cannot be reached, refuses the association or answers a failure.
    """
    assoc = _associate(peer)
    lost = _LostResponses()
    reactor_log = logging.getLogger("pynetdicom.association")
    reactor_log.addFilter(lost)
    out: list[SeriesCandidate] = []
    try:
        studies = [(str(ds.StudyInstanceUID), _text(ds, "StudyDate"),
                    _text(ds, "InstitutionName"))
                   for ds in _complete_find(assoc, _study_query(filters), lost)
                   if ds.get("StudyInstanceUID")]
        LOGGER.info("C-FIND %s: %d study(ies) dated %s", peer.ae_title, len(studies),
                    filters.date_range() or "any")
        for study_uid, study_date, study_institution in studies:
            for ds in _complete_find(assoc, _series_query(study_uid, filters), lost):
                if not ds.get("SeriesInstanceUID"):
                    continue
                c = SeriesCandidate(
                    study_uid=study_uid, series_uid=str(ds.SeriesInstanceUID),
                    modality=_text(ds, "Modality"),
                    study_date=study_date or _text(ds, "SeriesDate"),
                    institution_name=_text(ds, "InstitutionName") or study_institution,
                    station_name=_text(ds, "StationName"),
                    device_serial=_text(ds, "DeviceSerialNumber"),
                    series_description=_text(ds, "SeriesDescription"),
                    instances=_int(ds, "NumberOfSeriesRelatedInstances"))
                if filters.accepts(c):
                    out.append(c)
    finally:
        reactor_log.removeFilter(lost)
        if assoc.is_established:
            assoc.release()
    LOGGER.info("C-FIND %s: %d matching series", peer.ae_title, len(out))
    return out
