"""The frames between the server and its prediction-log writer process, and the records inside them.

A frame is a kind byte, a 4-byte little-endian length and the payload. The server sends ``CONFIG``
once, then ``RECORDS`` and ``FLUSH``; the writer answers with ``STATUS``. A batch of records travels as
one JSON list (orjson) followed by the raw bytes of their numeric matrices. Consecutive records of one
model version, as the data plane builds them, travel as a run: their fields as columns and their
matrices one under the other, which costs a fraction of a list of fields per record (text columns, and
labels that are lists or of mixed dtypes, are still copied value by value). Any other record travels as
its own list of fields. The writer decodes a run as a ``records.RecordRun`` and stores it column by column;
every record it cannot store that way, and every record that travels alone, is checked as if it had
been submitted to the writer directly (``records.table_row``). The server writes a payload as the
buffers it is made of (``write_frame``): large matrices go from the data plane's arrays to the pipe
without a copy in the server, which would hold the GIL the event loop needs.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Hashable, Sequence
from typing import IO, Any, cast

import numpy as np
import orjson

from modelyard.serving.features import MatrixColumns
from modelyard.serving.prediction_log.records import RecordRun, column_length, moment_or_text, plain_value
from modelyard.serving.sink import PredictionRecord

CONFIG = 1
RECORDS = 2
FLUSH = 3
STATUS = 4
KINDS = (CONFIG, RECORDS, FLUSH, STATUS)

_HEADER = struct.Struct("<BI")
_BATCH_HEADER = struct.Struct("<II")  # records, bytes of their JSON
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# A run's matrices at least this large on average are sent from their own buffers; smaller ones are
# stacked into one array first (a copy costs less than a buffer each for a write to walk through).
SEPARATE_MATRIX_BYTES = 16 << 10
Part = bytes | memoryview  # a piece of a payload, written as it is
# Buffers one writev takes at most: the system's IOV_MAX (Linux's is 1024; POSIX promises only 16).
try:
    _WRITE_BUFFERS = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):
    _WRITE_BUFFERS = 16


class FrameError(ValueError):
    """A frame that is not one: an unknown kind, or a stream cut inside a frame."""


def frame_header(kind: int, length: int) -> bytes:
    """What precedes a payload of ``length`` bytes: written apart, a large payload is never copied."""
    return _HEADER.pack(kind, length)


def frame(kind: int, payload: bytes) -> bytes:
    return frame_header(kind, len(payload)) + payload


def write_frame(fd: int, kind: int, parts: Sequence[Part]) -> None:
    """Write a frame whose payload is ``parts`` joined, whole, to the file descriptor ``fd`` (blocking),
    without joining them: writev copies each buffer into the pipe with the GIL released."""
    views = [_bytes_view(part) for part in parts]
    views.insert(0, memoryview(frame_header(kind, sum(view.nbytes for view in views))))
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _WRITE_BUFFERS])
        # a write a signal cut short goes on where it stopped
        while first < len(views) and written >= views[first].nbytes:
            written -= views[first].nbytes
            first += 1
        if written:
            views[first] = views[first][written:]


def _bytes_view(part: Part) -> memoryview:
    """``part`` as a flat view of bytes: a partial write resumes at a byte offset."""
    view = memoryview(part)
    if view.format == "B" and view.ndim == 1:
        return view
    if view.nbytes == 0:
        return memoryview(b"")
    return view.cast("B")  # raises for a view that is not C-contiguous


def read_frame(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The next (kind, payload) of ``stream``; None at its end. FrameError when a frame is cut short."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise FrameError(f"the stream ended inside a frame header ({len(header)} bytes)")
    kind, length = _HEADER.unpack(header)
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    payload = stream.read(length)
    if len(payload) < length:
        raise FrameError(f"the stream ended inside a frame ({len(payload)} of {length} bytes)")
    return kind, payload


class _Blob:
    """The raw bytes after a payload's JSON, as the arrays' own buffers, never copied here."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []
        self.size = 0

    def add(self, array: np.ndarray) -> int:
        """Append a C-contiguous ``array``; the offset it starts at."""
        offset = self.size
        self.buffers.append(array.data)  # write_frame sees its bytes
        self.size += array.nbytes
        return offset


def _encode_columns(columns: Any, blob: _Blob) -> Any:
    """A MatrixColumns of numbers as [names, dtype, shape, offset, other]; anything else as itself."""
    if type(columns) is MatrixColumns:
        matrix = columns.matrix
        if isinstance(matrix, np.ndarray) and matrix.ndim == 2 and matrix.dtype.kind in "fiu":
            offset = blob.add(np.ascontiguousarray(matrix))
            # orjson writes the arrays among the other columns, or asks plain_value
            return [list(columns.names), matrix.dtype.str, matrix.shape, offset, dict(columns.other)]
        return columns.tolist()
    return columns


