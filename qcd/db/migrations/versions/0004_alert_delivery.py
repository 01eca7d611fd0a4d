"""alert delivery: one notification row per alert and channel

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("state", sa.Enum("PENDING", "SENT", "DEAD", "SUPPRESSED",
                                    name="notificationstate", native_enum=False, length=16),
                  nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("alert_id", "channel", name="uq_alert_notification_alert_channel"),
    )
    with op.batch_alter_table("alert_notifications") as batch:
        batch.create_index("ix_alert_notifications_alert_id", ["alert_id"])
        batch.create_index("ix_alert_notifications_state_next", ["state", "next_attempt_at"])
        batch.create_index("ix_alert_notifications_channel_sent", ["channel", "sent_at"])


def downgrade() -> None:
    with op.batch_alter_table("alert_notifications") as batch:
        batch.drop_index("ix_alert_notifications_channel_sent")
        batch.drop_index("ix_alert_notifications_state_next")
        batch.drop_index("ix_alert_notifications_alert_id")
    op.drop_table("alert_notifications")
