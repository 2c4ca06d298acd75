"""gRPC adapter: the Open Inference Protocol's GRPCInferenceService over the data plane.

This servicer replaces kserve's. kserve 0.21's reports the server ready with a failed model, sends every
output whatever the request asked for, maps a not-ready model to UNKNOWN, and never checks readiness
before inferring. Here every error is the status of its ``modelyard.errors`` class (InvalidInput ->
INVALID_ARGUMENT, NotFound -> NOT_FOUND, NotReady -> UNAVAILABLE) with the same message REST gives.

Outputs are always sent as ``raw_output_contents`` (one per output, in order): tritonclient decodes
numeric outputs only from raw contents.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from modelyard import __version__
from modelyard.errors import InvalidInput, ModelyardError
from modelyard.serving.codec import (
    decode_bytes_contents,
    decode_numeric_contents,
    decode_raw_tensor,
    parse_datatype,
    parse_shape,
    raw_tensor_bytes,
)
from modelyard.serving.dataplane import DataPlane, check_request_id, new_request_id
from modelyard.serving.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
)

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}

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


def status_code(exc: ModelyardError) -> grpc.StatusCode:
    return _STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


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


def _metadata_request_id(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return check_request_id(str(value), "x-request-id metadata")
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """GRPCInferenceService over a modelyard DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def _abort(self, context: Any, exc: BaseException) -> None:
        if isinstance(exc, ModelyardError):
            await context.abort(status_code(exc), exc.message)
        log.exception("internal error while serving a gRPC request")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        document = self._dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=document["name"], version=__version__, extensions=document["extensions"]
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        try:
            model = self._dataplane.model(request.name, request.version or None)
        except ModelyardError as exc:
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=model.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        try:
            document = self._dataplane.model_metadata(request.name, request.version or None)
        except ModelyardError as exc:
            await self._abort(context, exc)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            inputs=[tensor(**entry) for entry in document["inputs"]],
            outputs=[tensor(**entry) for entry in document["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        started = time.perf_counter()
        name = request.model_name
        status = "OK"
        try:
            self._dataplane.ready_model(name, request.model_version or None)
            decoded = decode_grpc_request(request)
            request_id = _metadata_request_id(context)
            if request_id is None and decoded.id is not None:
                request_id = check_request_id(decoded.id, "request id")
            response = await self._dataplane.infer(
                name,
                decoded,
                request_id=request_id or new_request_id(),
                version=request.model_version or None,
                decode_seconds=time.perf_counter() - started,
            )
            encoding = time.perf_counter()
            reply = encode_grpc_response(response)
            self._dataplane.observe_stage("encode", time.perf_counter() - encoding)
        except Exception as exc:
            code = status_code(exc) if isinstance(exc, ModelyardError) else grpc.StatusCode.INTERNAL
            status = code.name
            self._dataplane.observe_request("v2-grpc", name, status)
            await self._abort(context, exc)
        self._dataplane.observe_stage("total", time.perf_counter() - started)
        self._dataplane.observe_request("v2-grpc", name, status)
        return reply


__all__ = ["InferenceServicer", "decode_grpc_request", "encode_grpc_response", "status_code"]
