"""Prediction records as table rows and spool lines: one row per request, values made JSON-safe, every
bad field named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from modelyard.serving.prediction_log.records import (
    InvalidRecord,
    json_text,
    row_from_spool_line,
    spool_line,
    table_row,
)
from modelyard.serving.sink import PredictionRecord

MOMENT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def fields(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "request_id": "req-1",
        "model": "iris",
        "version": "3",
        "rows": 2,
        "features": {"sepal_length": [5.1, 4.9], "color": ["red", None]},
        "labels": ["setosa", "virginica"],
        "probabilities": {"setosa": [0.9, 0.2], "virginica": [0.1, 0.8]},
        "latency_ms": 0.8,
        "created_at": MOMENT,
    }
    document.update(overrides)
    return document


def stored_json(row: dict[str, Any]) -> dict[str, Any]:
    """The row's JSON columns as the database stores them (serialised by the log's engine)."""
    return {name: json.loads(json_text(row[name])) for name in ("features", "labels", "probabilities")}


def test_a_record_keeps_the_data_planes_arrays_and_they_are_stored_with_non_finite_as_null() -> None:
    matrix = np.array([[1.0, np.nan], [np.inf, 2.5], [3.0, -np.inf]])  # columns are strided views
    probabilities = np.array([[0.25, 0.75], [np.nan, 1.0], [0.5, 0.5]])
    record = PredictionRecord(
        **fields(
            rows=np.int64(3),
            features={
                "a": matrix[:, 0],
                "b": matrix[:, 1],
                "n": np.arange(3),
                "f32": np.array([1.5, np.nan, 2.0], dtype=np.float32),
                "plan": np.array(["basic", None, "pro"], dtype=object),
            },
            labels=np.array(["x", "y", "x"], dtype=object),
            probabilities={0: probabilities[:, 0], "1": probabilities[:, 1]},
            latency_ms=np.float64(2.5),
            created_at=datetime(2026, 11, 23, 13, 30),  # naive: taken as UTC
        )
    )
    row = table_row(record)
    assert row["features"]["a"].base is matrix and row["features"]["b"].base is matrix  # no copy
    assert (row["rows"], row["labels"], row["latency_ms"]) == (3, ["x", "y", "x"], 2.5)
    assert row["created_at"] == datetime(2026, 11, 23, 13, 30, tzinfo=UTC)
    assert stored_json(row) == {
        "features": {
            "a": [1.0, None, 3.0],
            "b": [None, 2.5, None],
            "n": [0, 1, 2],
            "f32": [1.5, None, 2.0],
            "plan": ["basic", None, "pro"],
        },
        "labels": ["x", "y", "x"],
        "probabilities": {"0": [0.25, None, 0.5], "1": [0.75, 1.0, 0.5]},
    }


def test_labels_are_stored_as_text_whatever_the_class_type() -> None:
    row = table_row(PredictionRecord(**fields(labels=np.array([3, 7]))))
    assert row["labels"] == ["3", "7"]
    assert table_row(PredictionRecord(**fields(labels=(np.int64(1), "b"))))["labels"] == ["1", "b"]


def test_a_256_row_request_is_one_row_checked_without_touching_its_values() -> None:
    numeric = np.random.default_rng(0).normal(size=(256, 4))
    numeric[7, 2] = np.nan
    record = PredictionRecord(
        **fields(
            rows=256,
            features={f"x{index}": numeric[:, index] for index in range(4)},
            labels=np.array(["a", "b"] * 128, dtype=object),
            probabilities={"a": np.full(256, 0.6), "b": np.full(256, 0.4)},
        )
    )
    row = table_row(record)
    assert row["rows"] == 256 and len(row["labels"]) == 256
    assert all(row["features"][f"x{index}"].base is numeric for index in range(4))
    stored = stored_json(row)
    assert stored["features"]["x2"][7] is None
    assert stored["features"]["x0"] == numeric[:, 0].tolist()


def test_a_spool_line_reads_back_as_the_same_row() -> None:
    row = table_row(PredictionRecord(**fields()))
    line = spool_line(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["created_at"] == "2026-11-23T12:00:00+00:00"
    assert row_from_spool_line(line.rstrip(b"\n")) == row


def test_a_shadow_record_is_not_answered_and_a_spool_line_from_before_0007_was() -> None:
    assert table_row(PredictionRecord(**fields()))["answered"] is True
    shadow = table_row(PredictionRecord(**fields(answered=False)))
    assert shadow["answered"] is False and row_from_spool_line(spool_line(shadow))["answered"] is False
    older = spool_line(table_row(PredictionRecord(**fields()))).replace(b',"answered":true', b"")
    assert b"answered" not in older
    assert row_from_spool_line(older)["answered"] is True


def test_a_spool_line_from_the_per_row_log_is_replayed_as_a_one_row_request() -> None:
    old = (
        b'{"request_id":"old-1","row":2,"model":"iris","version":"3","features":{"sepal_length":5.1,'
        b'"color":null},"label":"setosa","probabilities":{"setosa":0.9,"virginica":0.1},"latency_ms":1.5,'
        b'"created_at":"2026-11-23T12:00:00+00:00"}'
    )
    row = row_from_spool_line(old)
    assert (row["request_id"], row["model"], row["version"], row["rows"]) == ("old-1", "iris", "3", 1)
    assert row["features"] == {"sepal_length": [5.1], "color": [None]}
    assert (row["labels"], row["probabilities"]) == (["setosa"], {"setosa": [0.9], "virginica": [0.1]})
    assert row["latency_ms"] == 1.5 and row["answered"] is True
    assert row["created_at"] == MOMENT + timedelta(microseconds=2)  # apart from the request's row 0
    first = row_from_spool_line(old.replace(b'"row":2', b'"row":0'))
    assert first["created_at"] == MOMENT
    with pytest.raises(InvalidRecord, match=r"^row must be an integer >= 0, got -1$"):
        row_from_spool_line(old.replace(b'"row":2', b'"row":-1'))
    with pytest.raises(InvalidRecord, match=r"^labels\[0\] must be a string, got NoneType$"):
        row_from_spool_line(old.replace(b'"label":"setosa"', b'"label":null'))


def test_a_spooled_record_of_arrays_reads_back_as_lists_with_null_for_nan() -> None:
    matrix = np.array([[1.0, np.nan], [2.0, 3.0]])
    row = table_row(
        PredictionRecord(
            **fields(
                features={"a": matrix[:, 0], "b": matrix[:, 1]},
                labels=np.array(["setosa", "virginica"], dtype=object),
                probabilities={"setosa": np.array([0.9, 0.2]), "virginica": np.array([0.1, 0.8])},
            )
        )
    )
    replayed = row_from_spool_line(spool_line(row))
    assert replayed["features"] == {"a": [1.0, 2.0], "b": [None, 3.0]}
    assert replayed["probabilities"] == {"setosa": [0.9, 0.2], "virginica": [0.1, 0.8]}
    assert spool_line(replayed) == spool_line(row)  # the same line, so a replay is the same record


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_id": "x" * 257}, "request_id is longer than 256 characters"),
        ({"request_id": ""}, "request_id is empty"),
        ({"request_id": None}, "request_id must be a string, got NoneType"),
        ({"request_id": True}, "request_id must be a string, got bool"),
        ({"model": "m" * 64}, "model is longer than 63 characters"),
        ({"version": "v" * 65}, "version is longer than 64 characters"),
        ({"rows": 0}, "rows must be an integer >= 1, got 0"),
        ({"rows": 1.5}, "rows must be an integer >= 1, got 1.5"),
        ({"rows": True}, "rows must be an integer >= 1, got True"),
        ({"labels": "setosa"}, "labels must be a list of 2 classes, got str"),
        ({"labels": ["setosa"]}, "labels has 1 values, but the request has 2 rows"),
        ({"labels": ["setosa", ["a"]]}, "labels[1] must be a string, got list"),
        ({"labels": ["setosa", ""]}, "labels[1] is empty"),
        ({"features": [1, 2]}, "features must be a mapping, got list"),
        ({"features": {"x": 5.1}}, "features['x'] must be a list of 2 values, got float"),
        ({"features": {"x": np.zeros((2, 2))}}, "features['x'] must be a list of 2 values, got ndarray"),
        ({"features": {"x": [1.0, 2.0, 3.0]}}, "features['x'] has 3 values, but the request has 2 rows"),
        ({"probabilities": "setosa"}, "probabilities must be a mapping, got str"),
        (
            {"probabilities": {"setosa": [0.5]}},
            "probabilities['setosa'] has 1 values, but the request has 2 rows",
        ),
        ({"latency_ms": "fast"}, "latency_ms must be a number, got 'fast'"),
        ({"latency_ms": float("nan")}, "latency_ms must be finite, got nan"),
        ({"created_at": "yesterday"}, "created_at is not an ISO timestamp: 'yesterday'"),
        ({"created_at": 1700000000}, "created_at must be a datetime, got int"),
        ({"answered": "no"}, "answered must be true or false, got 'no'"),
        ({"answered": 1}, "answered must be true or false, got 1"),
    ],
)
def test_a_bad_field_is_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        table_row(PredictionRecord(**fields(**overrides)))
    assert str(caught.value) == message


def test_a_labels_only_request_has_no_probabilities() -> None:
    assert table_row(PredictionRecord(**fields(probabilities={})))["probabilities"] == {}


def test_what_is_no_record_is_named() -> None:
    with pytest.raises(InvalidRecord, match=r"^expected a PredictionRecord, got str$"):
        table_row("not a record")
    document = fields()
    del document["labels"]
    with pytest.raises(InvalidRecord, match=r"^labels is missing$"):
        table_row(document)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"request_id":"req-5","ro', "not a JSON line: "),
        (b"\xff\xfe", "not a JSON line: "),
        (b"[1, 2]", "expected a PredictionRecord, got list"),
        (b'{"request_id": "r"}', "rows is missing"),
        (
            b'{"request_id":"r","model":"iris","version":"3","rows":2,"features":{"x":[1.0]},'
            b'"labels":["a","b"],"probabilities":{},"latency_ms":1.0,"created_at":"2026-11-23T12:00:00+00:00"}',
            "features['x'] has 1 values, but the request has 2 rows",
        ),
        (
            b'{"request_id":"r","model":"iris","version":"3","rows":1,"features":{},'
            b'"labels":[null],"probabilities":{},"latency_ms":1.0,"created_at":"2026-11-23T12:00:00+00:00"}',
            "labels[0] must be a string, got NoneType",
        ),
    ],
)
def test_an_unreadable_spool_line_is_named(line: bytes, message: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        row_from_spool_line(line)
    assert str(caught.value).startswith(message)
