"""Protocol codecs: request bytes -> typed tensors -> model features, and predictions -> response bytes.

Every client mistake raises ``InvalidInput`` (HTTP 400, gRPC INVALID_ARGUMENT) with a message naming the
tensor, feature, row or field at fault. Nothing here knows about a transport's objects (FastAPI, grpc):
the adapters hand in bytes and header values.

**Inputs** (V2). A request carries either

- one input per feature, named like the feature, shape ``[N]`` or ``[N, 1]``: numeric features take any
  integer or float datatype; categorical features take BYTES (or BOOL / integers / floats, turned into
  strings as training does: ``1`` becomes ``"1"``); text features take BYTES; or
- one numeric tensor of shape ``[N, n_features]`` (any name, e.g. ``input-0``), columns in the model's
  feature order. Only for models whose features are all numeric: a model with categorical or text
  features takes one input per feature.

**Missing values and non-finite numbers.** A numeric feature may be missing: JSON ``null`` or a NaN in a
binary tensor, since the training pipeline imputes it (the median). Infinity is refused. A missing
categorical or text value is JSON ``null`` (imputed, or the empty text). JSON has no NaN literal: a body
holding ``NaN`` or ``Infinity`` is malformed JSON.

**Outputs**. ``label`` (BYTES ``[N]``, the class names) and ``probabilities`` (FP64 ``[N, n_classes]``,
columns in the order of the model's classes, listed in its metadata). ``"parameters": {"labels_only":
true}`` returns ``label`` alone; ``outputs`` selects outputs explicitly (and then takes precedence).
With the binary tensor extension an output is sent as raw bytes after the JSON header when its
``parameters.binary_data`` is true, or else when the request's ``parameters.binary_data_output`` is.

**V1** ``{"instances": [...]}``: each instance is a list of values in feature order, or an object keyed by
feature name. The answer is ``{"predictions": [label, ...], "probabilities": [[p, ...], ...]}``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from modelyard.bundle import BundleMetadata
from modelyard.errors import InvalidInput
from modelyard.serving.types import (
    LABEL_OUTPUT,
    OUTPUT_NAMES,
    PROBABILITIES_OUTPUT,
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Prediction,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)
from modelyard.spec import FeatureType

INFERENCE_HEADER_CONTENT_LENGTH = "inference-header-content-length"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_MAX_SHOWN = 5


# ---------------------------------------------------------------- the model's schema


class FeatureSchema:
    """The input schema of one bundle: feature names and types, in column order, and its classes."""

    def __init__(self, metadata: BundleMetadata) -> None:
        self.names: list[str] = metadata.feature_names
        self.types: dict[str, FeatureType] = {f.name: f.type for f in metadata.features}
        self.numeric_names = [n for n in self.names if self.types[n] is FeatureType.NUMERIC]
        self.numeric_index = {name: i for i, name in enumerate(self.numeric_names)}
        self.all_numeric = len(self.numeric_names) == len(self.names)
        self.classes: list[str | int] = list(metadata.classes)
        self.class_names: list[str] = [str(c) for c in self.classes]

    def input_metadata(self) -> list[TensorMetadata]:
        """One input per feature: FP64 for numeric features, BYTES for categorical and text ones."""
        return [
            TensorMetadata(name, Datatype.FP64 if kind is FeatureType.NUMERIC else Datatype.BYTES, [-1])
            for name, kind in self.types.items()
        ]

    def output_metadata(self) -> list[TensorMetadata]:
        return [
            TensorMetadata(LABEL_OUTPUT, Datatype.BYTES, [-1]),
            TensorMetadata(PROBABILITIES_OUTPUT, Datatype.FP64, [-1, len(self.classes)]),
        ]


# ---------------------------------------------------------------- features, ready for the model


@dataclass(frozen=True)
class FeatureBatch:
    """Rows of features: numeric ones as one float64 matrix, the others as object columns of str/None.

    Concatenating batches and building the model's DataFrame are cheap on this layout, and both happen
    once per micro-batch in the prediction thread, not once per request on the event loop.
    """

    n_rows: int
    numeric: np.ndarray
    """[n_rows, len(schema.numeric_names)] float64, NaN where missing."""
    other: dict[str, np.ndarray]
    """categorical and text features: object arrays [n_rows] of str, None where missing."""

    @staticmethod
    def concat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
        if len(batches) == 1:
            return batches[0]
        numeric = np.concatenate([b.numeric for b in batches])
        other = {name: np.concatenate([b.other[name] for b in batches]) for name in batches[0].other}
        return FeatureBatch(sum(b.n_rows for b in batches), numeric, other)

    def to_frame(self, schema: FeatureSchema) -> Any:
        """The pandas DataFrame the runtime takes: columns exactly ``schema.names``, in order."""
        import pandas as pd

        if schema.all_numeric:
            return pd.DataFrame(self.numeric, columns=schema.names, copy=False)
        columns: dict[str, np.ndarray] = {}
        for name in schema.names:
            index = schema.numeric_index.get(name)
            columns[name] = self.numeric[:, index] if index is not None else self.other[name]
        return pd.DataFrame(columns, copy=False)

    def row(self, schema: FeatureSchema, index: int) -> dict[str, Any]:
        """One row as plain JSON values (NaN becomes None), for the prediction log."""
        values: dict[str, Any] = {}
        for name in schema.names:
            column = schema.numeric_index.get(name)
            if column is None:
                values[name] = self.other[name][index]
            else:
                number = float(self.numeric[index, column])
                values[name] = None if math.isnan(number) else number
        return values


def _check_rows(n_rows: int, max_rows: int) -> None:
    if n_rows == 0:
        raise InvalidInput("the batch is empty: send at least one row")
    if n_rows > max_rows:
        raise InvalidInput(f"the batch has {n_rows} rows, more than the maximum of {max_rows} per request")


def _shown(names: Sequence[str]) -> str:
    listed = ", ".join(repr(n) for n in names[:_MAX_SHOWN])
    return listed + (f" and {len(names) - _MAX_SHOWN} more" if len(names) > _MAX_SHOWN else "")


def _check_finite(values: np.ndarray, feature: str) -> None:
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.argmax(infinite))
        raise InvalidInput(
            f"feature {feature!r} row {row}: infinity is not allowed "
            "(a missing value is null, or NaN in a binary tensor)"
        )


# ---------------------------------------------------------------- V2: tensors -> features


def features_from_tensors(inputs: Sequence[Tensor], schema: FeatureSchema, max_rows: int) -> FeatureBatch:
    """Check the request's tensors against the schema and turn them into a FeatureBatch."""
    if not inputs:
        raise InvalidInput("the request has no inputs")
    by_name: dict[str, Tensor] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidInput(f"input {tensor.name!r} is given more than once")
        by_name[tensor.name] = tensor
    if len(inputs) == 1 and inputs[0].name not in schema.types:
        return _features_from_matrix(inputs[0], schema, max_rows)
    unknown = [name for name in by_name if name not in schema.types]
    missing = [name for name in schema.names if name not in by_name]
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing feature(s): {_shown(missing)}")
        if unknown:
            problems.append(f"unknown input(s): {_shown(unknown)}")
        raise InvalidInput(
            "; ".join(problems)
            + f". The model takes one input per feature ({_shown(schema.names)})"
            + (" or one [N, n_features] numeric tensor" if schema.all_numeric else "")
        )
    n_rows: int | None = None
    for name in schema.names:
        tensor = by_name[name]
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInput(
                f"input {name!r} has shape {list(tensor.shape)}: a per-feature input has shape [N] or [N, 1]"
            )
        if n_rows is None:
            n_rows = tensor.shape[0]
        elif tensor.shape[0] != n_rows:
            raise InvalidInput(
                f"input {name!r} has {tensor.shape[0]} rows but {schema.names[0]!r} has {n_rows}: "
                "every input must have the same number of rows"
            )
    assert n_rows is not None
    _check_rows(n_rows, max_rows)
    numeric = np.empty((n_rows, len(schema.numeric_names)), dtype=np.float64)
    other: dict[str, np.ndarray] = {}
    for name in schema.names:
        tensor = by_name[name]
        kind = schema.types[name]
        if kind is FeatureType.NUMERIC:
            numeric[:, schema.numeric_index[name]] = _numeric_column(tensor, name)
        else:
            other[name] = _string_column(tensor, name, kind)
    return FeatureBatch(n_rows, numeric, other)


