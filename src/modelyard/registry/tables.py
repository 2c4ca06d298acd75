"""The registry's tables, as SQLAlchemy 2 typed ORM classes.

Types are portable: JSON is JSONB on Postgres, constraints carry explicit names (so migrations can refer
to them), and stages are checked strings rather than a native enum (which would need its own migrations).
The migrations under ``migrations/versions`` create exactly this schema; a test keeps the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Dataset and model names follow spec.NAME_PATTERN: a DNS label, at most 63 characters.
NAME_LENGTH = 63
RUN_ID_LENGTH = 253  # a Kubernetes object name at most
SHA256_HEX_LENGTH = 64

JsonType = JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Stage(StrEnum):
    """Where a model version stands. At most one version per name is in production."""

    NONE = "none"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class CounterKind(StrEnum):
    MODEL = "model"
    DATASET = "dataset"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class VersionCounter(Base):
    """The last version handed out per (kind, name).

    Allocating a version updates this row inside the publishing transaction, so the row lock (Postgres) or
    the write lock (SQLite) serialises publishers of one name, and a rolled-back publish gives its number
    back: versions have no gaps and no duplicates.
    """

    __tablename__ = "version_counters"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (
        CheckConstraint("kind IN ('model', 'dataset')", name="kind"),
        CheckConstraint("last_version >= 0", name="last_version_not_negative"),
    )


class Dataset(Base):
    """A CSV copied into the database by `modelyard data load`: one row per distinct content."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), nullable=False)
    row_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # [{"name": ..., "dtype": ...}] in the file's column order.
    columns: Mapped[list[dict[str, str]]] = mapped_column(JsonType, nullable=False)
    table_name: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utc_now)

    __table_args__ = (
        UniqueConstraint("name", "version"),
        UniqueConstraint("name", "fingerprint"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("row_count >= 0", name="row_count_not_negative"),
    )


class ModelVersion(Base):
    """A published model bundle: where it is, what it scored, which data it learned from, its stage."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_uri: Mapped[str] = mapped_column(Text, nullable=False)
    # sha256 of the bundle's metadata.json, which itself lists the sha256 of every other file.
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), nullable=False)
    metrics: Mapped[dict[str, float | None]] = mapped_column(JsonType, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    algorithm: Mapped[str] = mapped_column(String(64), nullable=False)
    # Null when the training data came from a file or query rather than `modelyard data load`.
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True, index=True)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utc_now)
    stage: Mapped[str] = mapped_column(String(16), nullable=False, default=Stage.NONE.value)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The run that published it (MODELYARD_PIPELINE__RUN_ID: the operator's Job name), when one said so.
    run_id: Mapped[str | None] = mapped_column(String(RUN_ID_LENGTH), nullable=True)

    # Loaded with the version in the same query: records show the dataset as name@version.
    dataset: Mapped[Dataset | None] = relationship(lazy="joined")

    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint(
            "stage IN ('none', 'staging', 'production', 'archived')",
            name="stage",
        ),
        # The database itself guarantees one production version per name, whatever the code does.
        Index(
            "uq_model_versions_one_production",
            "name",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )


class Promotion(Base):
    """Each time a version became production. Rollback walks this history backwards.

    A row whose ``reverted_at`` is set was undone (rolled back, or its version demoted by hand) and no
    longer counts; the remaining rows of a name, newest last, are the chain `rollback` walks.
    """

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False, index=True)
    promoted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utc_now)
    reverted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# Long enough for a UUID, a W3C trace id or a client's own id; the prediction log refuses longer ones.
REQUEST_ID_LENGTH = 256
MODEL_VERSION_LENGTH = 64

# A surrogate key that is 64-bit on Postgres (the log grows without bound) and SQLite's rowid there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Prediction(Base):
    """One request answered by the model server, its rows column by column (a request of N rows is one row
    here, with N values in each column).

    Written asynchronously and in batches by ``modelyard.serving.prediction_log``. The unique key
    (request_id, model, version, created_at) makes writes idempotent: a batch whose commit outcome was
    unknown (the connection dropped) is spooled and replayed, and the replay's duplicates are ignored.
    A client that sends one request id twice gets two predictions logged, told apart by ``created_at``;
    feedback on such an id is refused as ambiguous. A shadow candidate scoring the same request beside
    the served one is logged under its own version, the same request id and the same ``created_at``, not
    ``answered``.
    """

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), nullable=False)
    model: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    version: Mapped[str] = mapped_column(String(MODEL_VERSION_LENGTH), nullable=False)
    # The request's number of rows: every list below holds this many values, row 0 first.
    rows: Mapped[int] = mapped_column(Integer, nullable=False)
    # {feature name: [value per row]} as the request sent them (null where a value was missing).
    features: Mapped[dict[str, list[Any]]] = mapped_column(JsonType, nullable=False)
    # [predicted class per row], as text whatever the class type (digits' 3 is "3").
    labels: Mapped[list[str]] = mapped_column(JsonType, nullable=False)
    # {class: [probability per row]}; empty when the model gave labels only.
    probabilities: Mapped[dict[str, list[float]]] = mapped_column(JsonType, nullable=False)
    # The numeric columns of ``features`` and ``probabilities`` as binary float64 (``registry.packed``);
    # NULL when none was packed. Read both through ``registry.packed.logged_columns``.
    packed_features: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    packed_probabilities: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # False for a shadow candidate's copy of a request the stable version answered: readers of every
    # version count answered rows only, so a shadowed request is not counted twice.
    answered: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())

    __table_args__ = (
        UniqueConstraint("request_id", "model", "version", "created_at"),
        # Drift and live-accuracy queries read one model's recent window.
        Index("ix_predictions_model_created_at", "model", "created_at"),
        CheckConstraint('"rows" >= 1', name="rows_positive"),
    )


class Feedback(Base):
    """The true label of one logged prediction, given later by a client (POST .../feedback).

    Linked to its prediction by (request_id, row, model): row ``row`` of the logged request. It grades
    that row as every version that scored the request predicted it. ``record_feedback`` checks that the
    prediction is logged; there is no foreign key, so the prediction log can be pruned by age
    (retention) without touching ground truth. At most one label per prediction: a newer label
    replaces the older one (upsert), and ``created_at`` is when the current label was given.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), nullable=False)
    row: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    label: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utc_now)

    __table_args__ = (
        UniqueConstraint("request_id", "row", "model"),
        CheckConstraint('"row" >= 0', name="row_not_negative"),
    )


class RetrainTrigger(Base):
    """One firing alert the retrain webhook received, and what it did about it.

    The unique key (group_key, fingerprint, starts_at) is Alertmanager's identity of one alert in one
    notification group: a notification repeated or retried inserts nothing, so it starts nothing twice.
    ``outcome`` is starting, started, failed, cooldown (a run started recently) or in_flight.
    """

    __tablename__ = "retrain_triggers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_key: Mapped[str] = mapped_column(Text, nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    model: Mapped[str] = mapped_column(String(NAME_LENGTH), nullable=False)
    alertname: Mapped[str] = mapped_column(String(255), nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utc_now)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        UniqueConstraint("group_key", "fingerprint", "starts_at"),
        # the cooldown asks for a model's latest run
        Index("ix_retrain_triggers_model_received_at", "model", "received_at"),
    )
