"""Prediction records as table rows and spool lines: every field checked, every value made JSON-safe.

A record describes one request column by column (``modelyard.serving.sink``). It (or a line read back
from the spool) becomes the row the ``predictions`` table takes, or an InvalidRecord naming the bad
field. Checking a record costs a few steps per column, plus one pass over its labels: the feature and
probability columns stay as the data plane handed them (its whole matrix as a ``MatrixColumns``, numpy
arrays, or lists) until the writer packs them or :func:`json_text` serialises them, on the log's own
thread, with orjson. That is also where values are cleaned: numpy scalars and
arrays become plain numbers and lists, NaN and infinities become null (JSON has neither), anything else
becomes its text. A naive timestamp is taken as UTC. The spool holds the same rows as JSON lines, so a
replayed row is checked exactly like a new one. Records that crossed from the server as a run
(:class:`RecordRun`) are checked by the same rules, column by column.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import orjson

from modelyard.registry.tables import MODEL_VERSION_LENGTH, NAME_LENGTH, REQUEST_ID_LENGTH
from modelyard.serving.features import MatrixColumns
from modelyard.serving.sink import PredictionRecord

# orjson writes NaN and infinities as null, numpy arrays natively (C-contiguous ones; others go through
# ``plain_value``), and dictionary keys that are numbers as their text.
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


_SEQUENCES = (list, tuple)


class InvalidRecord(ValueError):
    """A record that can never be stored; the message names the field."""


def plain_value(value: Any) -> Any:
    """What orjson cannot write itself: arrays it does not take (strided, object) as lists, else text."""
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    return str(value)


class UnwritableValue(InvalidRecord):
    """A value JSON cannot hold (an integer beyond 64 bits): neither the table nor the spool takes it."""


def unwritable(request_id: Any, why: object) -> str:
    """The message of a record given up because a value of it cannot be written."""
    return f"the record of request {request_id!r} cannot be written: {why}"


def json_text(value: Any) -> str:
    """``value`` as JSON text: numpy values unwrapped, NaN and infinities as null, anything else as text;
    UnwritableValue when JSON cannot hold a value.

    The prediction log's engine serialises its JSON columns with this.
    """
    try:
        return orjson.dumps(value, default=plain_value, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError as exc:
        raise UnwritableValue(str(exc)) from None


def _text(value: Any, *, field: str, limit: int | None) -> str:
    if type(value) is str and value and (limit is None or len(value) <= limit):
        return value  # the common case, at once
    if isinstance(value, bool) or not isinstance(value, str | int):
        tolist = getattr(value, "tolist", None)  # a numpy scalar
        value = tolist() if callable(tolist) else value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRecord(f"{field} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise InvalidRecord(f"{field} is empty")
    if limit is not None and len(text) > limit:
        raise InvalidRecord(f"{field} is longer than {limit} characters")
    return text


def _row_count(value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidRecord(f"rows must be an integer >= 1, got {value!r}") from None
    if number < 1 or isinstance(value, bool):
        raise InvalidRecord(f"rows must be an integer >= 1, got {value!r}")
    return number


def _latency(value: Any) -> float:
    try:
        latency_ms = float(value)
    except (TypeError, ValueError):
        raise InvalidRecord(f"latency_ms must be a number, got {value!r}") from None
    if not math.isfinite(latency_ms):
        raise InvalidRecord(f"latency_ms must be finite, got {latency_ms}")
    return latency_ms


def moment_or_text(value: Any) -> Any:
    """An ISO timestamp as its datetime; anything else as it is (``table_row`` refuses it by name)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _moment(value: Any) -> datetime:
    moment = moment_or_text(value)
    if isinstance(moment, str):
        raise InvalidRecord(f"created_at is not an ISO timestamp: {value!r}")
    if not isinstance(moment, datetime):
        raise InvalidRecord(f"created_at must be a datetime, got {type(value).__name__}")
    return _in_utc(moment)


