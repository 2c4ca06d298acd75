"""Prediction records as table rows and spool lines: every field checked, every value made JSON-safe.

A record (or a line read back from the spool) becomes the row the ``predictions`` table takes, or an
InvalidRecord naming the bad field. Values are cleaned on the way: numpy scalars and arrays become plain
numbers and lists, NaN and infinities become null (JSON has neither), and a naive timestamp is taken as
UTC. The spool holds the same rows as JSON lines, so a replayed row is checked exactly like a new one.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from modelyard.registry.tables import MODEL_VERSION_LENGTH, NAME_LENGTH, REQUEST_ID_LENGTH
from modelyard.serving.sink import PredictionRecord


class InvalidRecord(ValueError):
    """A record that can never be stored; the message names the field."""


def json_value(value: Any) -> Any:
    """A JSON-safe copy: numpy values unwrapped, NaN and infinities as null (JSON has neither)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_value(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(inner) for inner in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        with contextlib.suppress(TypeError, ValueError):
            return json_value(tolist())
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _text(value: Any, *, field: str, limit: int | None) -> str:
    value = json_value(value)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidRecord(f"{field} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise InvalidRecord(f"{field} is empty")
    if limit is not None and len(text) > limit:
        raise InvalidRecord(f"{field} is longer than {limit} characters")
    return text


def _row_number(value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidRecord(f"row must be an integer >= 0, got {value!r}") from None
    if number < 0 or isinstance(value, bool):
        raise InvalidRecord(f"row must be an integer >= 0, got {value!r}")
    return number


def _latency(value: Any) -> float:
    try:
        latency_ms = float(value)
    except (TypeError, ValueError):
        raise InvalidRecord(f"latency_ms must be a number, got {value!r}") from None
    if not math.isfinite(latency_ms):
        raise InvalidRecord(f"latency_ms must be finite, got {latency_ms}")
    return latency_ms


def _moment(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRecord(f"created_at is not an ISO timestamp: {value!r}") from None
    if not isinstance(value, datetime):
        raise InvalidRecord(f"created_at must be a datetime, got {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _mapping(value: Any, *, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRecord(f"{field} must be a mapping, got {type(value).__name__}")
    cleaned: dict[str, Any] = json_value(value)
    return cleaned


def table_row(record: Any) -> dict[str, Any]:
    """The table row of a PredictionRecord (or of a spooled row); InvalidRecord names a bad field."""
    if isinstance(record, PredictionRecord):
        fields: Mapping[str, Any] = record.__dict__
    elif isinstance(record, Mapping):
        fields = record
    else:
        raise InvalidRecord(f"expected a PredictionRecord, got {type(record).__name__}")
    try:
        return {
            "request_id": _text(fields["request_id"], field="request_id", limit=REQUEST_ID_LENGTH),
            "row": _row_number(fields["row"]),
            "model": _text(fields["model"], field="model", limit=NAME_LENGTH),
            "version": _text(fields["version"], field="version", limit=MODEL_VERSION_LENGTH),
            "features": _mapping(fields["features"], field="features"),
            "label": _text(fields["label"], field="label", limit=None),
            "probabilities": _mapping(fields["probabilities"], field="probabilities"),
            "latency_ms": _latency(fields["latency_ms"]),
            "created_at": _moment(fields["created_at"]),
        }
    except KeyError as missing:
        raise InvalidRecord(f"{missing.args[0]} is missing") from None


def spool_line(row: dict[str, Any]) -> bytes:
    """A table row as one JSON line of the spool."""
    text = json.dumps(row, allow_nan=False, separators=(",", ":"), default=json_value)
    return text.encode() + b"\n"


def row_from_spool_line(line: bytes) -> dict[str, Any]:
    """The table row a spool line holds; InvalidRecord when the line is no JSON or no valid record."""
    try:
        document = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or bytes that are no UTF-8
        raise InvalidRecord(f"not a JSON line: {exc}") from None
    return table_row(document)


__all__ = [
    "InvalidRecord",
    "PredictionRecord",
    "json_value",
    "row_from_spool_line",
    "spool_line",
    "table_row",
]
