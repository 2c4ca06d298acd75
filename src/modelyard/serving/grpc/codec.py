"""The gRPC wire codec: the Open Inference Protocol's protobuf messages (``open_inference.proto``) to and
from the types of ``types.py``.

A request's tensors come in typed ``contents`` or, for every input at once, in ``raw_input_contents``
(wrapped without copying). Outputs are always sent as ``raw_output_contents``, one per output in order:
tritonclient decodes numeric outputs only from raw contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import InvalidInput
from modelyard.serving.grpc import open_inference_pb2 as pb
from modelyard.serving.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorMetadata,
)
from modelyard.serving.wire import (
    cast_numbers,
    decode_raw_tensor,
    element_count,
    parse_datatype,
    parse_shape,
    raw_tensor_bytes,
    utf8,
)

# The typed ``contents`` field that holds each datatype (when raw_input_contents is not used).
_CONTENTS_FIELD = {
    Datatype.BOOL: "bool_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
    Datatype.BYTES: "bytes_contents",
}


def _parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def decode_grpc_request(request: Any) -> InferenceRequest:
    """A ``ModelInferRequest`` as an InferenceRequest; raw contents are wrapped without copying."""
    raw_contents = list(request.raw_input_contents)
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidInput(
            f"the request has {len(request.inputs)} input(s) but {len(raw_contents)} raw_input_contents: "
            "send raw contents for every input or for none"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{index}] needs a name")
        where = f"input {name!r}"
        datatype = parse_datatype(tensor.datatype, where)
        shape = parse_shape(list(tensor.shape), where)
        if raw_contents:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where} has both contents and raw_input_contents; send one")
            data = decode_raw_tensor(datatype, shape, raw_contents[index], where)
        elif datatype is Datatype.FP16:
            raise InvalidInput(f"{where}: FP16 has no typed contents field; send it in raw_input_contents")
        else:
            values = getattr(tensor.contents, _CONTENTS_FIELD[datatype])
            if datatype is Datatype.BYTES:
                data = decode_bytes_contents(list(values), shape, where)
            else:
                data = decode_numeric_contents(list(values), datatype, shape, where)
        inputs.append(Tensor(name, datatype, shape, data))
    parameters = {key: _parameter_value(value) for key, value in request.parameters.items()}
    outputs = [RequestedOutput(output.name) for output in request.outputs]
    return InferenceRequest(inputs=inputs, id=request.id or None, outputs=outputs, parameters=parameters)


def decode_bytes_contents(values: Sequence[bytes], shape: tuple[int, ...], where: str) -> np.ndarray:
    """gRPC ``contents.bytes_contents``: a list of byte strings."""
    expected = element_count(shape)
    if len(values) != expected:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {expected} value(s), got {len(values)}")
    out = np.empty(expected, dtype=object)
    for i, value in enumerate(values):
        out[i] = utf8(value, where, i)
    return out


def decode_numeric_contents(
    values: Sequence[Any], datatype: Datatype, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """gRPC typed ``contents`` (fp64_contents, int_contents, ...)."""
    expected = element_count(shape)
    if len(values) != expected:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {expected} value(s), got {len(values)}")
    if datatype is Datatype.BOOL:
        return np.asarray(values, dtype=bool)
    # Each contents field has one protobuf type: read it in a numpy type that holds every value exactly
    # (uint64 for the unsigned fields, int64 for the signed ones), then range-check against the datatype.
    kind = datatype.numpy_dtype.kind
    wide = np.float64 if kind == "f" else np.uint64 if kind == "u" else np.int64
    return cast_numbers(np.asarray(values, dtype=wide), datatype, where)


def encode_grpc_response(response: InferenceResponse) -> Any:
    outputs = [
        pb.ModelInferResponse.InferOutputTensor(
            name=tensor.name, datatype=tensor.datatype.value, shape=list(tensor.shape)
        )
        for tensor in response.outputs
    ]
    return pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=outputs,
        raw_output_contents=[raw_tensor_bytes(tensor) for tensor in response.outputs],
    )


def encode_server_metadata(metadata: ServerMetadata) -> Any:
    return pb.ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=list(metadata.extensions)
    )


def _tensor_metadata(tensor: TensorMetadata) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype.value, shape=list(tensor.shape)
    )


def encode_model_metadata(metadata: ModelMetadata) -> Any:
    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=[_tensor_metadata(tensor) for tensor in metadata.inputs],
        outputs=[_tensor_metadata(tensor) for tensor in metadata.outputs],
    )


__all__ = [
    "decode_bytes_contents",
    "decode_grpc_request",
    "decode_numeric_contents",
    "encode_grpc_response",
    "encode_model_metadata",
    "encode_server_metadata",
]