def _features_from_matrix(tensor: Tensor, schema: FeatureSchema, max_rows: int) -> FeatureBatch:
    if not schema.all_numeric:
        non_numeric = [n for n in schema.names if schema.types[n] is not FeatureType.NUMERIC]
        raise InvalidInput(
            f"unknown input {tensor.name!r}: this model has non-numeric features ({_shown(non_numeric)}), "
            f"so it takes one input per feature, named {_shown(schema.names)}"
        )
    n_features = len(schema.names)
    if len(tensor.shape) != 2 or tensor.shape[1] != n_features:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {list(tensor.shape)}, expected [N, {n_features}]: "
            f"one column per feature ({_shown(schema.names)}), or one input per feature named like it"
        )
    if not tensor.datatype.is_numeric:
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype.value}; "
            "expected a numeric one (FP64, FP32, FP16, INT* or UINT*)"
        )
    _check_rows(tensor.shape[0], max_rows)
    matrix = np.ascontiguousarray(tensor.data.reshape(tensor.shape), dtype=np.float64)
    if np.isinf(matrix).any():
        for column, name in enumerate(schema.names):
            _check_finite(matrix[:, column], name)
    return FeatureBatch(tensor.shape[0], matrix, {})


def _numeric_column(tensor: Tensor, name: str) -> np.ndarray:
    if not tensor.datatype.is_numeric:
        raise InvalidInput(
            f"input {name!r} has datatype {tensor.datatype.value}, but feature {name!r} is numeric: "
            "send FP64, FP32, FP16, INT* or UINT*"
        )
    column = tensor.data.reshape(-1).astype(np.float64, copy=False)
    _check_finite(column, name)
    return column


