"""DICOMweb equivalents of the audit's query and retrieve: QIDO-RS and WADO-RS.

For PACS reachable over HTTP rather than DIMSE (or where C-MOVE needs the PACS to know
qcd as a modality and the site would rather not). QIDO-RS asks ``/studies`` with the
date range and ``ModalitiesInStudy``, then ``/studies/{uid}/series`` with the modality;
every filter is applied again here, as with C-FIND. WADO-RS fetches a whole series as
``multipart/related; type="application/dicom"`` and each part goes through the same
ingest path as a C-STORE or a STOW-RS part (spool, database rows, same statuses), so a
retrieved series is assembled and analysed like any other.

The Authorization header, if the PACS needs one, comes from the environment variable
named by ``[audit] dicomweb_auth_env`` (or the owner-only file in ``<VAR>_FILE``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qcd.audit.query import AuditFilters, SeriesCandidate
from qcd.audit.retrieve import RetrieveResult
from qcd.errors import ExportError
from qcd.ingest import status
from qcd.ingest.service import IngestService
from qcd.web.stow import StowRequestError, parse_multipart, store_parts

LOGGER = logging.getLogger(__name__)
DICOM_MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# DICOM JSON tags (PS3.18 F.2)
STUDY_UID, SERIES_UID = "0020000D", "0020000E"
STUDY_DATE, SERIES_DATE, MODALITY = "00080020", "00080021", "00080060"
INSTITUTION, STATION, SERIAL = "00080080", "00081010", "00181000"
DESCRIPTION, N_INSTANCES = "0008103E", "00201209"


@dataclass(frozen=True)
class WebPeer:
    """A DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``."""

    base_url: str
    authorization: str | None = None
    timeout: float = 600.0


def _value(item: Mapping[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return None
    v = values[0]
    if isinstance(v, Mapping):  # PN in JSON: {"Alphabetic": ...}
        v = v.get("Alphabetic")
    return None if v is None or v == "" else str(v)


def _get(peer: WebPeer, path: str, params: Mapping[str, str | tuple[str, ...]],
         accept: str) -> tuple[str, bytes]:
    # includefield repeated, one tag each: some servers do not split an encoded comma
    query = urllib.parse.urlencode([(k, v) for k, vs in params.items() if vs
                                    for v in ((vs,) if isinstance(vs, str) else vs)])
    url = peer.base_url.rstrip("/") + path + (f"?{query}" if query else "")
    req = urllib.request.Request(url, headers={"Accept": accept})
    if peer.authorization:
        req.add_header("Authorization", peer.authorization)
    with urllib.request.urlopen(req, timeout=peer.timeout) as rsp:
        return rsp.headers.get("Content-Type", ""), rsp.read()


def _qido(peer: WebPeer, path: str,
          params: Mapping[str, str | tuple[str, ...]]) -> list[dict[str, Any]]:
    try:
        _, body = _get(peer, path, params, "application/dicom+json")
    except urllib.error.HTTPError as exc:
        raise ExportError(f"QIDO-RS {path}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ExportError(f"QIDO-RS {peer.base_url}: cannot connect: {exc}") from exc
    if not body.strip():
        return []  # some servers answer 204 / empty for no match
    data = json.loads(body)
    if not isinstance(data, list):
        raise ExportError(f"QIDO-RS {path}: not a JSON array")
    return data


def qido_find_series(peer: WebPeer, filters: AuditFilters) -> list[SeriesCandidate]:
    """Studies in the date range with the modality, then their series; filtered here.

    Raises
    ------
    ExportError
        The service cannot be reached or answers an HTTP error.
    """
    studies = _qido(peer, "/studies", {
        "StudyDate": filters.date_range(), "ModalitiesInStudy": filters.modality,
        "includefield": (INSTITUTION,)})
    out: list[SeriesCandidate] = []
    for study in studies:
        study_uid = _value(study, STUDY_UID)
        if not study_uid:
            continue
        for s in _qido(peer, f"/studies/{study_uid}/series", {
                "Modality": filters.modality,
                "includefield": (INSTITUTION, STATION, SERIAL, N_INSTANCES, DESCRIPTION,
                                 SERIES_DATE)}):
            series_uid = _value(s, SERIES_UID)
            if not series_uid:
                continue
            n = _value(s, N_INSTANCES)
            c = SeriesCandidate(
                study_uid=study_uid, series_uid=series_uid, modality=_value(s, MODALITY),
                study_date=_value(study, STUDY_DATE) or _value(s, SERIES_DATE),
                institution_name=_value(s, INSTITUTION) or _value(study, INSTITUTION),
                station_name=_value(s, STATION), device_serial=_value(s, SERIAL),
                series_description=_value(s, DESCRIPTION),
                instances=int(n) if n and n.isdigit() else None)
            if filters.accepts(c):
                out.append(c)
    LOGGER.info("QIDO-RS %s: %d matching series", peer.base_url, len(out))
    return out


def wado_retrieve(peer: WebPeer, candidate: SeriesCandidate, service: IngestService,
                  calling_ae: str = "QCD-WADO") -> RetrieveResult:
    """Fetch the series with WADO-RS and store every instance; never raises."""
    path = f"/studies/{candidate.study_uid}/series/{candidate.series_uid}"
    try:
        ctype, body = _get(peer, path, {}, DICOM_MULTIPART)
        parts = parse_multipart(ctype, body)
    except urllib.error.HTTPError as exc:
        return RetrieveResult(False, error=f"WADO-RS HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return RetrieveResult(False, error=f"WADO-RS cannot connect: {exc}")
    except StowRequestError as exc:
        return RetrieveResult(False, error=f"WADO-RS answer unreadable: {exc}")
    results = store_parts(service, parts, candidate.study_uid, calling_ae=calling_ae)
    done = sum(r.status == status.SUCCESS for r in results)
    failed = len(results) - done
    if failed:
        return RetrieveResult(False, done, failed, 0,
                              f"{failed} of {len(results)} instance(s) refused at ingest")
    if candidate.instances is not None and done < candidate.instances:
        return RetrieveResult(False, done, 0, 0,
                              f"{done} of {candidate.instances} instance(s) retrieved")
    return RetrieveResult(True, done)
