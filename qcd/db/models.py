"""SQLAlchemy 2 models: studies, series, instances, jobs, findings, deliveries, alerts, users.

No patient name, ID or birth date is stored: UIDs and the accession number are the
handles. Times are naive UTC (the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Naive UTC now, the only clock the database sees."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SeriesState(enum.StrEnum):
    RECEIVED = "RECEIVED"
    """Instances are arriving (or may still arrive)."""
    COMPLETE = "COMPLETE"
    """Quiet for the configured period; routed to analyzers."""


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    UNAVAILABLE = "UNAVAILABLE"
    """Routed to an analyzer this installation does not implement (kept, not dropped)."""


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DEAD = "DEAD"


class AlertState(enum.StrEnum):
    OPEN = "OPEN"
    ACKNOWLEDGED = "ACKNOWLEDGED"


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, validate_strings=True)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        Index("ix_series_state_last", "state", "last_received_at"),
        Index("ix_series_first_received", "first_received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(64))
    station_name: Mapped[str | None] = mapped_column(String(64))
    device_serial: Mapped[str | None] = mapped_column(String(64))
    institution_name: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[SeriesState] = mapped_column(_enum(SeriesState), default=SeriesState.RECEIVED)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped when a late instance re-opens a completed series."""
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("sop_uid", "version", name="uq_instance_sop_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255))
    """Relative to the spool root."""
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("series_id", "analyzer", "generation", name="uq_job_series_analyzer_gen"),
        Index("ix_jobs_state_not_before", "state", "not_before"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    analyzer: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    not_before: Mapped[dt.datetime | None] = mapped_column(DateTime)
    """Not to be claimed before this time (retry back-off)."""
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    """While RUNNING: when the job counts as abandoned by a dead worker."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    report_sop_uid: Mapped[str | None] = mapped_column(String(64))
    """SOP Instance UID of the SR made from this job's findings (set once it is on disk)."""

    series: Mapped[Series] = relationship(back_populates="jobs")


class Finding(Base):
    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    analyzer: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    value_num: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(String(128))
    unit: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_delivery_sop_dest"),
        Index("ix_deliveries_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    object_kind: Mapped[str] = mapped_column(String(8))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(255))
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_state_created", "state", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    """Makes raising the same alert twice a no-op (exactly-once effects)."""
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    state: Mapped[AlertState] = mapped_column(_enum(AlertState), default=AlertState.OPEN)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)


class NotificationState(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DEAD = "DEAD"
    """Failed permanently, or max_attempts times."""
    SUPPRESSED = "SUPPRESSED"
    """Not sent on purpose (rate limit, alert acknowledged first); see last_error."""


class AlertNotification(Base):
    """The delivery status of one alert on one channel."""

    __tablename__ = "alert_notifications"
    __table_args__ = (
        UniqueConstraint("alert_id", "channel", name="uq_alert_notification_alert_channel"),
        Index("ix_alert_notifications_state_next", "state", "next_attempt_at"),
        Index("ix_alert_notifications_channel_sent", "channel", "sent_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    state: Mapped[NotificationState] = mapped_column(
        _enum(NotificationState),
        default=NotificationState.PENDING,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class UserRole(enum.StrEnum):
    VIEWER = "viewer"
    """Reads every page and API; changes nothing."""
    OPERATOR = "operator"
    """Also acknowledges alerts."""


class User(Base):
    """A local account of the web UI; the password is stored only as a salted scrypt hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[UserRole] = mapped_column(_enum(UserRole), default=UserRole.VIEWER)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A logged-in browser: only the SHA-256 of the cookie's token is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class AuditState(enum.StrEnum):
    PENDING = "PENDING"
    """Found in the PACS; to be retrieved."""
    RETRIEVING = "RETRIEVING"
    """A retrieve is in flight (reset to PENDING when its run died)."""
    RETRIEVED = "RETRIEVED"
    """The PACS reported every sub-operation done; the daemon analyses it."""
    FAILED = "FAILED"
    """The last retrieve failed; retried by the next run until max_attempts."""
    SKIPPED = "SKIPPED"
    """Already analysed here with the same model version: never retrieved."""


class AuditCandidate(Base):
    """One archived series a retrospective audit wants analysed by one model version."""

    __tablename__ = "audit_candidates"
    __table_args__ = (
        UniqueConstraint("series_uid", "model_name", "model_version",
                         name="uq_audit_series_model"),
        Index("ix_audit_candidates_state", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    institution_name: Mapped[str | None] = mapped_column(String(64))
    station_name: Mapped[str | None] = mapped_column(String(64))
    device_serial: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    state: Mapped[AuditState] = mapped_column(_enum(AuditState), default=AuditState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    retrieved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