def _in_utc(moment: datetime) -> datetime:
    """A time that names no zone is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def column_length(column: Any) -> int | None:
    """The number of values of a list, tuple or one-dimensional array; None for anything else."""
    kind = type(column)
    if kind is np.ndarray:  # the data plane's columns: checked first, as the log checks many
        return len(column) if column.ndim == 1 else None
    if kind is list or kind is tuple or isinstance(column, _SEQUENCES):
        return len(column)
    if getattr(column, "ndim", None) == 1 and callable(getattr(column, "tolist", None)):
        return len(column)
    return None


def _columns(value: Any, *, field: str, rows: int) -> Mapping[str, Any]:
    """``{name: column}`` with every column ``rows`` values long; the columns are kept as they are."""
    if type(value) is MatrixColumns and value.matrix.shape == (rows, len(value.names)):
        _columns(value.other, field=field, rows=rows)
        return value  # the data plane's matrix, kept whole for the writer to pack
    if not isinstance(value, Mapping):
        raise InvalidRecord(f"{field} must be a mapping, got {type(value).__name__}")
    columns: dict[str, Any] = {}
    for name, column in value.items():
        length = column_length(column)
        if length is None:
            raise InvalidRecord(
                f"{field}[{str(name)!r}] must be a list of {rows} values, got {type(column).__name__}"
            )
        if length != rows:
            raise InvalidRecord(
                f"{field}[{str(name)!r}] has {length} values, but the request has {rows} rows"
            )
        columns[str(name)] = column
    return columns


def _labels(value: Any, *, rows: int) -> list[str]:
    """The predicted class of each row, as text whatever the class type (digits' 3 is "3")."""
    length = column_length(value)
    if length is None:
        raise InvalidRecord(f"labels must be a list of {rows} classes, got {type(value).__name__}")
    if length != rows:
        raise InvalidRecord(f"labels has {length} values, but the request has {rows} rows")
    labels = value if isinstance(value, _SEQUENCES) else value.tolist()
    if set(map(type, labels)) == {str} and "" not in labels:  # the data plane's: all text, at C speed
        return list(labels)
    texts = []
    for index, label in enumerate(labels):
        if type(label) is str and label:  # the data plane's labels: no further checks
            texts.append(label)
        else:
            texts.append(_text(label, field=f"labels[{index}]", limit=None))
    return texts


def _answered(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRecord(f"answered must be true or false, got {value!r}")
    return value


def table_row(record: Any) -> dict[str, Any]:
    """The table row of a PredictionRecord (or of a spooled row); InvalidRecord names a bad field."""
    if isinstance(record, PredictionRecord):
        fields: Mapping[str, Any] = record.__dict__
    elif isinstance(record, Mapping):
        fields = record
    else:
        raise InvalidRecord(f"expected a PredictionRecord, got {type(record).__name__}")
    try:
        rows = _row_count(fields["rows"])
        return {
            "request_id": _text(fields["request_id"], field="request_id", limit=REQUEST_ID_LENGTH),
            "model": _text(fields["model"], field="model", limit=NAME_LENGTH),
            "version": _text(fields["version"], field="version", limit=MODEL_VERSION_LENGTH),
            "rows": rows,
            "features": _columns(fields["features"], field="features", rows=rows),
            "labels": _labels(fields["labels"], rows=rows),
            "probabilities": _columns(fields["probabilities"], field="probabilities", rows=rows),
            "latency_ms": _latency(fields["latency_ms"]),
            "created_at": _moment(fields["created_at"]),
            # a spool line written before 0007 has no such field: every row was an answer then
            "answered": _answered(fields.get("answered", True)),
        }
    except KeyError as missing:
        raise InvalidRecord(f"{missing.args[0]} is missing") from None


@dataclass(frozen=True, eq=False)
class RecordRun:
    """Consecutive records of one model version as columns, as they cross from the server (``wire``).

    Record ``i`` has ``rows[i]`` rows: rows ``starts[i]`` to ``starts[i + 1]`` of the two matrices and of
    ``labels``. The writer checks and converts a run column by column (:meth:`times_if_all_pass`); a
    record those checks do not pass goes the way of any other record (:meth:`record`, then
    ``table_row``), which names what is wrong with it.
    """

    model: Any
    version: Any
    answered: Any
    request_ids: list[Any]
    rows: list[int]
    starts: list[int]
    feature_names: list[str]
    features: np.ndarray
    class_names: list[str]
    probabilities: np.ndarray
    labels: list[Any]
    latency_ms: list[Any]
    created_at: list[Any]
    other: list[Any] | None  # each record's columns beside the feature matrix; None when none has any

    def __len__(self) -> int:
        return len(self.request_ids)

    def record(self, index: int) -> PredictionRecord:
        """Record ``index`` of the run, as it was submitted on the server."""
        start, end = self.starts[index], self.starts[index + 1]
        return PredictionRecord(
            request_id=self.request_ids[index],
            model=self.model,
            version=self.version,
            rows=self.rows[index],
            features=MatrixColumns(
                self.feature_names, self.features[start:end], self.other[index] if self.other else {}
            ),
            labels=self.labels[start:end],
            probabilities=MatrixColumns(self.class_names, self.probabilities[start:end]),
            latency_ms=self.latency_ms[index],
            created_at=moment_or_text(self.created_at[index]),
            answered=self.answered,
        )

    def times_if_all_pass(self, first: int, end: int) -> list[datetime] | None:
        """The times of records ``first`` to ``end`` if every one of them passes ``table_row``'s checks,
        made column by column; None if any does not (each then goes the way of any other record). A
        record passes when its request id is text of the right length, its latency a finite float, its
        time an ISO timestamp, its labels non-empty text and its other columns lists of its rows; the
        model and version must be text and ``answered`` a bool, and the matrices hold floats, which the
        table packs (``registry.packed``)."""
        if type(self.model) is not str or type(self.version) is not str:
            return None
        try:
            _text(self.model, field="model", limit=NAME_LENGTH)
            _text(self.version, field="version", limit=MODEL_VERSION_LENGTH)
            _answered(self.answered)
        except InvalidRecord:
            return None
        if self.features.dtype.kind != "f" or self.probabilities.dtype.kind != "f":
            return None
        request_ids, latencies = self.request_ids[first:end], self.latency_ms[first:end]
        if not all(
            type(request_id) is str and 0 < len(request_id) <= REQUEST_ID_LENGTH for request_id in request_ids
        ):
            return None
        if not all(type(latency_ms) is float and math.isfinite(latency_ms) for latency_ms in latencies):
            return None
        labels = self.labels[self.starts[first] : self.starts[end]]
        if not all(type(label) is str and label for label in labels):
            return None
        others = self.other
        if others is not None and not all(
            _plain_columns(others[index], self.rows[index]) for index in range(first, end)
        ):
            return None
        moments = [moment_or_text(moment) for moment in self.created_at[first:end]]
        if not all(type(moment) is datetime for moment in moments):
            return None
        return [_in_utc(moment) for moment in moments]


def _plain_columns(columns: Any, rows: int) -> bool:
    """Whether ``columns`` maps text to lists of ``rows`` values (as JSON brings them)."""
    return type(columns) is dict and all(
        type(name) is str and type(column) is list and len(column) == rows for name, column in columns.items()
    )


class RunMember(NamedTuple):
    """Record ``position`` of a RecordRun, where a queue holds one entry per record."""

    run: RecordRun
    position: int


def one_entry_per_record(entries: list[PredictionRecord | RecordRun]) -> list[PredictionRecord | RunMember]:
    """Records and runs as a queue that counts records takes them: a run as one member per record."""
    queued: list[PredictionRecord | RunMember] = []
    for entry in entries:
        if isinstance(entry, RecordRun):
            queued.extend(RunMember(entry, position) for position in range(len(entry)))
        else:
            queued.append(entry)
    return queued


def spool_line(row: dict[str, Any]) -> bytes:
    """A table row as one JSON line of the spool; InvalidRecord when a value cannot be written."""
    try:
        return orjson.dumps(row, default=plain_value, option=_JSON_OPTIONS | orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError as exc:
        raise UnwritableValue(unwritable(row.get("request_id"), exc)) from None


def row_from_spool_line(line: bytes) -> dict[str, Any]:
    """The table row a spool line holds; InvalidRecord when the line is no JSON or no valid record.

    A line spooled before the log held one row per request (one predicted row, with ``row`` and
    ``label``) becomes a request of that one row. Its time moves on by ``row`` microseconds, so the rows
    of one old request stay apart under the table's unique key (each is its own one-row request then)."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:  # no JSON, or bytes that are no UTF-8
        raise InvalidRecord(f"not a JSON line: {exc}") from None
    if isinstance(document, dict) and "label" in document and "rows" not in document:
        document = _one_row_request(document)
    return table_row(document)


def _one_row_request(old: dict[str, Any]) -> dict[str, Any]:
    """An old spool line's predicted row as a request of one row (fields checked by table_row)."""
    row = old.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        raise InvalidRecord(f"row must be an integer >= 0, got {row!r}")
    features, probabilities = old.get("features"), old.get("probabilities")
    converted = {key: value for key, value in old.items() if key not in ("row", "label")}
    converted["rows"] = 1
    converted["labels"] = [old["label"]]
    if isinstance(features, dict):
        converted["features"] = {name: [value] for name, value in features.items()}
    if isinstance(probabilities, dict):
        converted["probabilities"] = {name: [value] for name, value in probabilities.items()}
    if row and "created_at" in old:
        converted["created_at"] = _moment(old["created_at"]) + timedelta(microseconds=row)
    return converted


__all__ = [
    "InvalidRecord",
    "PredictionRecord",
    "RecordRun",
    "RunMember",
    "column_length",
    "json_text",
    "moment_or_text",
    "one_entry_per_record",
    "plain_value",
    "row_from_spool_line",
    "spool_line",
    "table_row",
]
