"""Predictions: a request id used twice is logged twice, told apart by its time.

The unique key of ``predictions`` becomes (request_id, row, model, created_at). A replayed record keeps
its ``created_at``, so a replay is still ignored; a second prediction under a request id already logged
is stored beside the first instead of being dropped, and feedback on such an id is refused as ambiguous.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite changes a constraint by copying the table
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint("uq_predictions_request_id_row_model", type_="unique")
        batch.create_unique_constraint(
            "uq_predictions_request_id_row_model_created_at", ["request_id", "row", "model", "created_at"]
        )


def downgrade() -> None:
    # Keeps the first prediction of each duplicated key, as the old unique key requires.
    op.execute(
        "DELETE FROM predictions WHERE id NOT IN "
        "(SELECT MIN(id) FROM predictions GROUP BY request_id, row, model)"
    )
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint("uq_predictions_request_id_row_model_created_at", type_="unique")
        batch.create_unique_constraint("uq_predictions_request_id_row_model", ["request_id", "row", "model"])