def _run_key(record: PredictionRecord) -> Hashable | None:
    """What consecutive records share to travel as one run; None for a record that travels alone.

    A run's records are the data plane's: text for model and version, both column sets numeric matrices
    (in the machine's byte order) of ``rows`` rows, ``rows`` labels, no other columns beside the
    probabilities. Anything else travels alone, so that the writer refuses it alone. The names are
    compared by identity, as each served model hands the same lists.
    """
    features, probabilities, rows = record.features, record.probabilities, record.rows
    if type(features) is not MatrixColumns or type(probabilities) is not MatrixColumns:
        return None
    matrix, outputs = features.matrix, probabilities.matrix
    if (
        type(matrix) is not np.ndarray
        or type(outputs) is not np.ndarray
        or type(rows) is not int
        or rows < 1
        or matrix.shape != (rows, len(features.names))
        or outputs.shape != (rows, len(probabilities.names))
        or matrix.dtype.kind not in "fiu"
        or outputs.dtype.kind not in "fiu"
        or not (matrix.dtype.isnative and outputs.dtype.isnative)
        or probabilities.other
        or column_length(record.labels) != rows
        or type(record.model) is not str
        or type(record.version) is not str
        or type(record.answered) is not bool
    ):
        return None
    return (
        record.model,
        record.version,
        record.answered,
        id(features.names),
        matrix.dtype,
        id(probabilities.names),
        outputs.dtype,
    )


def _stacked(matrices: list[np.ndarray], blob: _Blob) -> int:
    """Append the matrices, one under the other, to ``blob``; the offset they start at."""
    average_bytes = sum(matrix.nbytes for matrix in matrices) / len(matrices)
    if len(matrices) > 1 and average_bytes < SEPARATE_MATRIX_BYTES:
        return blob.add(np.concatenate(matrices))  # a new, C-contiguous array
    offset = blob.size
    for matrix in matrices:
        blob.add(np.ascontiguousarray(matrix))
    return offset


def _flattened(labels: list[Any]) -> list[Any]:
    """The labels of a run's records, one list: the data plane's arrays (text, or objects) joined at C speed,
    anything else value by value (so that numpy never turns one record's numbers into text)."""
    first = labels[0]
    if type(first) is np.ndarray and first.dtype.kind in "OU":
        kind = first.dtype
        if all(type(column) is np.ndarray and column.dtype == kind for column in labels):
            return cast(list[Any], np.concatenate(labels).tolist())
    return list(itertools.chain.from_iterable(labels))


def _encode_run(run: list[PredictionRecord], blob: _Blob) -> dict[str, Any]:
    first = run[0]
    # _run_key saw to it: every record of a run has numeric MatrixColumns of the same names
    feature_sets = cast(list[MatrixColumns], [record.features for record in run])
    class_sets = cast(list[MatrixColumns], [record.probabilities for record in run])
    features, probabilities = feature_sets[0], class_sets[0]
    others = [columns.other for columns in feature_sets]
    return {
        "model": first.model,
        "version": first.version,
        "answered": first.answered,
        "request_ids": [record.request_id for record in run],
        "rows": [record.rows for record in run],
        "features": [
            list(features.names),
            features.matrix.dtype.str,
            _stacked([columns.matrix for columns in feature_sets], blob),
        ],
        "probabilities": [
            list(probabilities.names),
            probabilities.matrix.dtype.str,
            _stacked([columns.matrix for columns in class_sets], blob),
        ],
        "labels": _flattened([record.labels for record in run]),
        "latency_ms": [record.latency_ms for record in run],
        "created_at": [record.created_at for record in run],
        # the text and category columns beside the numbers, per record; none at all is said once
        "other": [dict(other) for other in others] if any(others) else None,
    }


def _encode_alone(record: PredictionRecord, blob: _Blob) -> list[Any]:
    return [
        record.request_id,
        record.model,
        record.version,
        record.rows,
        _encode_columns(record.features, blob),
        record.labels,
        _encode_columns(record.probabilities, blob),
        record.latency_ms,
        record.created_at,
        record.answered,
    ]


def encode_records(records: Sequence[PredictionRecord]) -> list[Part]:
    """The payload of a RECORDS frame, as the buffers that make it up in order (for ``write_frame``): its
    header and JSON, then the matrices' bytes, large ones the records' own arrays. Raises only for a
    record no JSON can carry (the caller drops it)."""
    blob = _Blob()
    entries: list[Any] = []
    run: list[PredictionRecord] = []
    run_key: Hashable | None = None
    for record in records:
        key = _run_key(record)
        if key is not None and key == run_key:
            run.append(record)
            continue
        if run:
            entries.append(_encode_run(run, blob))
            run = []
        run_key = key
        if key is None:
            entries.append(_encode_alone(record, blob))
        else:
            run.append(record)
    if run:
        entries.append(_encode_run(run, blob))
    meta = orjson.dumps(entries, default=plain_value, option=_JSON_OPTIONS)
    return [_BATCH_HEADER.pack(len(records), len(meta)), meta, *blob.buffers]


def record_count(payload: bytes) -> int:
    """How many records a RECORDS payload says it holds (0 when it is too short to say)."""
    if len(payload) < _BATCH_HEADER.size:
        return 0
    return int(_BATCH_HEADER.unpack_from(payload)[0])


