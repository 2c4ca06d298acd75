"""Initial schema: datasets, model versions with stages, promotion history, version counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "version_counters",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('model', 'dataset')", name=op.f("ck_version_counters_kind")),
        sa.CheckConstraint("last_version >= 0", name=op.f("ck_version_counters_last_version_not_negative")),
        sa.PrimaryKeyConstraint("kind", "name", name=op.f("pk_version_counters")),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("columns", _json(), nullable=False),
        sa.Column("table_name", sa.String(length=63), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("row_count >= 0", name=op.f("ck_datasets_row_count_not_negative")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_datasets_version_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", "fingerprint", name=op.f("uq_datasets_name_fingerprint")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_datasets_name_version")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "stage IN ('none', 'staging', 'production', 'archived')", name=op.f("ck_model_versions_stage")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_model_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_model_versions_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_versions_name_version")),
    )
    op.create_index(op.f("ix_model_versions_dataset_id"), "model_versions", ["dataset_id"])
    # At most one production version per name, enforced by the database on both backends.
    op.create_index(
        "uq_model_versions_one_production",
        "model_versions",
        ["name"],
        unique=True,
        sqlite_where=sa.text("stage = 'production'"),
        postgresql_where=sa.text("stage = 'production'"),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reverted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_promotions_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    op.create_index(op.f("ix_promotions_model_version_id"), "promotions", ["model_version_id"])


def downgrade() -> None:
    # Dataset tables (ds_*) made by `modelyard data load` are left in place: they hold user data.
    op.drop_index(op.f("ix_promotions_model_version_id"), table_name="promotions")
    op.drop_table("promotions")
    op.drop_index("uq_model_versions_one_production", table_name="model_versions")
    op.drop_index(op.f("ix_model_versions_dataset_id"), table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_table("datasets")
    op.drop_table("version_counters")
