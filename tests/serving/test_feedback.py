"""record_feedback on both backends: ground truth for logged predictions, and every refusal named."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, inspect, select, text

from modelyard.errors import Conflict, InvalidInput, NotFound, NotReady
from modelyard.registry import create_engine_for, upgrade
from modelyard.registry.tables import Feedback, Prediction
from modelyard.serving.feedback import record_feedback
from modelyard.serving.prediction_log import PredictionLog, PredictionRecord
from modelyard.settings import Settings

CLASSES = ["setosa", "versicolor", "virginica"]


def _prediction(
    request_id: str, labels: Sequence[str] = ("setosa",), model: str = "iris", version: str = "4"
) -> dict[str, Any]:
    """A logged request: one row per label."""
    rows = len(labels)
    return {
        "request_id": request_id,
        "model": model,
        "version": version,
        "rows": rows,
        "features": {"sepal_length": [5.1] * rows},
        "labels": list(labels),
        "probabilities": {"setosa": [0.8] * rows, "versicolor": [0.15] * rows, "virginica": [0.05] * rows},
        "latency_ms": 1.0,
        "created_at": datetime(2026, 11, 23, tzinfo=UTC),
    }


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The registry database with two logged requests: req-a (2 rows) and req-b."""
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(Prediction),
            [_prediction("req-a", ["setosa", "virginica"]), _prediction("req-b")],
        )
    yield engine
    engine.dispose()