def _string_column(tensor: Tensor, name: str, kind: FeatureType) -> np.ndarray:
    data = tensor.data.reshape(-1)
    if tensor.datatype is Datatype.BYTES:
        return data  # already str or None (decoded from UTF-8 by the transport codec)
    if kind is FeatureType.TEXT:
        raise InvalidInput(
            f"input {name!r} has datatype {tensor.datatype.value}, but feature {name!r} is text: send BYTES"
        )
    # A categorical feature sent as numbers: categories compare as strings, as in training (1 -> "1").
    column = np.empty(len(data), dtype=object)
    for i, value in enumerate(data.tolist()):
        column[i] = None if isinstance(value, float) and math.isnan(value) else str(value)
    return column


# ---------------------------------------------------------------- V2 REST: bytes -> InferenceRequest


def _json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"malformed JSON in the {what}: {exc} (a missing value is null; NaN and Infinity are not JSON)"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"the {what} must be a JSON object, got {_json_type(parsed)}")
    return parsed


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def decode_v2_rest(body: bytes, header_length: str | None) -> InferenceRequest:
    """Decode a V2 REST infer body: JSON, or a JSON header followed by binary tensors.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (the binary tensor extension);
    without it the whole body is JSON. The Content-Type is deliberately not looked at: tritonclient
    sends none.
    """
    view = memoryview(body)
    if header_length is None:
        json_length = len(body)
    else:
        try:
            json_length = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"the Inference-Header-Content-Length header must be an integer, got {header_length!r}"
            ) from None
        if not 0 < json_length <= len(body):
            raise InvalidInput(
                f"the Inference-Header-Content-Length header is {json_length}, "
                f"but the body has {len(body)} bytes"
            )
    header = _request_document(body, json_length)
    return _request_from_json(header, view, json_length)


