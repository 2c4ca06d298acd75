"""What the wire codecs share: datatypes and shapes read off the wire, tensors as raw little-endian
bytes (the REST binary tensor extension and gRPC's raw contents use the same layout), and numbers cast
to a tensor's datatype with exact range checks (integers compared as integers, never through float64).

Every client mistake raises ``InvalidInput`` naming the tensor at fault.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from modelyard.errors import InvalidInput
from modelyard.serving.types import Datatype, Tensor

MAX_DIMENSIONS = 32
"""A tensor's rank at most (numpy's own limit is 64); the features this server takes have 1 or 2."""


def parse_datatype(value: Any, where: str) -> Datatype:
    try:
        return Datatype(value)
    except ValueError:
        known = ", ".join(d.value for d in Datatype)
        raise InvalidInput(f"{where}: unknown datatype {value!r} (expected one of {known})") from None


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{where}: 'shape' must be an array of integers, got {value!r}"[:300])
    if any(d < 0 for d in value):
        raise InvalidInput(f"{where}: shape {list(value)} has a negative dimension")
    if len(value) > MAX_DIMENSIONS:
        raise InvalidInput(f"{where}: shape has {len(value)} dimensions, more than {MAX_DIMENSIONS}")
    return tuple(int(d) for d in value)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def decode_raw_tensor(
    datatype: Datatype, shape: tuple[int, ...], raw: bytes | memoryview, where: str
) -> np.ndarray:
    """A tensor sent as raw bytes (REST binary extension, gRPC raw_input_contents), without copying."""
    expected = element_count(shape)
    if datatype is Datatype.BYTES:
        return _decode_bytes_elements(raw, expected, where)
    itemsize = datatype.numpy_dtype.itemsize
    if len(raw) != expected * itemsize:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype.value} needs {expected * itemsize} byte(s), "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=datatype.numpy_dtype, count=expected)


def _decode_bytes_elements(raw: bytes | memoryview, expected: int, where: str) -> np.ndarray:
    """BYTES elements on the wire: each a 4-byte little-endian length, then that many bytes (UTF-8)."""
    buffer = bytes(raw)
    # Every element takes at least its 4-byte length: check before allocating, or a claimed shape of
    # billions of elements would allocate gigabytes for a request of a few bytes.
    if expected * 4 > len(buffer):
        raise InvalidInput(
            f"{where}: shape needs {expected} BYTES element(s), at least {expected * 4} byte(s), "
            f"but the tensor has {len(buffer)}"
        )
    out = np.empty(expected, dtype=object)
    position = 0
    for i in range(expected):
        if position + 4 > len(buffer):
            raise InvalidInput(f"{where}: the BYTES tensor ends before element {i} of {expected}")
        (length,) = struct.unpack_from("<I", buffer, position)
        position += 4
        if position + length > len(buffer):
            raise InvalidInput(f"{where}: element {i} claims {length} byte(s) past the end of the tensor")
        out[i] = utf8(buffer[position : position + length], where, i)
        position += length
    if position != len(buffer):
        raise InvalidInput(
            f"{where}: {len(buffer) - position} byte(s) left after {expected} BYTES element(s)"
        )
    return out


def utf8(value: bytes, where: str, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: element {index} is not valid UTF-8 text") from None


def cast_numbers(values: np.ndarray, datatype: Datatype, where: str) -> np.ndarray:
    """Numbers as ``datatype``: integers range-checked exactly (never through float64), floats checked
    to fit a narrower float. A float in an integer tensor is refused, whole or not."""
    target = datatype.numpy_dtype
    if datatype.is_integer:
        if values.size and values.dtype.kind not in "iu":
            raise InvalidInput(f"{where}: a {datatype.value} tensor holds integers, got {values.dtype.name}")
        if values.size:
            info = np.iinfo(target)
            # int() of numpy's min and max is exact for every int64 and uint64 value
            if int(values.min()) < info.min or int(values.max()) > info.max:
                outside = next(i for i, v in enumerate(values.tolist()) if not info.min <= v <= info.max)
                raise InvalidInput(
                    f"{where}: element {outside} ({values[outside]}) is out of the range of "
                    f"{datatype.value} ({info.min} to {info.max})"
                )
        return values.astype(target)
    if target.itemsize == 8:
        return values.astype(target)
    with np.errstate(over="ignore"):  # an overflow is found and named just below
        cast = values.astype(target)
    overflowed = np.isinf(cast) & np.isfinite(values.astype(np.float64))
    if overflowed.any():
        raise InvalidInput(
            f"{where}: element {int(np.argmax(overflowed))} is out of the range of {datatype.value}"
        )
    return cast


def encode_bytes_elements(values: np.ndarray) -> bytes:
    """BYTES on the wire: each element's 4-byte little-endian length, then its UTF-8 bytes."""
    parts = []
    for value in values.reshape(-1).tolist():
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def raw_tensor_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype is Datatype.BYTES:
        return encode_bytes_elements(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=tensor.datatype.numpy_dtype).tobytes()


__all__ = [
    "MAX_DIMENSIONS",
    "cast_numbers",
    "decode_raw_tensor",
    "element_count",
    "encode_bytes_elements",
    "parse_datatype",
    "parse_shape",
    "raw_tensor_bytes",
    "utf8",
]
