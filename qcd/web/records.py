"""Row-level reads and the one write of the web UI: recent series, alerts, a study, acknowledge.

Everything returned is plain JSON-ready dicts built from the database only (UIDs,
station, site, modality, findings); qcd stores no patient name, ID or birth date.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from qcd.db.engine import Database
from qcd.db.models import Alert, AlertState, Finding, Instance, Job, Series, Study, utcnow

MAX_COMMENT = 2000


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _finding(f: Finding) -> dict[str, Any]:
    return {"id": f.id, "analyzer": f.analyzer, "name": f.name, "value_num": f.value_num,
            "value_text": f.value_text, "unit": f.unit,
            "value": f.value_text if f.value_text is not None else f.value_num,
            "model": f"{f.model_name}/{f.model_version}" if f.model_name else None,
            "payload": f.payload or {}}


def _series(s: Series, study_uid: str) -> dict[str, Any]:
    return {"series_uid": s.series_uid, "study_uid": study_uid, "modality": s.modality,
            "site": s.institution_name, "station": s.station_name,
            "device_serial": s.device_serial, "description": s.series_description,
            "series_number": s.series_number, "state": s.state.value,
            "instances": s.instance_count, "received_at": _iso(s.first_received_at),
            "completed_at": _iso(s.completed_at)}


def stations(db: Database) -> list[str]:
    """Every station name seen, for the operator view's filter."""
    with db.session() as session:
        rows = session.scalars(select(Series.station_name).distinct()
                               .where(Series.station_name.is_not(None))).all()
    return sorted(str(r) for r in rows)


def recent_series(db: Database, station: str | None = None, limit: int = 50
                  ) -> list[dict[str, Any]]:
    """The newest series (by last receipt) with their jobs and current findings."""
    with db.session() as session:
        query = (select(Series, Study.study_uid).join(Study, Study.id == Series.study_id)
                 .order_by(Series.last_received_at.desc(), Series.id.desc()).limit(limit))
        if station:
            query = query.where(Series.station_name == station)
        rows = session.execute(query).all()
        ids = [s.id for s, _ in rows]
        jobs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        findings: dict[int, list[dict[str, Any]]] = defaultdict(list)
        open_alerts: dict[int, int] = defaultdict(int)
        if ids:
            gen = {s.id: s.generation for s, _ in rows}
            for job in session.scalars(select(Job).where(Job.series_id.in_(ids))
                                       .order_by(Job.id)):
                if job.generation == gen[job.series_id]:
                    jobs[job.series_id].append({"analyzer": job.analyzer,
                                                "state": job.state.value,
                                                "error": (job.error or "")[:200] or None})
            for f, generation in session.execute(
                select(Finding, Job.generation).join(Job, Job.id == Finding.job_id)
                .where(Finding.series_id.in_(ids)).order_by(Finding.id)
            ):
                if generation == gen[f.series_id]:
                    row = _finding(f)
                    row.pop("payload")
                    findings[f.series_id].append(row)
            for a in session.scalars(select(Alert).where(Alert.series_id.in_(ids),
                                                         Alert.state == AlertState.OPEN)):
                if a.series_id is not None:
                    open_alerts[a.series_id] += 1
    out = []
    for s, study_uid in rows:
        row = _series(s, study_uid)
        row.update(jobs=jobs[s.id], findings=findings[s.id], open_alerts=open_alerts[s.id])
        out.append(row)
    return out


def alerts(db: Database, state: str | None = "OPEN", station: str | None = None,
           limit: int = 100) -> list[dict[str, Any]]:
    """Alerts, newest first, with the station, site and UIDs of their series."""
    with db.session() as session:
        query = (select(Alert, Series, Study.study_uid)
                 .outerjoin(Series, Series.id == Alert.series_id)
                 .outerjoin(Study, Study.id == Series.study_id)
                 .order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit))
        if state:
            query = query.where(Alert.state == AlertState(state))
        if station:
            query = query.where(Series.station_name == station)
        rows = session.execute(query).all()
    return [alert_dict(a, s, study_uid) for a, s, study_uid in rows]