_UTF8_BOM = b"\xef\xbb\xbf"
FAST_PARSE_MIN_BYTES = 4096  # the break-even against orjson: about 8 rows of 20 floats
_MOST_BRACKETS = 64  # a flat request holds about two per input
_FLOAT_DATATYPES = frozenset({Datatype.FP16.value, Datatype.FP32.value, Datatype.FP64.value})


def _request_document(body: bytes, json_length: int) -> dict[str, Any]:
    """The request's JSON (the first ``json_length`` bytes of ``body``), with each input's flat
    floating-point ``data`` already a float64 array.

    A 256 x 20 FP64 body costs orjson about 100 µs, and making an array of its Python floats 60 µs more,
    all on the event loop; simdjson parses it and fills the array in about 80 µs. Whatever the fast path
    does not take (malformed JSON, nested or mixed ``data``, integer tensors, duplicate keys) goes through
    orjson, which owns every error message.

    simdjson's buffer flattens nested arrays, ragged ones included, so a ``data`` taken this way must be
    flat. That is checked by counting: the body may hold no ``[`` besides the arrays the parse accounts
    for, one per float buffer among them.
    """
    raw = memoryview(body)[:json_length]
    # Small bodies: the fast path's fixed cost (about 10 µs) is more than orjson's whole parse. A byte
    # order mark: simdjson skips it; orjson, and so this server, refuses it. Many "[": nested rows most
    # likely, which the fast path would parse only to hand them to orjson.
    if json_length >= FAST_PARSE_MIN_BYTES and not body.startswith(_UTF8_BOM):
        in_body = _count_brackets(body, json_length, at_most=_MOST_BRACKETS)
        if in_body <= _MOST_BRACKETS:
            try:
                document, brackets = _walk_object(simdjson.Parser().parse(raw), _take_inputs)
            except (ValueError, TypeError, RuntimeError, _NotFast):  # simdjson's errors, and ours
                pass
            else:
                if brackets == in_body:
                    return document
    return _json_object(raw, "request body")


class _NotFast(Exception):
    """The fast path cannot take this body exactly as orjson's path would: let orjson parse it."""


def _count_brackets(body: bytes, end: int, at_most: int) -> int:
    """The ``[`` in ``body[:end]``, counted up to one past ``at_most`` (find() is a memchr: a few µs)."""
    count, at = 0, body.find(b"[", 0, end)
    while at != -1 and count <= at_most:
        count += 1
        at = body.find(b"[", at + 1, end)
    return count


Taken = tuple[Any, int]  # a converted value and the number of ``[`` in its JSON text


def _walk_object(
    parsed: Any, take: Callable[[str, Any, dict[str, Any]], Taken | None]
) -> tuple[dict[str, Any], int]:
    """A simdjson object as a dict, each member converted by ``take`` or, when it declines, unboxed."""
    members = _members(parsed)
    converted: dict[str, Any] = {}
    brackets = 0
    for key, value in members.items():
        taken = take(key, value, members)
        if taken is None:
            plain = _unboxed(value)
            taken = plain, _brackets_in(plain)
        converted[key] = taken[0]
        brackets += taken[1]
    return converted, brackets


def _take_inputs(key: str, value: Any, members: dict[str, Any]) -> Taken | None:
    if key != "inputs" or not isinstance(value, simdjson.Array):
        return None
    inputs = [_walk_object(item, _take_float_data) for item in value]
    return [tensor for tensor, _ in inputs], 1 + sum(brackets for _, brackets in inputs)