def stored_feedback(engine: Engine) -> list[tuple[str, int, str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(Feedback.request_id, Feedback.row, Feedback.model, Feedback.label).order_by(Feedback.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_feedback_is_stored_with_the_prediction_it_grades(engine: Engine) -> None:
    stored = record_feedback(
        engine, model="iris", request_id="req-a", label="versicolor", row=1, classes=CLASSES
    )
    assert (stored.model, stored.version, stored.request_id, stored.row) == ("iris", "4", "req-a", 1)
    assert (stored.label, stored.predicted_label, stored.correct, stored.replaced) == (
        "versicolor",
        "virginica",
        False,
        None,
    )
    assert stored.created_at.tzinfo is not None
    right = record_feedback(engine, model="iris", request_id="req-b", label="setosa")
    assert right.correct and right.row == 0
    assert stored_feedback(engine) == [("req-a", 1, "iris", "versicolor"), ("req-b", 0, "iris", "setosa")]


def test_feedback_again_replaces_the_label_and_says_which_it_replaced(engine: Engine) -> None:
    first = record_feedback(engine, model="iris", request_id="req-a", label="versicolor")
    second = record_feedback(engine, model="iris", request_id="req-a", label="setosa")
    assert first.replaced is None
    assert second.replaced == "versicolor" and second.correct
    assert second.created_at >= first.created_at
    assert stored_feedback(engine) == [("req-a", 0, "iris", "setosa")]


def test_feedback_accepts_the_database_url_too(settings: Settings, engine: Engine) -> None:
    stored = record_feedback(settings.database_url, model="iris", request_id="req-b", label="virginica")
    assert stored.predicted_label == "setosa" and not stored.correct


def test_integer_classes_match_labels_given_as_text_or_number(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(insert(Prediction), [_prediction("digit-1", ["3"], model="digits")])
    stored = record_feedback(engine, model="digits", request_id="digit-1", label=3, classes=list(range(10)))
    assert (stored.label, stored.correct) == ("3", True)
    with pytest.raises(
        InvalidInput, match=r"label '12' is not one of the classes of model 'digits': 0, 1, 2"
    ):
        record_feedback(engine, model="digits", request_id="digit-1", label="12", classes=list(range(10)))


def test_feedback_on_a_request_id_logged_twice_is_refused_as_ambiguous(engine: Engine) -> None:
    again = {**_prediction("req-b", ["virginica"]), "created_at": datetime(2026, 11, 24, tzinfo=UTC)}
    with engine.begin() as connection:
        connection.execute(insert(Prediction), [again])
    with pytest.raises(Conflict, match=r"request id 'req-b' of model 'iris' names more than one logged"):
        record_feedback(engine, model="iris", request_id="req-b", label="setosa")
    with pytest.raises(NotFound, match=r"request id 'req-b' of model 'iris' has 1 logged row\(s\)"):
        record_feedback(engine, model="iris", request_id="req-b", label="setosa", row=1)
    assert stored_feedback(engine) == []
    assert Conflict("x").status_code == 409


def test_a_shadowed_request_is_graded_against_the_answered_row_and_its_shadow_copy_is_no_ambiguity(
    settings: Settings,
) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    # The shadow candidate's copy is logged first (lower id) and is not what the client got.
    shadow = {**_prediction("req-s", ["virginica", "setosa"], version="5"), "answered": False}
    with engine.begin() as connection:
        connection.execute(insert(Prediction), [shadow])
        connection.execute(insert(Prediction), [_prediction("req-s", ["setosa", "virginica"])])
    try:
        stored = record_feedback(engine, model="iris", request_id="req-s", label="setosa", row=0)
        assert (stored.version, stored.predicted_label, stored.correct) == ("4", "setosa", True)
        assert stored_feedback(engine) == [("req-s", 0, "iris", "setosa")]
        # Feedback on a request only a shadow logged (its answer is not logged yet) is not found,
        # not graded against the candidate's row.
        with engine.begin() as connection:
            connection.execute(insert(Prediction), [{**shadow, "request_id": "req-t"}])
        with pytest.raises(NotFound, match=r"no logged prediction of model 'iris' has request id 'req-t'"):
            record_feedback(engine, model="iris", request_id="req-t", label="setosa")
    finally:
        engine.dispose()


def test_two_answered_requests_under_one_id_are_ambiguous_whatever_their_versions(engine: Engine) -> None:
    # A canary answered req-a again under another version: two answers, so the label grades neither.
    again = {
        **_prediction("req-a", ["setosa", "setosa"], version="5"),
        "created_at": datetime(2026, 11, 24, tzinfo=UTC),
    }
    with engine.begin() as connection:
        connection.execute(insert(Prediction), [again])
    with pytest.raises(Conflict, match=r"request id 'req-a' of model 'iris' names more than one logged"):
        record_feedback(engine, model="iris", request_id="req-a", label="setosa", row=1)


def test_an_id_reused_for_many_requests_is_refused_without_reading_them_all(engine: Engine) -> None:
    reused = [
        {**_prediction("req-r"), "created_at": datetime(2026, 11, 23, minute=n, tzinfo=UTC)}
        for n in range(40)
    ]
    with engine.begin() as connection:
        connection.execute(insert(Prediction), reused)
    with pytest.raises(Conflict, match=r"request id 'req-r' of model 'iris' names more than one logged"):
        record_feedback(engine, model="iris", request_id="req-r", label="setosa")
    assert stored_feedback(engine) == []


def test_an_unlogged_request_id_is_not_found_and_named(engine: Engine) -> None:
    with pytest.raises(
        NotFound, match=r"no logged prediction of model 'iris' has request id 'req-zzz'.*retry"
    ):
        record_feedback(engine, model="iris", request_id="req-zzz", label="setosa")
    # A request id is only known for the model that answered it.
    with pytest.raises(NotFound, match=r"no logged prediction of model 'wine' has request id 'req-a'"):
        record_feedback(engine, model="wine", request_id="req-a", label="setosa")
    with pytest.raises(
        NotFound, match=r"request id 'req-a' of model 'iris' has 2 logged row\(s\) \(0 to 1\), not row 5"
    ):
        record_feedback(engine, model="iris", request_id="req-a", label="setosa", row=5)
    assert stored_feedback(engine) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"label": "daisy", "classes": CLASSES},
            r"label 'daisy' is not one of the classes of model 'iris': 'setosa'",
        ),
        ({"request_id": ""}, r"request_id must be a string of 1 to 256 characters, got ''"),
        ({"request_id": "r" * 257}, r"request_id must be a string of 1 to 256 characters"),
        ({"row": -1}, r"row must be an integer from 0 to 2147483647 \(the row within the request\), got -1"),
        ({"row": True}, r"row must be an integer from 0 to 2147483647"),
        ({"row": 2**63}, r"row must be an integer from 0 to 2147483647 .*got 9223372036854775808"),
        ({"label": True}, r"label must be a class name or number, got True"),
        ({"label": ""}, r"label must be a class name or number, got ''"),
        ({"label": 1.5}, r"label must be a class name or number, got 1.5"),
        ({"model": ""}, r"model must be a name of 1 to 63 characters, got ''"),
    ],
)
def test_bad_arguments_are_refused_by_name(engine: Engine, arguments: dict[str, Any], message: str) -> None:
    call: dict[str, Any] = {"model": "iris", "request_id": "req-a", "label": "setosa", **arguments}
    with pytest.raises(InvalidInput, match=message):
        record_feedback(engine, **call)
    assert stored_feedback(engine) == []


