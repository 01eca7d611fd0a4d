"""Recording received instances: study/series upsert, instance row, late re-open."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from qcd.db.engine import Database
from qcd.db.models import Instance, Series, SeriesState, Study, utcnow
from qcd.errors import DatabaseError
from qcd.ingest.header import InstanceHeader

LOGGER = logging.getLogger(__name__)
_RETRIES = 3


@dataclass(frozen=True)
class Recorded:
    """What recording an instance did to its series."""

    series_id: int
    new_instance: bool
    reopened: bool
    received_at: dt.datetime | None = None
    """The series' ``last_received_at`` as written (None: nothing written)."""


class StoredFile(Protocol):
    """Where the spool put the instance (satisfied by :class:`qcd.spool.SpooledFile`)."""

    @property
    def relpath(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def version(self) -> int: ...


def record_instance(
    db: Database,
    header: InstanceHeader,
    stored: StoredFile,
    *,
    calling_ae: str | None,
    reopen_completed: bool,
    now: dt.datetime | None = None,
) -> Recorded:
    """Insert (idempotently) the instance row and touch its study and series.

    ``now`` (default: the wall clock) becomes the instance's ``received_at`` and the
    series' ``last_received_at``.

    Concurrent associations may create the same study or series at once; the
    loser of the unique-constraint race retries and finds the winner's row.

    Raises
    ------
    DatabaseError
        The row could not be committed (the caller must not answer Success).
    """
    last_exc: Exception | None = None
    for _ in range(_RETRIES):
        try:
            with db.session() as session:
                return _record(session, header, stored, calling_ae, reopen_completed,
                               now or utcnow())
        except IntegrityError as exc:
            last_exc = exc
            continue
        except OperationalError as exc:
            raise DatabaseError(f"cannot record instance: {exc.orig}") from exc
    raise DatabaseError(f"cannot record instance after {_RETRIES} tries: {last_exc}")


def _record(
    session: Session,
    h: InstanceHeader,
    stored: StoredFile,
    calling_ae: str | None,
    reopen_completed: bool,
    now: dt.datetime,
) -> Recorded:
    study = session.scalars(select(Study).where(Study.study_uid == h.study_uid)).one_or_none()
    if study is None:
        study = Study(study_uid=h.study_uid, accession_number=h.accession_number,
                      study_date=h.study_date, first_received_at=now)
        session.add(study)
        session.flush()
    study.last_received_at = now

    series = session.scalars(
        select(Series).where(Series.series_uid == h.series_uid).with_for_update()
    ).one_or_none()
    if series is None:
        series = Series(
            study_id=study.id, series_uid=h.series_uid, modality=h.modality,
            body_part=h.body_part, manufacturer=h.manufacturer, model_name=h.model_name,
            station_name=h.station_name, device_serial=h.device_serial,
            institution_name=h.institution_name, series_description=h.series_description,
            series_number=h.series_number, state=SeriesState.RECEIVED, generation=1,
            instance_count=0, first_received_at=now, last_received_at=now,
        )
        session.add(series)
        session.flush()

    exists = session.scalars(
        select(Instance.id).where(Instance.sop_uid == h.sop_uid,
                                  Instance.version == stored.version)
    ).first()
    if exists is not None:
        # An idempotent resend: the row is already there; nothing changes.
        return Recorded(series.id, new_instance=False, reopened=False)

    session.add(Instance(
        series_id=series.id, sop_uid=h.sop_uid, version=stored.version,
        sop_class_uid=h.sop_class_uid, transfer_syntax=h.transfer_syntax,
        instance_number=h.instance_number, path=stored.relpath, size=stored.size,
        sha256=stored.sha256, calling_ae=calling_ae, received_at=now,
    ))
    series.instance_count += 1
    series.last_received_at = now
    reopened = False
    if series.state == SeriesState.COMPLETE:
        if reopen_completed:
            series.state = SeriesState.RECEIVED
            series.generation += 1
            series.completed_at = None
            reopened = True
            LOGGER.info("late instance re-opened series %s (generation %d)",
                        h.series_uid, series.generation)
        else:
            LOGGER.info("late instance kept for completed series %s (re-open disabled)",
                        h.series_uid)
    return Recorded(series.id, new_instance=True, reopened=reopened, received_at=now)
