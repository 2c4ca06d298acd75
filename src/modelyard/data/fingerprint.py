"""Content fingerprints: the pipeline caches on them and the bundle records which data trained a model.

:func:`fingerprint_frame` hashes what a frame *holds* — column names in order, each column's logical
type, and every value in row order — and nothing about where it came from: not the file path, not the
file format, not the pandas index. So the same data read twice, or read once from CSV and once from
Parquet, has one fingerprint as long as the columns come back with the same logical types; one changed
cell, a renamed or reordered column, or reordered rows give another.

Logical types ignore storage width and pandas' nullable variants: int8..int64 and ``Int64`` are all
``int`` (hashed as int64; uint64 stays ``uint64``), float16..float64 and ``Float64`` are ``float``,
``bool``/``boolean`` are ``bool``, object columns of strings and the ``str``/``string`` dtypes are all
``string``. Every missing marker (None, NaN, NA, NaT) is one "missing" value.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard.errors import InvalidInput, NotFound

FINGERPRINT_VERSION = "modelyard-frame-v1"
_CHUNK_BYTES = 1024 * 1024


def fingerprint_frame(df: pd.DataFrame) -> str:
    """A sha256 (hex) of the frame's column names, logical types and values; see the module docstring."""
    columns: list[list[str]] = []
    column_digests: list[bytes] = []
    for position in range(df.shape[1]):
        values = df.iloc[:, position]
        logical, payload = _column_payload(values)
        columns.append([str(df.columns[position]), logical])
        column_digests.append(_digest(payload))
    header = {"format": FINGERPRINT_VERSION, "rows": len(df), "columns": columns}
    total = hashlib.sha256(json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    for digest in column_digests:
        total.update(digest)
    return total.hexdigest()


def fingerprint_file(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks so any size fits in memory."""
    file_path = Path(path)
    digest = hashlib.sha256()
    try:
        with file_path.open("rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
    except FileNotFoundError:
        raise NotFound(f"file not found: {file_path}") from None
    except IsADirectoryError:
        raise InvalidInput(f"cannot fingerprint a directory: {file_path}") from None
    return digest.hexdigest()


def _digest(parts: list[bytes]) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


def _column_payload(values: pd.Series) -> tuple[str, list[bytes]]:
    """The column's logical type and the byte strings that encode its values unambiguously."""
    dtype = values.dtype
    missing = values.isna().to_numpy(dtype=bool)
    mask = np.packbits(missing).tobytes()
    if isinstance(dtype, pd.CategoricalDtype):
        return _object_payload("category", values.astype(object), missing)
    if pd.api.types.is_bool_dtype(dtype):
        data = values.to_numpy(dtype="uint8", na_value=0)
        return "bool", [mask, data.tobytes()]
    if pd.api.types.is_integer_dtype(dtype):
        width = np.dtype(getattr(dtype, "numpy_dtype", dtype)).itemsize  # nullable UInt64 wraps a numpy dtype
        if dtype.kind == "u" and width == 8:
            return "uint64", [mask, values.to_numpy(dtype="<u8", na_value=0).tobytes()]
        return "int", [mask, values.to_numpy(dtype="<i8", na_value=0).tobytes()]
    if pd.api.types.is_float_dtype(dtype):
        data = values.to_numpy(dtype="<f8", na_value=np.nan)
        return "float", [mask, np.where(missing, 0.0, data).astype("<f8").tobytes()]
    if pd.api.types.is_datetime64_any_dtype(dtype):
        zone = getattr(dtype, "tz", None)
        logical = f"datetime[{zone}]" if zone is not None else "datetime"
        nanos = values.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view("<i8")
        return logical, [mask, np.where(missing, 0, nanos).astype("<i8").tobytes()]
    if pd.api.types.is_timedelta64_dtype(dtype):
        nanos = values.dt.as_unit("ns").to_numpy(dtype="timedelta64[ns]").view("<i8")
        return "timedelta", [mask, np.where(missing, 0, nanos).astype("<i8").tobytes()]
    objects = values.to_numpy(dtype=object, na_value=None)
    if all(value is None or isinstance(value, str) for value in objects[~missing]):
        encoded = [b"" if gap else value.encode("utf-8") for value, gap in zip(objects, missing, strict=True)]
        return "string", _length_prefixed(encoded, missing)
    return _object_payload("object", values, missing)


def _object_payload(logical: str, values: pd.Series, missing: np.ndarray) -> tuple[str, list[bytes]]:
    objects = values.to_numpy(dtype=object, na_value=None)
    encoded = [b"" if gap else _encode_object(value) for value, gap in zip(objects, missing, strict=True)]
    return logical, _length_prefixed(encoded, missing)


def _length_prefixed(encoded: list[bytes], missing: np.ndarray) -> list[bytes]:
    # Lengths (-1 for missing) fix where each value ends, so no separator can be confused with content.
    lengths = np.fromiter((len(item) for item in encoded), dtype="<i8", count=len(encoded))
    lengths[missing] = -1
    return [lengths.tobytes(), b"".join(encoded)]


def _encode_object(value: object) -> bytes:
    """A type-tagged encoding, so that 1, 1.0, True and "1" in one object column stay distinct."""
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, (bool, np.bool_)):
        return b"b1" if value else b"b0"
    if isinstance(value, (int, np.integer)):
        return b"i" + str(int(value)).encode()
    if isinstance(value, (float, np.floating)):
        return b"f" + float(value).hex().encode()
    if isinstance(value, Decimal):
        return b"d" + str(value).encode()
    if isinstance(value, bytes):
        return b"y" + value
    return b"o" + f"{type(value).__module__}.{type(value).__qualname__}:{value!r}".encode()
