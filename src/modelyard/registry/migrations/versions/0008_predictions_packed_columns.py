"""Predictions: numeric feature columns and class probabilities packed as binary float64.

Adds ``packed_features`` and ``packed_probabilities`` (``modelyard.registry.packed``), NULL for every
row logged before: the upgrade leaves those rows as they are, since a reader joins a JSON column and
its packed companion whichever holds a column. The downgrade writes each packed column back into its
JSON column (None where a value was missing, as JSON stores it) before dropping the packed ones, so
nothing logged is lost either way.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from modelyard.registry.packed import logged_columns

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows read and rewritten per round trip by the downgrade.
_CHUNK = 500


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("packed_features", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("packed_probabilities", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    predictions = sa.table(
        "predictions",
        sa.column("id", sa.BigInteger()),
        sa.column("features", _json()),
        sa.column("probabilities", _json()),
        sa.column("packed_features", sa.LargeBinary()),
        sa.column("packed_probabilities", sa.LargeBinary()),
    )
    connection = op.get_bind()
    packed = sa.or_(
        predictions.c.packed_features.is_not(None), predictions.c.packed_probabilities.is_not(None)
    )
    last_id = None
    while True:
        query = sa.select(predictions).where(packed).order_by(predictions.c.id).limit(_CHUNK)
        if last_id is not None:
            query = query.where(predictions.c.id > last_id)
        chunk = connection.execute(query).all()
        if not chunk:
            break
        for row in chunk:
            connection.execute(
                predictions.update()
                .where(predictions.c.id == row.id)
                .values(
                    features=logged_columns(row.features, row.packed_features),
                    probabilities=logged_columns(row.probabilities, row.packed_probabilities),
                )
            )
        last_id = chunk[-1].id
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("packed_probabilities")
        batch.drop_column("packed_features")
