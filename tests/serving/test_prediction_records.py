"""Prediction records as table rows and spool lines: values made JSON-safe, every bad field named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from modelyard.serving.prediction_log.records import (
    InvalidRecord,
    row_from_spool_line,
    spool_line,
    table_row,
)
from modelyard.serving.sink import PredictionRecord

MOMENT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def fields(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "request_id": "req-1",
        "row": 0,
        "model": "iris",
        "version": "3",
        "features": {"sepal_length": 5.1, "color": "red"},
        "label": "setosa",
        "probabilities": {"setosa": 0.9, "virginica": 0.1},
        "latency_ms": 0.8,
        "created_at": MOMENT,
    }
    document.update(overrides)
    return document


def test_a_record_becomes_its_row_with_numpy_values_unwrapped_and_non_finite_as_null() -> None:
    record = PredictionRecord(
        **fields(
            row=np.int64(2),
            features={"a": np.float64("nan"), "b": np.float32(1.5), "c": np.arange(2), "d": None},
            label=np.int64(7),
            probabilities={0: 0.25, "1": float("inf")},
            latency_ms=np.float64(2.5),
            created_at=datetime(2026, 11, 23, 13, 30),  # naive: taken as UTC
        )
    )
    assert table_row(record) == {
        "request_id": "req-1",
        "row": 2,
        "model": "iris",
        "version": "3",
        "features": {"a": None, "b": 1.5, "c": [0, 1], "d": None},
        "label": "7",
        "probabilities": {"0": 0.25, "1": None},
        "latency_ms": 2.5,
        "created_at": datetime(2026, 11, 23, 13, 30, tzinfo=UTC),
    }


def test_a_spool_line_reads_back_as_the_same_row() -> None:
    row = table_row(PredictionRecord(**fields()))
    line = spool_line(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["created_at"] == "2026-11-23T12:00:00+00:00"
    assert row_from_spool_line(line.rstrip(b"\n")) == row


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_id": "x" * 257}, "request_id is longer than 256 characters"),
        ({"request_id": ""}, "request_id is empty"),
        ({"request_id": None}, "request_id must be a string, got NoneType"),
        ({"request_id": True}, "request_id must be a string, got bool"),
        ({"model": "m" * 64}, "model is longer than 63 characters"),
        ({"version": "v" * 65}, "version is longer than 64 characters"),
        ({"label": ["a"]}, "label must be a string, got list"),
        ({"row": -1}, "row must be an integer >= 0, got -1"),
        ({"row": 1.5}, "row must be an integer >= 0, got 1.5"),
        ({"row": True}, "row must be an integer >= 0, got True"),
        ({"features": [1, 2]}, "features must be a mapping, got list"),
        ({"probabilities": "setosa"}, "probabilities must be a mapping, got str"),
        ({"latency_ms": "fast"}, "latency_ms must be a number, got 'fast'"),
        ({"latency_ms": float("nan")}, "latency_ms must be finite, got nan"),
        ({"created_at": "yesterday"}, "created_at is not an ISO timestamp: 'yesterday'"),
        ({"created_at": 1700000000}, "created_at must be a datetime, got int"),
    ],
)
def test_a_bad_field_is_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        table_row(PredictionRecord(**fields(**overrides)))
    assert str(caught.value) == message


def test_what_is_no_record_is_named() -> None:
    with pytest.raises(InvalidRecord, match=r"^expected a PredictionRecord, got str$"):
        table_row("not a record")
    document = fields()
    del document["label"]
    with pytest.raises(InvalidRecord, match=r"^label is missing$"):
        table_row(document)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"request_id":"req-5","ro', "not a JSON line: "),
        (b"\xff\xfe", "not a JSON line: "),
        (b"[1, 2]", "expected a PredictionRecord, got list"),
        (b'{"request_id": "r"}', "row is missing"),
    ],
)
def test_an_unreadable_spool_line_is_named(line: bytes, message: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        row_from_spool_line(line)
    assert str(caught.value).startswith(message)
