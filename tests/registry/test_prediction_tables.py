"""The predictions and feedback tables: migrations 0002, 0004, 0005 (one row per request), 0007 (answered)
and 0008 (packed columns) with data on both backends, keys, round trip, downgrade."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine, func, insert, inspect, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from modelyard.registry import create_engine_for, upgrade
from modelyard.registry.db import SCHEMA_HEAD, WRITE_OPTION, _alembic_config, current_revision
from modelyard.registry.packed import logged_columns, pack_columns
from modelyard.registry.records import as_utc
from modelyard.registry.tables import Feedback, Prediction
from modelyard.settings import Settings


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            getattr(command, direction)(_alembic_config(connection), revision)


MOMENT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
# The predictions table as migrations 0002 to 0004 made it: one row per predicted row.
PER_ROW = sa.table(
    "predictions",
    *(sa.column(name) for name in ("id", "request_id", "row", "model", "version", "label", "latency_ms")),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("features", _JSON),
    sa.column("probabilities", _JSON),
)


# The predictions table as migrations 0005 and 0006 made it: one row per request, no ``answered`` (0007)
# and no packed columns (0008).
LATER_COLUMNS = {"answered", "packed_features", "packed_probabilities"}
AT_0005 = sa.table(
    "predictions", *(sa.column(c.name, c.type) for c in Prediction.__table__.c if c.name not in LATER_COLUMNS)
)


def _prediction(request_id: str = "req-1", model: str = "iris", version: str = "3") -> dict[str, object]:
    """A logged request of two rows."""
    return {
        "request_id": request_id,
        "model": model,
        "version": version,
        "rows": 2,
        "features": {"sepal_length": [5.1, 4.9], "color": ["red", None]},
        "labels": ["setosa", "virginica"],
        "probabilities": {"setosa": [0.9, 0.1], "versicolor": [0.07, 0.1], "virginica": [0.03, 0.8]},
        "latency_ms": 1.25,
        "created_at": MOMENT,
    }


def _row(request_id: str = "req-1", row: int = 0, **overrides: object) -> dict[str, object]:
    """A logged row, as 0002 to 0004 stored it."""
    fields: dict[str, object] = {
        "request_id": request_id,
        "row": row,
        "model": "iris",
        "version": "3",
        "features": {"sepal_length": 5.1 + row, "color": "red", "missing": None},
        "label": "setosa",
        "probabilities": {"setosa": 0.9, "versicolor": 0.07, "virginica": 0.03},
        "latency_ms": 1.25,
        "created_at": MOMENT,
    }
    fields.update(overrides)
    return fields


def test_0002_upgrades_a_0001_database_and_keeps_its_rows_and_downgrades_cleanly(settings: Settings) -> None:
    engine = create_engine_for(settings.database_url)
    try:
        _migrate(engine, "upgrade", "0001")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO model_versions (name, version, storage_uri, sha256, metrics, params, "
                    "algorithm, created_at, stage) VALUES ('iris', 1, 'file:///x', :sha, '{}', '{}', 'svm', "
                    "CURRENT_TIMESTAMP, 'production')"
                ),
                {"sha": "0" * 64},
            )
        assert "predictions" not in inspect(engine).get_table_names()

        assert upgrade(settings.database_url) == SCHEMA_HEAD
        tables = set(inspect(engine).get_table_names())
        assert {"predictions", "feedback"} <= tables
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("predictions")}
        assert indexes["ix_predictions_model_created_at"] == ["model", "created_at"]
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM model_versions")).scalars().all() == ["iris"]

        _migrate(engine, "downgrade", "0001")
        assert current_revision(engine) == "0001"
        assert not {"predictions", "feedback"} & set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM model_versions")).scalars().all() == ["iris"]
    finally:
        engine.dispose()


def test_a_prediction_round_trips_and_its_key_is_unique_per_model_and_version(settings: Settings) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction()])
            # The same request id may name a prediction of another model, or of another version
            # (a candidate scoring the same request).
            connection.execute(insert(Prediction), [_prediction(model="wine"), _prediction(version="4")])
        with engine.connect() as connection:
            stored = connection.execute(
                select(Prediction.__table__).where(Prediction.model == "iris", Prediction.version == "3")
            ).one()
        assert stored.features == {"sepal_length": [5.1, 4.9], "color": ["red", None]}
        assert stored.labels == ["setosa", "virginica"]
        assert stored.probabilities == {
            "setosa": [0.9, 0.1],
            "versicolor": [0.07, 0.1],
            "virginica": [0.03, 0.8],
        }
        assert (stored.request_id, stored.rows, stored.latency_ms) == ("req-1", 2, 1.25)
        assert stored.created_at.replace(tzinfo=UTC) == MOMENT

        with pytest.raises(IntegrityError, match=r"(?i)unique"), engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction()])
        with pytest.raises(IntegrityError, match=r"(?i)check"), engine.begin() as connection:
            connection.execute(insert(Prediction), [{**_prediction("empty"), "rows": 0}])
    finally:
        engine.dispose()


def test_feedback_is_unique_per_prediction_key(settings: Settings) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    feedback = {"request_id": "req-1", "row": 0, "model": "iris", "label": "setosa"}
    try:
        with engine.begin() as connection:
            connection.execute(insert(Feedback), [feedback, {**feedback, "row": 1}])
        with pytest.raises(IntegrityError, match=r"(?i)unique"), engine.begin() as connection:
            connection.execute(insert(Feedback), [{**feedback, "label": "virginica"}])
        with engine.connect() as connection:
            created = connection.execute(select(Feedback.created_at)).scalars().all()
        assert len(created) == 2 and all(isinstance(moment, datetime) for moment in created)
    finally:
        engine.dispose()


def test_0004_keeps_the_log_and_lets_a_reused_id_be_logged_twice_then_downgrades_to_the_first(
    settings: Settings,
) -> None:
    engine = create_engine_for(settings.database_url)
    later = datetime(2026, 11, 23, 12, 5, tzinfo=UTC)
    try:
        _migrate(engine, "upgrade", "0003")
        with engine.begin() as connection:
            connection.execute(insert(PER_ROW), [_row("a"), _row("b")])
        _migrate(engine, "upgrade", "0004")
        with engine.begin() as connection:
            connection.execute(insert(PER_ROW).values(**{**_row("a"), "created_at": later}))
        with pytest.raises(IntegrityError), engine.begin() as connection:  # a replay: same key, same time
            connection.execute(insert(PER_ROW).values(**_row("a")))
        with engine.connect() as connection:
            logged = connection.execute(select(PER_ROW.c.request_id, PER_ROW.c.created_at)).all()
        assert sorted(r.request_id for r in logged) == ["a", "a", "b"]

        _migrate(engine, "downgrade", "0003")
        with engine.connect() as connection:
            kept = connection.execute(select(PER_ROW.c.request_id, PER_ROW.c.created_at)).all()
        assert sorted((r.request_id, as_utc(r.created_at)) for r in kept) == [
            ("a", datetime(2026, 11, 23, 12, 0, tzinfo=UTC)),
            ("b", datetime(2026, 11, 23, 12, 0, tzinfo=UTC)),
        ]  # the first prediction of the duplicated key stays
        _migrate(engine, "upgrade", "0004")
        assert current_revision(engine) == "0004"
    finally:
        engine.dispose()


def test_0005_turns_logged_rows_into_one_row_per_request_losing_nothing_and_downgrades_back(
    settings: Settings,
) -> None:
    engine = create_engine_for(settings.database_url)
    reused = MOMENT + timedelta(minutes=5)
    old_rows = [
        # req-1: three rows, written out of order; row 1 lacks a feature and has no probabilities
        _row(
            "req-1", 2, label="virginica", probabilities={"setosa": 0.1, "versicolor": 0.1, "virginica": 0.8}
        ),
        _row("req-1", 0),
        _row("req-1", 1, features={"sepal_length": 6.0, "color": "blue"}, probabilities={}),
        # req-1 again, reused by the client later: a request of its own
        _row("req-1", 0, label="versicolor", created_at=reused, latency_ms=3.0),
        # the same id under another model, and a request whose row 1 the database once refused
        _row("req-1", 0, model="wine", version="7"),
        _row("gap", 0),
        _row("gap", 2, label="versicolor"),
    ]
    try:
        _migrate(engine, "upgrade", "0004")
        with engine.begin() as connection:
            connection.execute(insert(PER_ROW), old_rows)
            feedback = {"request_id": "req-1", "row": 2, "model": "iris", "label": "virginica"}
            connection.execute(insert(Feedback), [feedback])
        _migrate(engine, "upgrade", "0005")
        assert current_revision(engine) == "0005"
        with engine.connect() as connection:
            logged = {
                (row.request_id, row.model, as_utc(row.created_at)): row
                for row in connection.execute(select(*AT_0005.c)).all()
            }
            assert connection.execute(select(Feedback.request_id, Feedback.row)).all() == [("req-1", 2)]
        assert len(logged) == 4
        first = logged["req-1", "iris", MOMENT]
        assert (first.version, first.rows, first.latency_ms) == ("3", 3, 1.25)
        assert first.labels == ["setosa", "setosa", "virginica"]
        assert first.features == {
            "sepal_length": [5.1, 6.0, 7.1],
            "color": ["red", "blue", "red"],
            "missing": [None, None, None],
        }
        assert first.probabilities == {
            "setosa": [0.9, None, 0.1],
            "versicolor": [0.07, None, 0.1],
            "virginica": [0.03, None, 0.8],
        }
        again = logged["req-1", "iris", reused]
        assert (again.rows, again.labels, again.latency_ms) == (1, ["versicolor"], 3.0)
        assert logged["req-1", "wine", MOMENT].version == "7"
        gap = logged["gap", "iris", MOMENT]
        assert (gap.rows, gap.labels, gap.features["sepal_length"]) == (
            3,
            ["setosa", None, "versicolor"],
            [5.1, None, 7.1],
        )
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("predictions")}
        assert indexes["ix_predictions_model_created_at"] == ["model", "created_at"]
        assert not {"predictions_0005_old"} & set(inspect(engine).get_table_names())

        # New predictions go in, and then the way back gives every old row again.
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction("new")])
        _migrate(engine, "downgrade", "0004")
        assert current_revision(engine) == "0004"
        with engine.connect() as connection:
            restored = connection.execute(select(PER_ROW)).all()
        by_key = {(r.request_id, r.row, r.model, as_utc(r.created_at)): r for r in restored}
        assert len(by_key) == len(old_rows) + 2
        for old in old_rows:
            back = by_key[old["request_id"], old["row"], old["model"], old["created_at"]]
            expected_features = {"missing": None, **old["features"]}  # type: ignore[dict-item]
            assert back.features == expected_features
            assert (back.label, back.version, back.probabilities, back.latency_ms) == (
                old["label"],
                old["version"],
                old["probabilities"],
                old["latency_ms"],
            )
        assert by_key["new", 1, "iris", MOMENT].label == "virginica"
        # and up again
        _migrate(engine, "upgrade", "0005")
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(Prediction)).scalar_one() == 5
    finally:
        engine.dispose()


def test_0007_marks_every_logged_request_answered_takes_shadow_rows_and_downgrades_back(
    settings: Settings,
) -> None:
    engine = create_engine_for(settings.database_url)
    try:
        _migrate(engine, "upgrade", "0006")
        with engine.begin() as connection:
            connection.execute(insert(AT_0005), [_prediction("old")])
        _migrate(engine, "upgrade", "0007")
        assert current_revision(engine) == "0007"
        shadow = {**_prediction("old", version="4"), "answered": False}
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction("new")])
            connection.execute(insert(Prediction), [shadow])
        with engine.connect() as connection:
            answered = connection.execute(
                select(Prediction.request_id, Prediction.version, Prediction.answered).order_by(Prediction.id)
            ).all()
        assert answered == [("old", "3", True), ("new", "3", True), ("old", "4", False)]
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(insert(Prediction).values(**_prediction("null"), answered=None))

        _migrate(engine, "downgrade", "0006")
        assert current_revision(engine) == "0006"
        assert "answered" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
        with engine.connect() as connection:
            kept = connection.execute(select(AT_0005.c.request_id, AT_0005.c.version)).all()
        assert sorted(kept) == [("new", "3"), ("old", "3"), ("old", "4")]
        _migrate(engine, "upgrade", "0007")
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).where(Prediction.answered)).scalar_one() == 3
    finally:
        engine.dispose()


def test_0008_adds_packed_columns_keeping_older_rows_and_downgrades_them_back_into_json(
    settings: Settings,
) -> None:
    engine = create_engine_for(settings.database_url)
    # A request logged before packing: its JSON columns alone hold it.
    before = _prediction("before")
    packed = {
        **_prediction("packed"),
        "features": {"color": ["red", None]},
        "probabilities": {},
        "packed_features": pack_columns({"sepal_length": np.array([5.1, np.nan])}, 2),
        "packed_probabilities": pack_columns(
            {"setosa": np.array([0.9, 0.1]), "virginica": np.array([0.1, 0.9])}, 2
        ),
    }
    try:
        _migrate(engine, "upgrade", "0007")
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [before])
        _migrate(engine, "upgrade", "0008")
        assert current_revision(engine) == "0008"
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [packed])
        with engine.connect() as connection:
            rows = connection.execute(select(Prediction.__table__).order_by(Prediction.id)).all()
        old, new = rows
        assert (old.packed_features, old.packed_probabilities) == (None, None)
        assert logged_columns(old.features, old.packed_features) == before["features"]
        assert logged_columns(new.features, new.packed_features) == {
            "color": ["red", None],
            "sepal_length": [5.1, None],
        }

        _migrate(engine, "downgrade", "0007")
        assert current_revision(engine) == "0007"
        columns = {column["name"] for column in inspect(engine).get_columns("predictions")}
        assert not {"packed_features", "packed_probabilities"} & columns
        with engine.connect() as connection:
            back = connection.execute(
                text("SELECT request_id, features, probabilities FROM predictions ORDER BY id")
            ).all()
        decoded = [
            (request_id, *(value if isinstance(value, dict) else json.loads(value) for value in pair))
            for request_id, *pair in back
        ]
        assert decoded == [
            ("before", before["features"], before["probabilities"]),
            (
                "packed",
                {"color": ["red", None], "sepal_length": [5.1, None]},
                {"setosa": [0.9, 0.1], "virginica": [0.1, 0.9]},
            ),
        ]
        _migrate(engine, "upgrade", "head")
        assert current_revision(engine) == SCHEMA_HEAD
    finally:
        engine.dispose()