def _take_float_data(key: str, value: Any, members: dict[str, Any]) -> Taken | None:
    if key != "data" or not isinstance(value, simdjson.Array):
        return None
    datatype = members.get("datatype")
    if datatype not in _FLOAT_DATATYPES:
        return None
    if len(value) and isinstance(value[0], simdjson.Array):
        raise _NotFast  # nested rows: orjson's path checks them against the shape, sooner than a buffer
    values = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    if datatype != Datatype.FP64.value and values.size and np.abs(values).max() >= 2.0**53:
        # an integer this large may not be a float64: orjson's path rounds it once, to the datatype
        raise _NotFast
    return values, 1  # one "[" if flat, which the count over the whole body checks


def _members(parsed: Any) -> dict[str, Any]:
    """An object's members as simdjson values. Not for a non-object, a repeated key (orjson's path keeps
    the last, simdjson's lookup the first) or a key holding ``[`` (see _brackets_in)."""
    if not isinstance(parsed, simdjson.Object):
        raise _NotFast
    keys = list(parsed.keys())
    if len(set(keys)) != len(keys) or any("[" in key for key in keys):
        raise _NotFast
    return {key: parsed[key] for key in keys}


def _unboxed(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _brackets_in(value: Any) -> int:
    """The ``[`` in the JSON text of a parsed value: one per array. Not when a string holds one: the text
    may spell it ``\\u005b``, and the count would not be exact."""
    if isinstance(value, str):
        if "[" in value:
            raise _NotFast
        return 0
    if isinstance(value, list):
        return 1 + sum(_brackets_in(item) for item in value)
    if isinstance(value, dict):
        return sum(_brackets_in(key) + _brackets_in(item) for key, item in value.items())
    return 0


def _request_from_json(header: dict[str, Any], body: memoryview, offset: int) -> InferenceRequest:
    unknown_keys = sorted(set(header) - {"id", "inputs", "outputs", "parameters"})
    if unknown_keys:
        raise InvalidInput(
            f"unknown field(s) in the request: {_shown(unknown_keys)} "
            "(expected id, inputs, outputs, parameters)"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_json_type(request_id)}")
    parameters = header.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object, got {_json_type(parameters)}")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty array of tensors")
    inputs = []
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _tensor_from_json(raw, index, body, offset)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(
            f"the body has {len(body) - offset} byte(s) after the last binary tensor; "
            "check each input's parameters.binary_data_size"
        )
    outputs = _requested_outputs(header.get("outputs"))
    return InferenceRequest(inputs=inputs, id=request_id, outputs=outputs, parameters=parameters)


def _requested_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"'outputs' must be an array, got {_json_type(raw)}")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"outputs[{index}].parameters must be an object")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"outputs[{index}].parameters.binary_data must be true or false")
        outputs.append(RequestedOutput(item["name"], binary))
    return outputs


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
    return tuple(int(d) for d in value)


def _tensor_from_json(raw: Any, index: int, body: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{index}] must be an object, got {_json_type(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] needs a non-empty string 'name'")
    where = f"input {name!r}"
    datatype = parse_datatype(raw.get("datatype"), where)
    shape = parse_shape(raw.get("shape"), where)
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise InvalidInput(f"{where} has both 'data' and parameters.binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where}: parameters.binary_data_size must be a non-negative integer")
        if offset + size > len(body):
            raise InvalidInput(
                f"{where}: binary_data_size {size} goes past the end of the body "
                f"({len(body) - offset} byte(s) left after the JSON header and earlier tensors)"
            )
        data = decode_raw_tensor(datatype, shape, body[offset : offset + size], where)
        return Tensor(name, datatype, shape, data), offset + size
    if "data" not in raw:
        raise InvalidInput(f"{where} has no 'data' (nor parameters.binary_data_size)")
    return Tensor(name, datatype, shape, _decode_json_data(raw["data"], datatype, shape, where)), offset


def _element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _decode_json_data(data: Any, datatype: Datatype, shape: tuple[int, ...], where: str) -> np.ndarray:
    if isinstance(data, np.ndarray):  # flat float64 values from the fast parse
        array = data
    else:
        if not isinstance(data, list):
            data = [data]
        try:
            # BYTES as objects: numpy would otherwise turn a stray number into a string silently
            array = np.asarray(data, dtype=object if datatype is Datatype.BYTES else None)
        except ValueError:
            raise InvalidInput(f"{where}: 'data' is a ragged nested array; it must match the shape") from None
    expected = _element_count(shape)
    if array.size != expected:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {expected} value(s), but 'data' holds {array.size}"
        )
    flat = array.reshape(-1)
    if datatype is Datatype.BYTES:
        return _bytes_from_json(flat, where)
    kind = flat.dtype.kind
    if kind == "O":  # nulls, nested objects or integers beyond 64 bits: look at each value
        return _numbers_from_objects(flat, datatype, where)
    if datatype is Datatype.BOOL:
        if kind != "b" and expected:
            raise InvalidInput(f"{where}: a BOOL tensor holds true/false, got {flat.dtype.name} values")
        return flat.astype(bool)
    if kind not in "biuf" and expected:
        raise InvalidInput(f"{where}: a {datatype.value} tensor holds numbers, got strings")
    if kind == "b" and expected:
        raise InvalidInput(f"{where}: a {datatype.value} tensor holds numbers, got true/false")
    return _cast_numbers(flat, datatype, where)


