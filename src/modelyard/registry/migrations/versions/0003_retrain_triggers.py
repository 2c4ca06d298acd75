"""Retrain triggers: the alerts the retrain webhook received, unique per Alertmanager alert.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retrain_triggers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("alertname", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_triggers")),
        sa.UniqueConstraint(
            "group_key",
            "fingerprint",
            "starts_at",
            name=op.f("uq_retrain_triggers_group_key_fingerprint_starts_at"),
        ),
    )
    op.create_index("ix_retrain_triggers_model_received_at", "retrain_triggers", ["model", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_retrain_triggers_model_received_at", table_name="retrain_triggers")
    op.drop_table("retrain_triggers")