def alert_dict(a: Alert, s: Series | None, study_uid: str | None) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "severity": a.severity, "message": a.message,
            "state": a.state.value, "created_at": _iso(a.created_at),
            "station": s.station_name if s else None, "site": s.institution_name if s else None,
            "series_uid": s.series_uid if s else None, "study_uid": study_uid,
            "acknowledged_at": _iso(a.acknowledged_at), "acknowledged_by": a.acknowledged_by,
            "comment": a.comment}


class AckError(ValueError):
    """An acknowledgement that cannot be recorded (unknown or already acknowledged alert)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def acknowledge(db: Database, alert_id: int, name: str, comment: str) -> dict[str, Any]:
    """Mark an OPEN alert ACKNOWLEDGED by ``name`` with ``comment`` (persisted).

    Raises
    ------
    AckError
        404 for an unknown alert, 409 when it was acknowledged already, 400 for an
        empty name.
    """
    name = name.strip()[:64]
    if not name:
        raise AckError("a name is required to acknowledge an alert", 400)
    with db.session() as session:
        alert = session.get(Alert, alert_id, with_for_update=True)
        if alert is None:
            raise AckError(f"no alert {alert_id}", 404)
        if alert.state != AlertState.OPEN:
            raise AckError(f"alert {alert_id} was acknowledged by {alert.acknowledged_by} "
                           f"at {_iso(alert.acknowledged_at)}", 409)
        alert.state = AlertState.ACKNOWLEDGED
        alert.acknowledged_at = utcnow()
        alert.acknowledged_by = name
        alert.comment = comment.strip()[:MAX_COMMENT] or None
        series = session.get(Series, alert.series_id) if alert.series_id else None
        study = session.get(Study, series.study_id) if series else None
        return alert_dict(alert, series, study.study_uid if study else None)


def study(db: Database, study_uid: str) -> dict[str, Any] | None:
    """A study with every series, its current jobs and findings (payload included), alerts."""
    with db.session() as session:
        st = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if st is None:
            return None
        series = session.scalars(select(Series).where(Series.study_id == st.id)
                                 .order_by(Series.series_number, Series.id)).all()
        out_series = []
        for s in series:
            row = _series(s, st.study_uid)
            current = session.scalars(select(Job).where(Job.series_id == s.id,
                                                        Job.generation == s.generation)
                                      .order_by(Job.id)).all()
            row["jobs"] = [{"id": j.id, "analyzer": j.analyzer, "state": j.state.value,
                            "error": j.error, "report_sop_uid": j.report_sop_uid,
                            "finished_at": _iso(j.finished_at)} for j in current]
            row["findings"] = [_finding(f) for f in session.scalars(
                select(Finding).where(Finding.job_id.in_([j.id for j in current]))
                .order_by(Finding.id))]
            row["alerts"] = [alert_dict(a, s, st.study_uid) for a in session.scalars(
                select(Alert).where(Alert.series_id == s.id).order_by(Alert.id))]
            out_series.append(row)
        return {"study_uid": st.study_uid, "accession_number": st.accession_number,
                "study_date": st.study_date, "received_at": _iso(st.first_received_at),
                "series": out_series}


def series_files(db: Database, series_uid: str) -> list[str] | None:
    """Spool-relative paths of the newest version of each instance of a series."""
    with db.session() as session:
        s = session.scalar(select(Series).where(Series.series_uid == series_uid))
        if s is None:
            return None
        latest: dict[str, tuple[int, str]] = {}
        for sop, version, path in session.execute(
            select(Instance.sop_uid, Instance.version, Instance.path)
            .where(Instance.series_id == s.id)
        ):
            if sop not in latest or version > latest[sop][0]:
                latest[sop] = (version, path)
    return [path for _, path in latest.values()]