def _cast_numbers(values: np.ndarray, datatype: Datatype, where: str) -> np.ndarray:
    target = datatype.numpy_dtype
    if datatype.is_integer:
        fractional = values.dtype.kind == "f" and not (
            np.all(np.isfinite(values)) and np.all(values == np.round(values))
        )
        if fractional:
            raise InvalidInput(f"{where}: a {datatype.value} tensor holds integers, got fractions")
        info = np.iinfo(target)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise InvalidInput(f"{where}: a value is out of the range of {datatype.value}")
    return values.astype(target)


def _numbers_from_objects(values: np.ndarray, datatype: Datatype, where: str) -> np.ndarray:
    floating = datatype in (Datatype.FP16, Datatype.FP32, Datatype.FP64)
    out = np.empty(len(values), dtype=np.float64 if floating else object)
    for i, value in enumerate(values.tolist()):
        if value is None:
            if not floating:
                raise InvalidInput(f"{where}: element {i} is null; only a floating-point tensor takes null")
            out[i] = math.nan
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}: element {i} is {_json_type(value)}, expected a number")
        else:
            try:
                out[i] = value
            except OverflowError:
                raise InvalidInput(f"{where}: element {i} is out of the range of {datatype.value}") from None
    if floating:
        return out.astype(datatype.numpy_dtype)
    try:
        return _cast_numbers(np.asarray(out.tolist()), datatype, where)
    except OverflowError:
        raise InvalidInput(f"{where}: a value is out of the range of {datatype.value}") from None


def _bytes_from_json(values: np.ndarray, where: str) -> np.ndarray:
    if values.dtype.kind == "U":
        return values.astype(object)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values.tolist()):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{where}: element {i} is {_json_type(value)}; a BYTES tensor holds strings")
        out[i] = value
    return out


def decode_raw_tensor(
    datatype: Datatype, shape: tuple[int, ...], raw: bytes | memoryview, where: str
) -> np.ndarray:
    """A tensor sent as raw bytes (REST binary extension, gRPC raw_input_contents), without copying."""
    expected = _element_count(shape)
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
        out[i] = _utf8(buffer[position : position + length], where, i)
        position += length
    if position != len(buffer):
        raise InvalidInput(
            f"{where}: {len(buffer) - position} byte(s) left after {expected} BYTES element(s)"
        )
    return out


