"""The predictions and feedback tables (migration 0002): upgrade from 0001, keys, round trip, downgrade."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from modelyard.registry import create_engine_for, upgrade
from modelyard.registry.db import WRITE_OPTION, _alembic_config, current_revision
from modelyard.registry.records import as_utc
from modelyard.registry.tables import Feedback, Prediction
from modelyard.settings import Settings


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            getattr(command, direction)(_alembic_config(connection), revision)


def _prediction(request_id: str = "req-1", row: int = 0, model: str = "iris") -> dict[str, object]:
    return {
        "request_id": request_id,
        "row": row,
        "model": model,
        "version": "3",
        "features": {"sepal_length": 5.1, "color": "red", "missing": None},
        "label": "setosa",
        "probabilities": {"setosa": 0.9, "versicolor": 0.07, "virginica": 0.03},
        "latency_ms": 1.25,
        "created_at": datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    }


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

        assert upgrade(settings.database_url) == "0004"
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


def test_a_prediction_round_trips_and_its_key_is_unique_per_model(settings: Settings) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction(row=0), _prediction(row=1)])
            # The same request id may name a prediction of another model.
            connection.execute(insert(Prediction), [_prediction(model="wine")])
        with engine.connect() as connection:
            stored = connection.execute(
                select(Prediction.__table__).where(Prediction.model == "iris", Prediction.row == 0)
            ).one()
        assert stored.features == {"sepal_length": 5.1, "color": "red", "missing": None}
        assert stored.probabilities == {"setosa": 0.9, "versicolor": 0.07, "virginica": 0.03}
        assert (stored.request_id, stored.label, stored.latency_ms) == ("req-1", "setosa", 1.25)
        assert stored.created_at.replace(tzinfo=UTC) == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

        with pytest.raises(IntegrityError, match=r"(?i)unique"), engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction(row=1)])
        with pytest.raises(IntegrityError, match=r"(?i)check"), engine.begin() as connection:
            connection.execute(insert(Prediction), [_prediction(row=-1)])
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
            connection.execute(insert(Prediction), [_prediction("a"), _prediction("b")])
        _migrate(engine, "upgrade", "0004")
        with engine.begin() as connection:
            connection.execute(insert(Prediction).values(**{**_prediction("a"), "created_at": later}))
        with pytest.raises(IntegrityError), engine.begin() as connection:  # a replay: same key, same time
            connection.execute(insert(Prediction).values(**_prediction("a")))
        with engine.connect() as connection:
            logged = connection.execute(select(Prediction.request_id, Prediction.created_at)).all()
        assert sorted(r.request_id for r in logged) == ["a", "a", "b"]

        _migrate(engine, "downgrade", "0003")
        with engine.connect() as connection:
            kept = connection.execute(select(Prediction.request_id, Prediction.created_at)).all()
        assert sorted((r.request_id, as_utc(r.created_at)) for r in kept) == [
            ("a", datetime(2026, 11, 23, 12, 0, tzinfo=UTC)),
            ("b", datetime(2026, 11, 23, 12, 0, tzinfo=UTC)),
        ]  # the first prediction of the duplicated key stays
        _migrate(engine, "upgrade", "0004")
        assert current_revision(engine) == "0004"
    finally:
        engine.dispose()
