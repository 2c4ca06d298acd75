"""Predictions: whether the row is the answer the client got (``answered``), or a shadow candidate's.

In shadow mode every request is logged twice, under the stable version and under the candidate's. Readers
that take every version (the console, the monitoring report, feedback) count answered rows only; live
accuracy per version still grades the candidate's rows. Existing rows were all answers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: Postgres records it in the catalogue without rewriting the table.
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("answered", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("answered")
