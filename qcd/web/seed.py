"""Synthetic findings for the dashboard's demo, tests and benchmark (never used by the daemon).

Writes studies, series, jobs, findings and alerts straight into the database, shaped
like the ``earl``, ``motion``, ``chest`` and ``atrium`` analyzers' output, spread over
sites, scanners and days. Bulk inserts with explicit ids keep 100k findings fast.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, text

from qcd.db.engine import Database
from qcd.db.models import (
    Alert,
    AlertState,
    Finding,
    Job,
    JobState,
    Series,
    SeriesState,
    Study,
    utcnow,
)

CHEST_LABELS = ("effusion", "pneumothorax", "consolidation", "cardiomegaly", "nodule")
LAVI_BANDS = ("normal", "mild", "moderate", "severe")


@dataclass(frozen=True)
class Scanner:
    site: str
    station: str
    serial: str
    kind: str
    """Analyzer whose findings this scanner's series get."""
    modality: str


SCANNERS = (
    Scanner("Hospital North", "PETCT-N1", "1001", "earl", "PT"),
    Scanner("Hospital North", "XCT2-N", "2001", "motion", "CT"),
    Scanner("Hospital North", "DR-N1", "3001", "chest", "DX"),
    Scanner("Hospital North", "MR-N1", "4001", "atrium", "MR"),
    Scanner("Hospital South", "PETCT-S1", "1002", "earl", "PT"),
    Scanner("Hospital South", "PETCT-S2", "1003", "earl", "PT"),
    Scanner("Hospital South", "XCT2-S", "2002", "motion", "CT"),
    Scanner("Hospital South", "DR-S1", "3002", "chest", "DX"),
    Scanner("Hospital South", "MR-S1", "4002", "atrium", "MR"),
)
EARL_P = {"1001": (0.2, 0.5, 0.25, 0.05), "1002": (0.6, 0.2, 0.1, 0.1),
          "1003": (0.1, 0.3, 0.55, 0.05)}
"""clinical, EARL1, EARL2, indeterminate probabilities per PET scanner."""


def _findings(kind: str, serial: str, rng: np.random.Generator
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Findings rows (without ids) of one series and the alert kinds they raise."""
    rows: list[dict[str, Any]] = []
    alerts: list[str] = []

    def add(name: str, num: float | None = None, txt: str | None = None,
            unit: str | None = None, payload: dict[str, Any] | None = None) -> None:
        rows.append({"analyzer": kind, "name": name, "value_num": num, "value_text": txt,
                     "unit": unit, "payload": payload, "model_name": kind,
                     "model_version": "1.0.0"})

    if kind == "earl":
        cls = rng.choice(["clinical", "EARL1", "EARL2", "indeterminate"],
                         p=EARL_P.get(serial, (0.25, 0.25, 0.25, 0.25)))
        p = float(rng.uniform(0.6, 1.0) if cls != "clinical" else rng.uniform(0, 0.4))
        add("earl_class", txt=str(cls), payload={"p_earl": round(p, 4)})
        add("p_earl", num=p, unit="1")
    elif kind == "motion":
        grade = int(rng.choice([1, 2, 3, 4, 5], p=[0.35, 0.3, 0.2, 0.1, 0.05]))
        rescan = grade >= 4
        add("motion_grade", num=float(grade), unit="1", payload={"key_slices": [10, 20, 30]})
        add("rescan_recommended", txt="true" if rescan else "false")
        if rescan:
            alerts.append("rescan")
    else:
        if kind == "chest":
            probs = rng.beta(0.6, 3.0, len(CHEST_LABELS))
            for label, prob in zip(CHEST_LABELS, probs, strict=True):
                add(f"chest_{label}", num=float(prob), unit="1")
            urgent = bool(probs[1] >= 0.6 or probs[0] >= 0.8)
            add("normal", txt="true" if probs.max() < 0.5 else "false")
            add("urgent", txt="true" if urgent else "false")
            if urgent:
                alerts.append("urgent_finding")
        else:
            volume = float(rng.normal(70, 22))
            index = volume / float(rng.uniform(1.6, 2.2))
            band = LAVI_BANDS[int(np.searchsorted([34, 41, 48], index))]
            add("la_volume", num=volume, unit="ml")
            add("la_volume_index", num=index, unit="ml/m2")
            add("lavi_band", txt=band)
    return rows, alerts


def seed(db: Database, n_series: int = 200, days: int = 30, seed: int = 0,
         now: dt.datetime | None = None, failure_rate: float = 0.03) -> dict[str, int]:
    """Insert ``n_series`` analysed series (one per study) over the last ``days``.

    Returns the number of rows written per table.
    """
    rng = np.random.default_rng(seed)
    now = now or utcnow()
    with db.session() as session:
        base = {m.__tablename__: int(session.scalar(select(func.max(m.id))) or 0)
                for m in (Study, Series, Job, Finding, Alert)}
    studies: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for i in range(n_series):
        sc = SCANNERS[int(rng.integers(len(SCANNERS)))]
        received = now - dt.timedelta(seconds=float(rng.uniform(0, days * 86400)))
        sid, seid, jid = base["studies"] + i + 1, base["series"] + i + 1, base["jobs"] + i + 1
        uid = f"1.2.826.0.1.3680043.10.543.{seed}.{sid}"
        studies.append({"id": sid, "study_uid": uid, "accession_number": None,
                        "study_date": received.strftime("%Y%m%d"),
                        "first_received_at": received, "last_received_at": received})
        series.append({"id": seid, "study_id": sid, "series_uid": uid + ".1",
                       "modality": sc.modality, "station_name": sc.station,
                       "device_serial": sc.serial, "institution_name": sc.site,
                       "series_description": f"{sc.kind} demo", "series_number": 1,
                       "state": SeriesState.COMPLETE, "generation": 1, "instance_count": 0,
                       "first_received_at": received, "last_received_at": received,
                       "completed_at": received})
        failed = bool(rng.random() < failure_rate)
        done_at = received + dt.timedelta(seconds=30)
        jobs.append({"id": jid, "series_id": seid, "analyzer": sc.kind, "generation": 1,
                     "state": JobState.FAILED if failed else JobState.DONE, "attempts": 1,
                     "error": "synthetic failure" if failed else None,
                     "created_at": received, "updated_at": done_at, "started_at": received,
                     "finished_at": done_at})
        if failed:
            continue
        rows, kinds = _findings(sc.kind, sc.serial, rng)
        for row in rows:
            row.update(id=base["findings"] + len(findings) + 1, job_id=jid, series_id=seid,
                       created_at=done_at)
            findings.append(row)
        for kind in kinds:
            alerts.append({"id": base["alerts"] + len(alerts) + 1,
                           "dedupe_key": f"{kind}:{jid}:seed", "series_id": seid,
                           "job_id": jid, "kind": kind, "severity": "critical",
                           "message": f"CRITICAL {kind}: {sc.kind} on {sc.station}",
                           "state": AlertState.OPEN, "created_at": done_at})
    with db.session() as session:
        for model, rows in ((Study, studies), (Series, series), (Job, jobs),
                            (Finding, findings), (Alert, alerts)):
            for start in range(0, len(rows), 5000):
                if rows[start:start + 5000]:
                    session.execute(insert(model), rows[start:start + 5000])
        if not db.is_sqlite:
            for model in (Study, Series, Job, Finding, Alert):
                table = model.__tablename__
                session.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"))
    return {"studies": len(studies), "series": len(series), "jobs": len(jobs),
            "findings": len(findings), "alerts": len(alerts)}
