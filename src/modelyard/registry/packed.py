"""Numeric columns of a logged prediction packed as binary float64, and the one way to read them back.

The prediction log stores a request's numeric feature columns and its class probabilities as one packed
value each (``Prediction.packed_features``, ``Prediction.packed_probabilities``) rather than as JSON
numbers: packing is a copy of the request's own arrays, and the database stores a third of the bytes.
Other columns (categorical and text features, values the log got as lists) stay in the JSON columns.
A packed value is ``MAGIC``, the length of its header (4 bytes, little-endian), the header (a JSON list
of the column names), then each column's float64 values, little-endian, one column after the other. NaN
stands for a missing value. :func:`logged_columns` joins a JSON column and its packed companion into one
``{name: [value per row]}`` with None where a value is missing or not finite (as the JSON columns store
them), whichever way each column was stored.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAGIC = b"MYPK1"
_HEADER_LENGTH = struct.Struct("<I")
_FLOAT64 = np.dtype("<f8")


class PackedError(ValueError):
    """Bytes that are no packed columns; the message says what is wrong."""


@functools.lru_cache(maxsize=256)
def _header(names: tuple[str, ...]) -> bytes:
    """MAGIC, the header's length and the header: the same for every request of a model."""
    header = json.dumps(list(names), ensure_ascii=False, separators=(",", ":")).encode()
    return MAGIC + _HEADER_LENGTH.pack(len(header)) + header


def pack_columns(columns: Mapping[str, np.ndarray], rows: int) -> bytes:
    """``columns`` (each a one-dimensional array of ``rows`` numbers) packed as the module docstring says."""
    names = tuple(columns)
    arrays = list(columns.values())
    for name, array in zip(names, arrays, strict=True):
        if np.ndim(array) != 1 or len(array) != rows:
            raise PackedError(f"column {name!r} has shape {np.shape(array)}, expected ({rows},)")
    if not names:
        return _header(names)
    values = np.concatenate(arrays, dtype=_FLOAT64, casting="same_kind")
    return _header(names) + values.tobytes()


def pack_matrix(names: Sequence[str], matrix: np.ndarray) -> bytes:
    """The columns of ``matrix`` [rows, len(names)], named ``names``, packed in one copy."""
    return pack_row_blocks(names, matrix, [0, len(matrix)])[0]


def pack_row_blocks(names: Sequence[str], matrix: np.ndarray, starts: Sequence[int]) -> list[bytes]:
    """Rows ``starts[i]`` to ``starts[i + 1]`` of ``matrix`` [rows, len(names)] packed, for each ``i``:
    the requests of a batch whose rows are stacked in one matrix."""
    if np.ndim(matrix) != 2 or np.shape(matrix)[1] != len(names):
        raise PackedError(f"a matrix of shape {np.shape(matrix)} has no {len(names)} columns")
    header = _header(tuple(names))
    first, end = (starts[0], starts[-1]) if len(starts) else (0, 0)
    values = np.asarray(matrix[first:end], dtype=_FLOAT64)  # the rows packed, converted once
    return [
        header + values[start - first : end - first].T.tobytes() for start, end in itertools.pairwise(starts)
    ]


def unpack_columns(packed: bytes) -> dict[str, np.ndarray]:
    """``{name: float64 column}`` of a packed value; PackedError when the bytes are no such value."""
    data = bytes(packed)  # Postgres drivers may hand a memoryview
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEADER_LENGTH.size:
        raise PackedError("not packed columns: the value does not start with the packed-columns magic")
    start = len(MAGIC) + _HEADER_LENGTH.size
    (length,) = _HEADER_LENGTH.unpack_from(data, len(MAGIC))
    try:
        names = json.loads(data[start : start + length])
    except ValueError:
        raise PackedError("packed columns with an unreadable header") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise PackedError("packed columns whose header is no list of column names")
    body = data[start + length :]
    if len(body) % (_FLOAT64.itemsize * max(1, len(names))) or (not names and body):
        raise PackedError(f"packed columns of {len(body)} bytes do not split into {len(names)} columns")
    values = np.frombuffer(body, dtype=_FLOAT64).reshape(len(names), -1) if names else None
    return {name: values[index] for index, name in enumerate(names)} if values is not None else {}


def logged_columns(
    json_columns: Mapping[str, Sequence[Any]] | None, packed: bytes | None
) -> dict[str, list[Any]]:
    """A logged request's columns, ``{name: [value per row]}`` with None where a value is missing.

    ``json_columns`` is the JSON column (``features`` or ``probabilities``) and ``packed`` its packed
    companion, NULL for requests logged before packing or with nothing numeric to pack.
    """
    columns: dict[str, list[Any]] = {name: list(values) for name, values in (json_columns or {}).items()}
    if packed is not None:
        for name, values in unpack_columns(packed).items():
            columns[name] = [value if math.isfinite(value) else None for value in values.tolist()]
    return columns


__all__ = [
    "MAGIC",
    "PackedError",
    "logged_columns",
    "pack_columns",
    "pack_matrix",
    "pack_row_blocks",
    "unpack_columns",
]
