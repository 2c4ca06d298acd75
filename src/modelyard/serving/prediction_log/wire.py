"""The frames between the server and its prediction-log writer process, and the records inside them.

A frame is a kind byte, a 4-byte little-endian length and the payload. The server sends ``CONFIG``
once, then ``RECORDS`` and ``FLUSH``; the writer answers with ``STATUS``. A batch of records travels as
one JSON list of their fields (orjson) followed by the raw bytes of their numeric matrices, so that the
server spends a few microseconds per record and no per-value work: the writer checks and converts the
records exactly as if they had been submitted to it directly (``records.table_row``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

import numpy as np
import orjson

from modelyard.serving.features import MatrixColumns
from modelyard.serving.prediction_log.records import plain_value
from modelyard.serving.sink import PredictionRecord

CONFIG = 1
RECORDS = 2
FLUSH = 3
STATUS = 4
KINDS = (CONFIG, RECORDS, FLUSH, STATUS)

_HEADER = struct.Struct("<BI")
_BATCH_HEADER = struct.Struct("<II")  # records, bytes of their JSON
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class FrameError(ValueError):
    """A frame that is not one: an unknown kind, or a stream cut inside a frame."""


def frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: int, document: Any) -> bytes:
    return frame(kind, orjson.dumps(document))


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


def _encode_columns(columns: Any, blob: bytearray) -> Any:
    """A MatrixColumns of numbers as [names, dtype, shape, offset, other]; anything else as itself."""
    if type(columns) is MatrixColumns:
        matrix = columns.matrix
        if isinstance(matrix, np.ndarray) and matrix.ndim == 2 and matrix.dtype.kind in "fiu":
            offset = len(blob)
            blob += np.ascontiguousarray(matrix).data
            other = {name: plain_value(column) for name, column in columns.other.items()}
            return [list(columns.names), matrix.dtype.str, matrix.shape, offset, other]
        return columns.tolist()
    return columns


def encode_records(records: Sequence[PredictionRecord]) -> bytes:
    """The payload of a RECORDS frame. Raises only for a record no JSON can carry (the caller drops it)."""
    blob = bytearray()
    fields = [
        [
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
        for record in records
    ]
    meta = orjson.dumps(fields, default=plain_value, option=_JSON_OPTIONS)
    return _BATCH_HEADER.pack(len(fields), len(meta)) + meta + blob


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
        matrix = np.frombuffer(blob, dtype=np.dtype(dtype), count=rows * width, offset=offset)
        return MatrixColumns(names, matrix.reshape(rows, width), other)
    return columns


def _moment(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value  # the writer refuses it by name
    return value


def decode_records(payload: bytes) -> list[PredictionRecord]:
    """The records of a RECORDS payload; FrameError when it is not one."""
    try:
        count, meta_length = _BATCH_HEADER.unpack_from(payload)
        start = _BATCH_HEADER.size
        fields = orjson.loads(payload[start : start + meta_length])
        blob = memoryview(payload)[start + meta_length :]
        if len(fields) != count:
            raise ValueError(f"{len(fields)} records where the frame says {count}")
        records = [
            PredictionRecord(
                request_id=request_id,
                model=model,
                version=version,
                rows=rows,
                features=_decode_columns(features, blob),
                labels=labels,
                probabilities=_decode_columns(probabilities, blob),
                latency_ms=latency_ms,
                created_at=_moment(created_at),
                answered=answered,
            )
            for (
                request_id,
                model,
                version,
                rows,
                features,
                labels,
                probabilities,
                latency_ms,
                created_at,
                answered,
            ) in fields
        ]
    except (struct.error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise FrameError(f"not a batch of prediction records: {exc}") from None
    return records


__all__ = [
    "CONFIG",
    "FLUSH",
    "RECORDS",
    "STATUS",
    "FrameError",
    "decode_records",
    "encode_records",
    "frame",
    "json_frame",
    "read_frame",
    "record_count",
]
