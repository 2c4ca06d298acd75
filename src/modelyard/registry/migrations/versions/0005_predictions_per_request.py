"""Predictions: one row per request, its values column by column, instead of one row per predicted row.

A request of N rows becomes one row holding ``rows`` = N, ``features`` {name: [N values]}, ``labels``
[N classes] and ``probabilities`` {class: [N values]}. The unique key becomes (request_id, model,
version, created_at): a replay is still ignored, and a candidate version may log its prediction of the
same request beside the served one.

The upgrade keeps every logged row: the old rows are grouped by (request_id, model, version,
created_at) and ordered by row, a feature or class that some rows lack gets null there, and a row
number the log never held (a row the database once refused) gets null in every column, so that each
value stays at its row number. The downgrade splits each request back into its rows; where two
versions logged one request at the same moment, the old unique key keeps the first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows read and written per round trip while the table is copied.
_CHUNK = 1000
_INDEX = "ix_predictions_model_created_at"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _big_id() -> sa.types.TypeEngine[Any]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _common_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", _big_id(), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
    ]


def _create_per_request() -> sa.Table:
    return op.create_table(
        "predictions",
        *_common_columns(),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("features", _json(), nullable=False),
        sa.Column("labels", _json(), nullable=False),
        sa.Column("probabilities", _json(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('"rows" >= 1', name=op.f("ck_predictions_rows_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "request_id",
            "model",
            "version",
            "created_at",
            name=op.f("uq_predictions_request_id_model_version_created_at"),
        ),
    )


def _create_per_row() -> sa.Table:
    """The table as 0004 left it."""
    return op.create_table(
        "predictions",
        sa.Column("id", _big_id(), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("features", _json(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("probabilities", _json(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('"row" >= 0', name=op.f("ck_predictions_row_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "request_id",
            "row",
            "model",
            "created_at",
            name=op.f("uq_predictions_request_id_row_model_created_at"),
        ),
    )


def _set_aside(unique_key: str) -> str:
    """Rename ``predictions`` out of the way, with the names Postgres keeps schema-wide (its key's
    indexes and id sequence), so that the new table can take them. Returns the table's new name."""
    aside = f"predictions_{revision}_old"
    op.drop_index(_INDEX, table_name="predictions")
    op.rename_table("predictions", aside)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {aside} RENAME CONSTRAINT pk_predictions TO pk_{aside}")
        op.execute(f"ALTER TABLE {aside} RENAME CONSTRAINT {unique_key} TO uq_{aside}")
        op.execute(f"ALTER SEQUENCE IF EXISTS predictions_id_seq RENAME TO {aside}_id_seq")
    return aside


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    while chunk := list(itertools.islice(rows, _CHUNK)):
        yield chunk


def _requests(per_row: Sequence[sa.Row[Any]]) -> dict[str, Any]:
    """One request's row (the new shape) from its old rows, in row order."""
    count = per_row[-1].row + 1
    features: dict[str, list[Any]] = {}
    probabilities: dict[str, list[Any]] = {}
    labels: list[str | None] = [None] * count
    for old in per_row:
        labels[old.row] = old.label
        for into, values in ((features, old.features), (probabilities, old.probabilities)):
            for name, value in (values or {}).items():
                into.setdefault(name, [None] * count)[old.row] = value
    first = per_row[0]
    return {
        "request_id": first.request_id,
        "model": first.model,
        "version": first.version,
        "rows": count,
        "features": features,
        "labels": labels,
        "probabilities": probabilities,
        "latency_ms": first.latency_ms,
        "created_at": first.created_at,
    }


def upgrade() -> None:
    connection = op.get_bind()
    aside = _set_aside("uq_predictions_request_id_row_model_created_at")
    per_request = _create_per_request()
    old = sa.table(
        aside,
        *(sa.column(name) for name in ("request_id", "row", "model", "version", "label", "latency_ms")),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("features", _json()),
        sa.column("probabilities", _json()),
    )
    group = (old.c.request_id, old.c.model, old.c.version, old.c.created_at)
    ordered = sa.select(old).order_by(*group, old.c.row).execution_options(yield_per=_CHUNK)

    def requests() -> Iterator[dict[str, Any]]:
        result = connection.execute(ordered)
        for _, rows in itertools.groupby(
            result, key=lambda r: (r.request_id, r.model, r.version, r.created_at)
        ):
            yield _requests(list(rows))

    for chunk in _chunks(requests()):
        connection.execute(sa.insert(per_request), chunk)
    op.drop_table(aside)
    op.create_index(_INDEX, "predictions", ["model", "created_at"])


def downgrade() -> None:
    connection = op.get_bind()
    aside = _set_aside("uq_predictions_request_id_model_version_created_at")
    per_row = _create_per_row()
    new = sa.table(
        aside,
        *(sa.column(name) for name in ("request_id", "model", "version", "rows", "latency_ms")),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("features", _json()),
        sa.column("labels", _json()),
        sa.column("probabilities", _json()),
    )
    ordered = (
        sa.select(new)
        .order_by(new.c.request_id, new.c.model, new.c.created_at, new.c.version)
        .execution_options(yield_per=_CHUNK)
    )

    def rows() -> Iterator[dict[str, Any]]:
        previous = None
        for request in connection.execute(ordered):
            key = (request.request_id, request.model, request.created_at)
            if key == previous:
                continue  # another version of the same request and moment: the old key holds one
            previous = key
            features, probabilities = request.features or {}, request.probabilities or {}
            for row in range(request.rows):
                label = request.labels[row]
                if label is None:
                    continue  # a row the log never held
                yield {
                    "request_id": request.request_id,
                    "row": row,
                    "model": request.model,
                    "version": request.version,
                    "features": {name: values[row] for name, values in features.items()},
                    "label": label,
                    "probabilities": {
                        name: values[row] for name, values in probabilities.items() if values[row] is not None
                    },
                    "latency_ms": request.latency_ms,
                    "created_at": request.created_at,
                }

    for chunk in _chunks(rows()):
        connection.execute(sa.insert(per_row), chunk)
    op.drop_table(aside)
    op.create_index(_INDEX, "predictions", ["model", "created_at"])
