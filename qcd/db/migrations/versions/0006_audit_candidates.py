"""retrospective audit: one row per archived series and model version to retrieve

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("institution_name", sa.String(length=64), nullable=True),
        sa.Column("station_name", sa.String(length=64), nullable=True),
        sa.Column("device_serial", sa.String(length=64), nullable=True),
        sa.Column("series_description", sa.String(length=64), nullable=True),
        sa.Column("expected_instances", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("state", sa.Enum("PENDING", "RETRIEVING", "RETRIEVED", "FAILED", "SKIPPED",
                                   name="auditstate", native_enum=False, length=16),
                  nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("retrieved_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_uid", "model_name", "model_version",
                            name="uq_audit_series_model"),
    )
    with op.batch_alter_table("audit_candidates") as batch:
        batch.create_index("ix_audit_candidates_state", ["state", "updated_at"])


def downgrade() -> None:
    with op.batch_alter_table("audit_candidates") as batch:
        batch.drop_index("ix_audit_candidates_state")
    op.drop_table("audit_candidates")