def _utf8(value: bytes, where: str, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: element {index} is not valid UTF-8 text") from None


def decode_bytes_contents(values: Sequence[bytes], shape: tuple[int, ...], where: str) -> np.ndarray:
    """gRPC ``contents.bytes_contents``: a list of byte strings."""
    expected = _element_count(shape)
    if len(values) != expected:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {expected} value(s), got {len(values)}")
    out = np.empty(expected, dtype=object)
    for i, value in enumerate(values):
        out[i] = _utf8(value, where, i)
    return out


def decode_numeric_contents(
    values: Sequence[Any], datatype: Datatype, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """gRPC typed ``contents`` (fp64_contents, int_contents, ...)."""
    expected = _element_count(shape)
    if len(values) != expected:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {expected} value(s), got {len(values)}")
    array = np.asarray(values, dtype=np.float64 if datatype.numpy_dtype.kind == "f" else None)
    if datatype is Datatype.BOOL:
        return array.astype(bool)
    return _cast_numbers(array, datatype, where) if array.size else array.astype(datatype.numpy_dtype)


# ---------------------------------------------------------------- V1: bytes -> features


def decode_v1(body: bytes) -> list[Any]:
    """The ``instances`` of a V1 predict body."""
    request = _json_object(body, "request body")
    if "instances" not in request:
        raise InvalidInput("a V1 request needs 'instances': an array of rows")
    instances = request["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be an array of rows, got {_json_type(instances)}")
    return instances


def features_from_instances(
    instances: list[Any], schema: FeatureSchema, max_rows: int, *, may_hold_booleans: bool = True
) -> FeatureBatch:
    """V1 rows (lists in feature order, or objects keyed by feature name) as a FeatureBatch.

    Rows of plain numbers for an all-numeric model take one numpy call. numpy would read a boolean
    among numbers as 1 or 0, so that path is only taken when ``may_hold_booleans`` is false: the REST
    adapter knows that when the body has no ``true``/``false`` token at all.
    """
    n_rows = len(instances)
    _check_rows(n_rows, max_rows)
    if schema.all_numeric and not may_hold_booleans and isinstance(instances[0], list):
        fast = _numeric_rows_fast(instances, len(schema.names))
        if fast is not None:
            for column, name in enumerate(schema.names):
                _check_finite(fast[:, column], name)
            return FeatureBatch(n_rows, fast, {})
    numeric = np.empty((n_rows, len(schema.numeric_names)), dtype=np.float64)
    other = {
        name: np.empty(n_rows, dtype=object) for name in schema.names if name not in schema.numeric_index
    }
    for row, instance in enumerate(instances):
        values = _instance_values(instance, row, schema)
        for name, value in zip(schema.names, values, strict=True):
            position = schema.numeric_index.get(name)
            if position is not None:
                numeric[row, position] = _v1_number(value, name, row)
            else:
                other[name][row] = _v1_string(value, name, row, schema.types[name])
    return FeatureBatch(n_rows, numeric, other)


def _numeric_rows_fast(instances: list[Any], n_features: int) -> np.ndarray | None:
    """All rows plain numbers of the right length: one numpy call; else None (checked row by row)."""
    try:
        matrix = np.asarray(instances)
    except ValueError:
        return None
    if matrix.ndim != 2 or matrix.shape[1] != n_features or matrix.dtype.kind not in "iuf":
        return None
    return np.ascontiguousarray(matrix, dtype=np.float64)


def _instance_values(instance: Any, row: int, schema: FeatureSchema) -> list[Any]:
    if isinstance(instance, list):
        if len(instance) != len(schema.names):
            raise InvalidInput(
                f"instance {row} has {len(instance)} value(s), expected {len(schema.names)}: "
                f"one per feature, in the order {_shown(schema.names)}"
            )
        return instance
    if isinstance(instance, dict):
        missing = [name for name in schema.names if name not in instance]
        unknown = [str(key) for key in instance if key not in schema.types]
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing feature(s): {_shown(missing)}")
            if unknown:
                problems.append(f"unknown feature(s): {_shown(unknown)}")
            raise InvalidInput(f"instance {row}: " + "; ".join(problems))
        return [instance[name] for name in schema.names]
    raise InvalidInput(
        f"instance {row} is {_json_type(instance)}: each instance is an array of values in feature order "
        "or an object keyed by feature name"
    )


def _v1_number(value: Any, name: str, row: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(
            f"instance {row}: feature {name!r} is numeric, got {_json_type(value)} {_short(value)}"
        )
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInput(f"instance {row}: feature {name!r}: {_short(value)} is out of range") from None
    if math.isinf(number):
        raise InvalidInput(f"feature {name!r} row {row}: infinity is not allowed")
    return number


def _v1_string(value: Any, name: str, row: int, kind: FeatureType) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if kind is FeatureType.CATEGORICAL and isinstance(value, int | float):
        return str(value)  # categories compare as strings, as in training
    expected = "a string" if kind is FeatureType.TEXT else "a string or a number"
    raise InvalidInput(
        f"instance {row}: feature {name!r} is {kind.value}, expected {expected}, got {_json_type(value)}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- predictions -> responses


def select_outputs(request: InferenceRequest) -> list[RequestedOutput]:
    """The outputs to send, in order: those requested, else label (+ probabilities unless labels_only)."""
    labels_only = request.parameters.get("labels_only", False)
    if not isinstance(labels_only, bool):
        raise InvalidInput("parameters.labels_only must be true or false")
    if not request.outputs:
        names = [LABEL_OUTPUT] if labels_only else list(OUTPUT_NAMES)
        return [RequestedOutput(name) for name in names]
    seen: set[str] = set()
    for output in request.outputs:
        if output.name not in OUTPUT_NAMES:
            raise InvalidInput(
                f"unknown output {output.name!r}: this model has {', '.join(repr(n) for n in OUTPUT_NAMES)}"
            )
        if output.name in seen:
            raise InvalidInput(f"output {output.name!r} is requested more than once")
        seen.add(output.name)
    return list(request.outputs)


def output_tensors(
    prediction: Prediction, schema: FeatureSchema, outputs: Sequence[RequestedOutput]
) -> list[Tensor]:
    tensors = []
    for output in outputs:
        if output.name == LABEL_OUTPUT:
            labels = prediction.label_names
            tensors.append(Tensor(LABEL_OUTPUT, Datatype.BYTES, (len(labels),), labels))
        else:
            proba = prediction.probabilities
            tensors.append(Tensor(PROBABILITIES_OUTPUT, Datatype.FP64, tuple(proba.shape), proba))
    return tensors


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


def encode_v2_rest(response: InferenceResponse) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it (else None)."""
    outputs: list[dict[str, Any]] = []
    binaries: list[bytes] = []
    for tensor, binary in zip(response.outputs, response.binary, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype.value,
            "shape": list(tensor.shape),
        }
        if binary:
            raw = raw_tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        elif tensor.datatype is Datatype.BYTES:
            entry["data"] = tensor.data.reshape(-1).tolist()
        else:
            entry["data"] = tensor.data.reshape(-1)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        document["model_version"] = response.model_version
    document["id"] = response.id
    document["outputs"] = outputs
    header = orjson.dumps(document, option=_JSON_OPTIONS)
    if not binaries:
        return header, None
    return header + b"".join(binaries), len(header)


def encode_v1(prediction: Prediction) -> bytes:
    return orjson.dumps(
        {"predictions": prediction.labels, "probabilities": prediction.probabilities}, option=_JSON_OPTIONS
    )


def encode_json(document: Any) -> bytes:
    return orjson.dumps(document, option=_JSON_OPTIONS)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


__all__ = [
    "INFERENCE_HEADER_CONTENT_LENGTH",
    "FeatureBatch",
    "FeatureSchema",
    "decode_bytes_contents",
    "decode_numeric_contents",
    "decode_raw_tensor",
    "decode_v1",
    "decode_v2_rest",
    "encode_json",
    "encode_v1",
    "encode_v2_rest",
    "error_body",
    "features_from_instances",
    "features_from_tensors",
    "output_tensors",
    "parse_datatype",
    "parse_shape",
    "raw_tensor_bytes",
    "select_outputs",
]