def _decode_columns(columns: Any, blob: memoryview) -> Any:
    """A matrix sent as [names, dtype, shape, offset, other] as MatrixColumns; anything else as it came
    (a record's columns are a mapping otherwise, which the writer checks by name)."""
    if isinstance(columns, list) and len(columns) == 5 and isinstance(columns[4], dict):
        names, dtype, (rows, width), offset, other = columns
        return MatrixColumns(_names(names), _matrix(blob, dtype, rows, width, offset), other)
    return columns


def _names(names: Any) -> list[str]:
    """A matrix's column names; ValueError unless they are a list of text."""
    if type(names) is not list or not all(type(name) is str for name in names):
        raise ValueError(f"a matrix's column names must be text, got {str(names)[:80]}")
    return names


def _matrix(blob: memoryview, dtype: Any, rows: Any, width: Any, offset: Any) -> np.ndarray:
    """The [rows, width] matrix of numbers at ``offset`` of ``blob``; ValueError when it is not there."""
    numbers = np.dtype(dtype) if isinstance(dtype, str) else None
    if numbers is None or numbers.kind not in "fiu":
        raise ValueError(f"{dtype!r} is no dtype of numbers")
    if not all(type(number) is int and number >= 0 for number in (rows, width, offset)):
        raise ValueError(f"a matrix of {rows!r} x {width!r} at {offset!r} cannot be")
    count = rows * width
    if offset + count * numbers.itemsize > len(blob):
        raise ValueError(f"a matrix of {rows} x {width} at {offset} runs past the {len(blob)} bytes sent")
    return np.frombuffer(blob, dtype=numbers, count=count, offset=offset).reshape(rows, width)


def _decode_alone(fields: list[Any], blob: memoryview) -> PredictionRecord:
    request_id, model, version, rows, features, labels, probabilities, latency_ms, created_at, answered = (
        fields
    )
    return PredictionRecord(
        request_id=request_id,
        model=model,
        version=version,
        rows=rows,
        features=_decode_columns(features, blob),
        labels=labels,
        probabilities=_decode_columns(probabilities, blob),
        latency_ms=latency_ms,
        created_at=moment_or_text(created_at),
        answered=answered,
    )


def _unstacked(spec: list[Any], rows: int, blob: memoryview) -> tuple[list[str], np.ndarray]:
    """A run's stacked matrix: its column names, and the [rows, columns] matrix over ``blob``."""
    names, dtype, offset = spec
    return _names(names), _matrix(blob, dtype, rows, len(names), offset)


def _decode_run(run: dict[str, Any], blob: memoryview) -> RecordRun:
    request_ids, rows, labels = run["request_ids"], run["rows"], run["labels"]
    latencies, moments, others = run["latency_ms"], run["created_at"], run["other"]
    columns = (request_ids, rows, labels, latencies, moments)
    if not all(type(column) is list for column in columns) or not (others is None or type(others) is list):
        raise ValueError("a run's columns must be lists")
    if not all(type(count) is int and count > 0 for count in rows):
        raise ValueError("a run's row counts must be positive integers")
    per_record = (
        (request_ids, latencies, moments) if others is None else (request_ids, latencies, moments, others)
    )
    if any(len(column) != len(rows) for column in per_record):
        raise ValueError("a run's columns differ in length")
    starts = [0, *itertools.accumulate(rows)]
    total = starts[-1]
    if len(labels) != total:
        raise ValueError(f"a run of {total} rows has {len(labels)} labels")
    feature_names, features = _unstacked(run["features"], total, blob)
    class_names, probabilities = _unstacked(run["probabilities"], total, blob)
    return RecordRun(
        model=run["model"],
        version=run["version"],
        answered=run["answered"],
        request_ids=request_ids,
        rows=rows,
        starts=starts,
        feature_names=feature_names,
        features=features,
        class_names=class_names,
        probabilities=probabilities,
        labels=labels,
        latency_ms=latencies,
        created_at=moments,
        other=others,
    )


def decode_records(payload: bytes) -> list[PredictionRecord | RecordRun]:
    """The records of a RECORDS payload, each alone or in a run; FrameError when it is not one."""
    try:
        count, meta_length = _BATCH_HEADER.unpack_from(payload)
        start = _BATCH_HEADER.size
        entries = orjson.loads(payload[start : start + meta_length])
        blob = memoryview(payload)[start + meta_length :]
        decoded: list[PredictionRecord | RecordRun] = [
            _decode_run(entry, blob) if isinstance(entry, dict) else _decode_alone(entry, blob)
            for entry in entries
        ]
        found = sum(len(entry) if isinstance(entry, RecordRun) else 1 for entry in decoded)
        if found != count:
            raise ValueError(f"{found} records where the frame says {count}")
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise FrameError(f"not a batch of prediction records: {exc}") from None
    return decoded


__all__ = [
    "CONFIG",
    "FLUSH",
    "RECORDS",
    "SEPARATE_MATRIX_BYTES",
    "STATUS",
    "FrameError",
    "Part",
    "decode_records",
    "encode_records",
    "frame",
    "frame_header",
    "read_frame",
    "record_count",
    "write_frame",
]