def test_an_unmigrated_database_is_not_ready_and_names_the_command(settings: Settings) -> None:
    url = settings.database_url
    with pytest.raises(NotReady) as caught:
        record_feedback(url, model="iris", request_id="req-a", label="setosa")
    assert caught.value.status_code == 503
    assert caught.value.message == (
        "cannot record feedback: the registry database has no predictions and no feedback table: it is not "
        "migrated; run `modelyard db upgrade`"
    )
    engine = create_engine_for(url)
    try:
        assert inspect(engine).get_table_names() == [], "feedback migrated the database"
    finally:
        engine.dispose()


def test_a_database_missing_only_the_feedback_table_names_it(settings: Settings) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE feedback"))
            connection.execute(insert(Prediction), [_prediction("req-a")])
        with pytest.raises(
            NotReady, match=r"has no feedback table: it is not migrated; run `modelyard db upgrade`"
        ):
            record_feedback(engine, model="iris", request_id="req-a", label="setosa")
    finally:
        engine.dispose()


def test_an_unreachable_database_is_not_ready_and_the_answer_holds_no_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://me:hunter2@/registry?host={tmp_path / 'nothing-here'}"
    with pytest.raises(NotReady) as caught:
        record_feedback(url, model="iris", request_id="req-a", label="setosa")
    assert caught.value.message == "cannot record feedback: the registry database is unavailable; retry"
    # the log, not the answer, says where: with the password hidden
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "me:***@" in logged and "hunter2" not in logged


def test_feedback_right_after_a_prediction_succeeds_once_the_log_is_flushed(
    settings: Settings, tmp_path: Path
) -> None:
    """The documented protocol for the server: NotFound while the record is queued; flush, then retry."""
    log = PredictionLog(
        settings.database_url,
        spool_dir=tmp_path / "spool",
        queue_size=1000,
        batch_size=100,
        flush_interval_s=30.0,  # nothing is written unless asked
        spool_max_bytes=1 << 20,
    )
    upgrade(settings.database_url)
    fields = _prediction("fresh", ["versicolor"])

    async def main() -> tuple[str, bool]:
        await log.start()
        log.submit([PredictionRecord(**fields)])
        try:
            record_feedback(log.engine, model="iris", request_id="fresh", label="versicolor")
            first = "stored"
        except NotFound as exc:
            first = exc.message
        flushed = await log.flush()
        stored = record_feedback(log.engine, model="iris", request_id="fresh", label="versicolor")
        await log.stop()
        return first, flushed and stored.correct

    first, then_stored = asyncio.run(main())
    assert "has request id 'fresh'" in first
    assert then_stored
