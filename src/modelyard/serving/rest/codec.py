"""The REST wire codec: V2 JSON, the binary tensor extension, and V1, to and from the types of
``types.py``. orjson is the one JSON parser.

A V2 body is JSON, or, with the ``Inference-Header-Content-Length`` header (the binary tensor extension),
a JSON header followed by raw tensors. JSON has no NaN literal: a body holding ``NaN`` or ``Infinity`` is
malformed JSON; a missing value is ``null``. With the binary tensor extension an output is sent as raw
bytes after the JSON header when its ``parameters.binary_data`` is true, or else when the request's
``parameters.binary_data_output`` is. A V1 answer is ``{"predictions": [label, ...], "probabilities":
[[p, ...], ...]}``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson

from modelyard.errors import InvalidInput
from modelyard.serving.features import BooleanTokens, shown, value_kind
from modelyard.serving.types import (
    Datatype,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResult,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReadiness,
    Prediction,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorMetadata,
    check_request_id,
)
from modelyard.serving.wire import (
    cast_numbers,
    decode_raw_tensor,
    element_count,
    parse_datatype,
    parse_shape,
    raw_tensor_bytes,
)

INFERENCE_HEADER_CONTENT_LENGTH = "inference-header-content-length"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


# ---------------------------------------------------------------- V2: bytes -> InferenceRequest


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
        if not (header_length.isascii() and header_length.isdigit()):
            raise InvalidInput(
                "the Inference-Header-Content-Length header must be a decimal integer (digits only), "
                f"got {header_length[:40]!r}"
            )
        json_length = int(header_length)
        if not 0 < json_length <= len(body):
            raise InvalidInput(
                f"the Inference-Header-Content-Length header is {json_length}, "
                f"but the body has {len(body)} bytes"
            )
    header_bytes = body if json_length == len(body) else body[:json_length]
    header = _json_object(header_bytes, "request body")
    return _request_from_json(header, view, json_length, BooleanTokens(header_bytes))


def _json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"malformed JSON in the {what}: {exc} (a missing value is null; NaN and Infinity are not JSON)"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"the {what} must be a JSON object, got {value_kind(parsed)}")
    return parsed


def _request_from_json(
    header: dict[str, Any], body: memoryview, offset: int, boolean_tokens: BooleanTokens
) -> InferenceRequest:
    unknown_keys = sorted(set(header) - {"id", "inputs", "outputs", "parameters"})
    if unknown_keys:
        raise InvalidInput(
            f"unknown field(s) in the request: {shown(unknown_keys)} "
            "(expected id, inputs, outputs, parameters)"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {value_kind(request_id)}")
    parameters = header.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object, got {value_kind(parameters)}")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty array of tensors")
    inputs = []
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _tensor_from_json(raw, index, body, offset, boolean_tokens)
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
        raise InvalidInput(f"'outputs' must be an array, got {value_kind(raw)}")
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


def _tensor_from_json(
    raw: Any, index: int, body: memoryview, offset: int, boolean_tokens: BooleanTokens
) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{index}] must be an object, got {value_kind(raw)}")
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
    data = _decode_json_data(raw["data"], datatype, shape, where, boolean_tokens)
    return Tensor(name, datatype, shape, data), offset


def _decode_json_data(
    data: Any, datatype: Datatype, shape: tuple[int, ...], where: str, boolean_tokens: BooleanTokens
) -> np.ndarray:
    """A tensor's JSON ``data``, as strictly as the protocol reads: an array, flat (row-major) or nested
    exactly like ``shape``, whose every element is of the datatype's JSON type (numbers for numeric
    tensors and null for a missing float, true/false for BOOL, strings or null for BYTES).

    Plain values take one numpy call. numpy would read a boolean among numbers as 1 or 0, so numbers
    that ``boolean_tokens`` says may hide one are checked element by element, as is every other case.
    """
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be an array of the tensor's values, got {value_kind(data)}")
    expected = element_count(shape)
    fast_kinds = "b" if datatype is Datatype.BOOL else "iu" if datatype.is_integer else "iuf"
    if datatype is not Datatype.BYTES:
        try:
            array = np.asarray(data)
        except (ValueError, OverflowError):  # ragged, or an integer beyond 64 bits: checked below
            array = None
        if array is not None and array.dtype.kind in fast_kinds and array.size == expected:
            if array.shape != shape and array.ndim != 1:
                raise InvalidInput(
                    f"{where}: 'data' is nested as {list(array.shape)}, unlike the shape {list(shape)}; "
                    "send it flat (row-major) or nested exactly like the shape"
                )
            if datatype is Datatype.BOOL or not boolean_tokens.may_hide_boolean(array):
                return cast_numbers(array.reshape(-1), datatype, where)
    values = _json_elements(data, shape, expected, where)
    if datatype is Datatype.BYTES:
        return _bytes_from_json(values, where)
    if datatype is Datatype.BOOL:
        for i, value in enumerate(values):
            if not isinstance(value, bool):
                raise InvalidInput(
                    f"{where}: element {i} is {value_kind(value)}; a BOOL tensor holds true/false"
                )
        return np.array(values, dtype=bool)
    return _numbers_from_json(values, datatype, where)


def _json_elements(data: list[Any], shape: tuple[int, ...], expected: int, where: str) -> list[Any]:
    """The elements of ``data`` in row-major order: a flat array, or arrays nested exactly like ``shape``."""
    if not any(isinstance(value, list) for value in data):
        if len(data) != expected:
            raise InvalidInput(
                f"{where}: shape {list(shape)} needs {expected} value(s), but 'data' holds {len(data)}"
            )
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        inner: list[Any] = []
        for value in level:
            if not isinstance(value, list) or len(value) != size:
                found = f"{len(value)} value(s)" if isinstance(value, list) else value_kind(value)
                raise InvalidInput(
                    f"{where}: 'data' is a ragged nested array or nested unlike the shape {list(shape)}: "
                    f"at depth {depth} it has {found} where the shape needs an array of {size}"
                )
            inner.extend(value)
        level = inner
    if any(isinstance(value, list) for value in level):
        raise InvalidInput(
            f"{where}: 'data' is nested deeper than the shape {list(shape)} ({len(shape)} dimension(s))"
        )
    return level


_PLAIN_NUMBERS = frozenset({float, int, type(None)})


def _numbers_from_json(values: list[Any], datatype: Datatype, where: str) -> np.ndarray:
    floating = not datatype.is_integer
    # The common case in one vectorised pass: numbers and nulls only (no bool, which is an int to
    # isinstance but not to type()). Anything else, or an integer beyond float64, goes element by element
    # below, which names the element at fault.
    if floating and set(map(type, values)) <= _PLAIN_NUMBERS:
        try:
            return cast_numbers(np.asarray(values, dtype=np.float64), datatype, where)
        except OverflowError:
            pass
    out = np.empty(len(values), dtype=np.float64 if floating else object)
    for i, value in enumerate(values):
        if value is None:
            if not floating:
                raise InvalidInput(f"{where}: element {i} is null; only a floating-point tensor takes null")
            out[i] = math.nan
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}: element {i} is {value_kind(value)}, expected a number")
        elif not floating and not isinstance(value, int):
            # orjson reads an integer literal beyond 64 bits as a float, which may round onto the range's
            # end (-2**63 - 1 becomes -2.0**63): an integral float at or past either end is out of range
            info = np.iinfo(datatype.numpy_dtype)
            outside = value.is_integer() and not info.min < value < info.max
            problem = "is out of the range of" if outside else "is not an integer:"
            raise InvalidInput(f"{where}: element {i} ({value!r}) {problem} {datatype.value} tensor values")
        else:
            try:
                out[i] = value
            except OverflowError:
                raise InvalidInput(f"{where}: element {i} is out of the range of {datatype.value}") from None
    if floating:
        return cast_numbers(out, datatype, where)
    info = np.iinfo(datatype.numpy_dtype)
    for i, value in enumerate(values):
        if not info.min <= value <= info.max:  # exact: Python integers
            raise InvalidInput(
                f"{where}: element {i} ({value}) is out of the range of {datatype.value} "
                f"({info.min} to {info.max})"
            )
    return np.array(values, dtype=datatype.numpy_dtype)


def _bytes_from_json(values: list[Any], where: str) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{where}: element {i} is {value_kind(value)}; a BYTES tensor holds strings")
        out[i] = value
    return out


# ---------------------------------------------------------------- V1 and feedback: bytes -> requests


def decode_v1(body: bytes) -> list[Any]:
    """The ``instances`` of a V1 predict body."""
    request = _json_object(body, "request body")
    if "instances" not in request:
        raise InvalidInput("a V1 request needs 'instances': an array of rows")
    instances = request["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be an array of rows, got {value_kind(instances)}")
    return instances


# ---------------------------------------------------------------- responses -> bytes


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


def decode_feedback(body: bytes) -> FeedbackRequest:
    """``{"request_id": ..., "label": ..., "row": 0}``; the label is checked against the classes later."""
    document = _json_object(body, "request body")
    unknown = sorted(set(document) - {"request_id", "label", "row"})
    if unknown:
        raise InvalidInput(f"unknown field(s) in the feedback: {', '.join(unknown)}")
    request_id = document.get("request_id")
    if not isinstance(request_id, str):
        raise InvalidInput("feedback needs 'request_id': the id of the request that was predicted")
    check_request_id(request_id, "request_id")
    if "label" not in document:
        raise InvalidInput("feedback needs 'label': the true class of the row")
    label = document["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise InvalidInput(f"'label' must be a string or an integer, got {label!r}")
    row = document.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        raise InvalidInput(f"'row' must be a non-negative integer (the row within the request), got {row!r}")
    return FeedbackRequest(request_id, label, row)


def _tensor_metadata(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype.value, "shape": list(tensor.shape)}


def encode_server_metadata(metadata: ServerMetadata) -> bytes:
    return orjson.dumps(asdict(metadata))


def model_metadata_document(metadata: ModelMetadata) -> dict[str, Any]:
    """Open Inference Protocol model metadata, plus ``parameters`` and, when not ready, ``error``."""
    parameters: dict[str, Any] = {"ready": metadata.ready}
    extra = metadata.parameters
    if extra is not None:
        parameters.update(
            {
                "classes": list(extra.classes),
                "features": [{"name": name, "type": kind} for name, kind in extra.features],
                "algorithm": extra.algorithm,
                "runtime": extra.runtime,
                "max_request_rows": extra.max_request_rows,
            }
        )
        if extra.tensor_input is not None:
            parameters["tensor_input"] = {
                "datatype": extra.tensor_input.datatype.value,
                "shape": list(extra.tensor_input.shape),
            }
    document: dict[str, Any] = {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [_tensor_metadata(tensor) for tensor in metadata.inputs],
        "outputs": [_tensor_metadata(tensor) for tensor in metadata.outputs],
        "parameters": parameters,
    }
    if metadata.error is not None:
        document["error"] = metadata.error
    return document


def encode_model_metadata(metadata: ModelMetadata) -> bytes:
    return orjson.dumps(model_metadata_document(metadata))


def encode_readiness(readiness: ModelReadiness) -> bytes:
    document: dict[str, Any] = {"name": readiness.name, "ready": readiness.ready}
    if readiness.error is not None:
        document["error"] = readiness.error
    return orjson.dumps(document)


def encode_feedback(result: FeedbackResult) -> bytes:
    return orjson.dumps(asdict(result))


def encode_error(error: ErrorResponse) -> bytes:
    if error.request_id is None:
        return orjson.dumps({"error": error.error})
    return orjson.dumps({"error": error.error, "request_id": error.request_id})


__all__ = [
    "INFERENCE_HEADER_CONTENT_LENGTH",
    "decode_feedback",
    "decode_v1",
    "decode_v2_rest",
    "encode_error",
    "encode_feedback",
    "encode_json",
    "encode_model_metadata",
    "encode_readiness",
    "encode_server_metadata",
    "encode_v1",
    "encode_v2_rest",
    "model_metadata_document",
]
