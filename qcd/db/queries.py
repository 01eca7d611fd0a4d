"""Read-only summaries for `qcd status`, metrics and health checks."""

from __future__ import annotations

from sqlalchemy import func, select

from qcd.db.engine import Database
from qcd.db.models import Finding, Instance, Job, Series, Study


def job_counts(db: Database) -> dict[str, int]:
    """Jobs by state."""
    with db.session() as session:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {str(state.value if hasattr(state, "value") else state): n for state, n in rows}


def status_summary(db: Database) -> dict[str, object]:
    """Counts of studies, series by state, instances and jobs by state."""
    with db.session() as session:
        series = session.execute(select(Series.state, func.count()).group_by(Series.state)).all()
        summary: dict[str, object] = {
            "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
            "series": {s.value: n for s, n in series},
            "instances": session.scalar(select(func.count()).select_from(Instance)) or 0,
        }
    summary["jobs"] = job_counts(db)
    return summary


def recent_findings(db: Database, limit: int = 30) -> list[dict[str, object]]:
    """The newest findings with their series' description and station (no patient data)."""
    with db.session() as session:
        rows = session.execute(
            select(Finding, Series.series_uid, Series.series_description, Series.modality,
                   Series.station_name)
            .join(Series, Series.id == Finding.series_id)
            .order_by(Finding.id.desc()).limit(limit)
        ).all()
    return [{
        "series_uid": uid, "series_description": desc, "modality": modality,
        "station": station, "analyzer": f.analyzer, "name": f.name,
        "value": f.value_text if f.value_text is not None else f.value_num, "unit": f.unit,
        "model": f"{f.model_name}/{f.model_version}" if f.model_name else None,
    } for f, uid, desc, modality, station in reversed(rows)]
