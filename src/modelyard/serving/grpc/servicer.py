"""The gRPC adapter: the Open Inference Protocol's GRPCInferenceService over the data plane.

The messages are ours, generated from ``open_inference.proto``; the service is registered through
grpc's public generic-handler API, so no generated servicer base class is needed. Each method decodes its
message (``codec.py``), calls the data plane, and encodes the typed answer. A failure is answered
through ``status.py``'s one map, as REST answers it: a client's mistake with its message and code
(InvalidInput -> INVALID_ARGUMENT, NotFound -> NOT_FOUND, NotReady -> UNAVAILABLE), a server fault as
INTERNAL "internal error" with the request id, the trace in the log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NoReturn

import grpc

from modelyard.errors import ClientGone
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.grpc import open_inference_pb2 as pb
from modelyard.serving.grpc.codec import (
    decode_grpc_request,
    encode_grpc_response,
    encode_model_metadata,
    encode_server_metadata,
)
from modelyard.serving.status import Failure, codes, failure
from modelyard.serving.types import resolve_request_id

REQUEST_ID_METADATA = "x-request-id"
SERVICE_NAME = "inference.GRPCInferenceService"


def status_code(answer: Failure) -> grpc.StatusCode:
    return grpc.StatusCode[answer.grpc_code]


def _details(answer: Failure) -> str:
    response = answer.response
    return response.error if response.request_id is None else f"{response.error} ({response.request_id})"


def _metadata_value(context: grpc.aio.ServicerContext[Any, Any], wanted: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == wanted:
            return str(value)
    return None


class InferenceServicer:
    """GRPCInferenceService over a modelyard DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def _abort(self, context: Any, exc: BaseException, request_id: str | None = None) -> NoReturn:
        answer = failure(exc, request_id)
        if answer.response.request_id is not None:
            await context.send_initial_metadata(((REQUEST_ID_METADATA, answer.response.request_id),))
        await context.abort(status_code(answer), _details(answer))
        raise AssertionError("context.abort() returned")  # it raises; this tells the type checker

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        return encode_server_metadata(self._dataplane.server_metadata())

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        try:
            readiness = self._dataplane.model_readiness(request.name, request.version or None)
        except Exception as exc:
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=readiness.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        try:
            metadata = self._dataplane.model_metadata(request.name, request.version or None)
        except Exception as exc:
            await self._abort(context, exc)
        return encode_model_metadata(metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 (proto names)
        started = time.perf_counter()
        name = request.model_name
        version = request.model_version or None
        request_id: str | None = None
        try:
            self._dataplane.ready_model(name, version)
            decoded = decode_grpc_request(request)
            request_id = resolve_request_id(
                decoded.id, _metadata_value(context, REQUEST_ID_METADATA), f"{REQUEST_ID_METADATA} metadata"
            )
            response = await self._dataplane.infer(
                name,
                decoded,
                request_id=request_id,
                version=version,
                decode_seconds=time.perf_counter() - started,
            )
            encoding = time.perf_counter()
            reply = encode_grpc_response(response)
            self._dataplane.observe_stage(
                "encode", time.perf_counter() - encoding, name, request_id=request_id, version=version
            )
        except asyncio.CancelledError:
            # The client cancelled or its deadline passed: counted as what REST counts as 499 (the
            # one map's gRPC code for it), in one INFO line, and the cancellation goes on.
            gone = ClientGone("the client cancelled the call, or its deadline passed")
            self._dataplane.observe_request(
                "v2-grpc", name, codes(gone)[1], request_id=request_id, version=version
            )
            failure(gone, request_id)  # logs it
            raise
        except Exception as exc:
            self._dataplane.observe_request(
                "v2-grpc", name, codes(exc)[1], request_id=request_id, version=version
            )
            await self._abort(context, exc, request_id)
        self._dataplane.observe_stage(
            "total", time.perf_counter() - started, name, request_id=request_id, version=version
        )
        self._dataplane.observe_request("v2-grpc", name, "OK", request_id=request_id, version=version)
        return reply


def rpc_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's methods, by their protocol names, with each one's message types."""
    methods: dict[str, tuple[Any, Any]] = {
        "ServerLive": (pb.ServerLiveRequest, servicer.ServerLive),
        "ServerReady": (pb.ServerReadyRequest, servicer.ServerReady),
        "ServerMetadata": (pb.ServerMetadataRequest, servicer.ServerMetadata),
        "ModelReady": (pb.ModelReadyRequest, servicer.ModelReady),
        "ModelMetadata": (pb.ModelMetadataRequest, servicer.ModelMetadata),
        "ModelInfer": (pb.ModelInferRequest, servicer.ModelInfer),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            name: grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )
            for name, (request_type, behaviour) in methods.items()
        },
    )


def add_servicer(server: grpc.aio.Server, dataplane: DataPlane) -> None:
    server.add_generic_rpc_handlers((rpc_handlers(InferenceServicer(dataplane)),))


__all__ = [
    "REQUEST_ID_METADATA",
    "SERVICE_NAME",
    "InferenceServicer",
    "add_servicer",
    "rpc_handlers",
    "status_code",
]
