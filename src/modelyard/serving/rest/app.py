"""The REST adapter: V1 and V2 (Open Inference Protocol) routes over the data plane, as a Starlette app.

Every route is a plain Starlette route of one app, so middleware added to the app (tracing, auth, CORS)
sees every request, inference included. The endpoints read the raw body themselves: that is what lets
them take a JSON body without Content-Type (tritonclient sends none) and the binary tensor extension.
Each is a few lines: decode (``codec.py``), call the data plane, encode the typed answer. Every failure
is answered through ``status.py``'s one map as ``{"error": "..."}``, and a server fault as ``{"error":
"internal error", "request_id": ...}`` with the trace in the log.

Every inference response carries ``x-request-id``: the request's one id (``types.resolve_request_id``),
the same the V2 body's ``id`` answers and the prediction log stores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.errors import ClientGone, RequestTimeout, TooLarge
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.features import BooleanTokens
from modelyard.serving.rest.codec import (
    INFERENCE_HEADER_CONTENT_LENGTH,
    decode_feedback,
    decode_v1,
    decode_v2_rest,
    encode_error,
    encode_feedback,
    encode_json,
    encode_model_metadata,
    encode_readiness,
    encode_server_metadata,
    encode_v1,
    encode_v2_rest,
)
from modelyard.serving.status import LIVE_PATH, METRICS_PATH, READY_PATH, failure
from modelyard.serving.types import ErrorResponse, check_request_id, resolve_request_id
from modelyard.settings import ServingSettings

JSON = "application/json"
REQUEST_ID_HEADER = "x-request-id"

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(content: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(content, status_code=status, media_type=JSON, headers=headers)


def error_response(
    exc: BaseException, request_id: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    answer = failure(exc, request_id)
    return json_response(encode_error(answer.response), answer.http_status, headers)


def _answers_errors(endpoint: Endpoint) -> Endpoint:
    """Answer whatever ``endpoint`` raises through the one error map."""

    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return error_response(exc)

    return answered


_LIMITS = ServingSettings.model_fields


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body, at most ``max_bytes`` of it, within ``timeout_s``.

    A declared Content-Length over the limit is refused before a byte of the body is read; a body sent
    without one (chunked) is refused as soon as it passes the limit. The probes and other requests never
    wait behind an oversized body.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(
            f"the request body is {declared} bytes, more than the limit of {max_bytes} "
            "(MODELYARD_SERVING__MAX_REQUEST_BYTES)"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(
                        f"the request body is more than the limit of {max_bytes} bytes "
                        "(MODELYARD_SERVING__MAX_REQUEST_BYTES)"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s (MODELYARD_SERVING__BODY_TIMEOUT_S)"
        ) from None
    except ClientDisconnect:
        raise ClientGone(f"the client disconnected after {size} byte(s) of the body") from None
    return b"".join(chunks)


class RestEndpoints:
    """The endpoints, bound to one data plane."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        max_request_bytes: int = _LIMITS["max_request_bytes"].default,
        body_timeout_s: float = _LIMITS["body_timeout_s"].default,
    ) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s

    async def body(self, request: Request) -> bytes:
        return await read_body(request, self.max_request_bytes, self.body_timeout_s)

    # ------------------------------------------------------------ health, metadata, metrics

    async def server_live(self, request: Request) -> Response:
        return json_response(b'{"live":true}' if self.dataplane.live() else b'{"live":false}')

    async def server_ready(self, request: Request) -> Response:
        if self.dataplane.ready():
            return json_response(b'{"ready":true}')
        return json_response(b'{"ready":false}', 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(encode_server_metadata(self.dataplane.server_metadata()))

    async def model_metadata(self, request: Request) -> Response:
        params = request.path_params
        metadata = self.dataplane.model_metadata(params["name"], params.get("version"))
        return json_response(encode_model_metadata(metadata))

    async def model_ready(self, request: Request) -> Response:
        params = request.path_params
        readiness = self.dataplane.model_readiness(params["name"], params.get("version"))
        return json_response(encode_readiness(readiness), 200 if readiness.ready else 503)

    async def v1_models(self, request: Request) -> Response:
        return json_response(encode_json({"models": sorted(self.dataplane.models)}))

    async def metrics(self, request: Request) -> Response:
        metrics = self.dataplane.metrics
        if metrics is None:
            return json_response(encode_error(ErrorResponse("metrics are off")), 404)
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    # ------------------------------------------------------------ inference and feedback

    async def v2_infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name: str = request.path_params["name"]
        version: str | None = request.path_params.get("version")
        headers: dict[str, str] = {}
        request_id: str | None = None
        header_id = request.headers.get(REQUEST_ID_HEADER)
        try:
            if header_id is not None:  # until the body is read: an error before then still carries it
                request_id = check_request_id(header_id, f"{REQUEST_ID_HEADER} header")
                headers[REQUEST_ID_HEADER] = request_id
            self.dataplane.ready_model(name, version)  # 404/503 before reading the body
            body = await self.body(request)
            decoded = decode_v2_rest(body, request.headers.get(INFERENCE_HEADER_CONTENT_LENGTH))
            request_id = resolve_request_id(decoded.id, header_id, f"{REQUEST_ID_HEADER} header")
            headers[REQUEST_ID_HEADER] = request_id
            response = await self.dataplane.infer(
                name,
                decoded,
                request_id=request_id,
                version=version,
                decode_seconds=time.perf_counter() - started,
            )
            encoding = time.perf_counter()
            content, json_length = encode_v2_rest(response)
            self.dataplane.observe_stage(
                "encode", time.perf_counter() - encoding, name, request_id=request_id, version=version
            )
            if json_length is None:
                result = json_response(content, headers=headers)
            else:
                headers[INFERENCE_HEADER_CONTENT_LENGTH] = str(json_length)
                result = Response(content, media_type="application/octet-stream", headers=headers)
        except Exception as exc:
            result = error_response(exc, request_id, headers)
        seconds = time.perf_counter() - started
        self.dataplane.observe_stage("total", seconds, name, request_id=request_id, version=version)
        self.dataplane.observe_request(
            "v2-rest", name, result.status_code, request_id=request_id, version=version
        )
        return result

    async def v1_predict(self, request: Request) -> Response:
        started = time.perf_counter()
        name: str = request.path_params["name"]
        headers: dict[str, str] = {}
        request_id: str | None = None
        try:
            request_id = resolve_request_id(
                None, request.headers.get(REQUEST_ID_HEADER), f"{REQUEST_ID_HEADER} header"
            )
            headers[REQUEST_ID_HEADER] = request_id
            self.dataplane.ready_model(name)
            body = await self.body(request)
            prediction = await self.dataplane.predict_v1(
                name,
                decode_v1(body),
                request_id=request_id,
                decode_seconds=time.perf_counter() - started,
                boolean_tokens=BooleanTokens(body),
            )
            encoding = time.perf_counter()
            result = json_response(encode_v1(prediction), headers=headers)
            self.dataplane.observe_stage(
                "encode", time.perf_counter() - encoding, name, request_id=request_id
            )
        except Exception as exc:
            result = error_response(exc, request_id, headers)
        self.dataplane.observe_stage("total", time.perf_counter() - started, name, request_id=request_id)
        self.dataplane.observe_request("v1", name, result.status_code, request_id=request_id)
        return result

    async def v1_feedback(self, request: Request) -> Response:
        feedback = decode_feedback(await self.body(request))
        result = await self.dataplane.feedback(request.path_params["name"], feedback)
        return json_response(encode_feedback(result))

    async def not_supported(self, request: Request) -> Response:
        """Routes of the protocol that this server does not offer."""
        if request.url.path.endswith(":explain"):
            message = "explanations are not supported by this server"
        else:
            message = "the model repository extension is not supported: this server serves one bundle"
        return json_response(encode_error(ErrorResponse(message)), 501)

    # ------------------------------------------------------------ wiring

    def routes(self) -> list[Route]:
        """The routes in matching order: inference first, as it carries the load."""
        v2_model = "/v2/models/{name}"
        v2_version = "/v2/models/{name}/versions/{version}"
        table: list[tuple[str, Endpoint, list[str]]] = [
            (f"{v2_model}/infer", self.v2_infer, ["POST"]),
            ("/v1/models/{name}:predict", self.v1_predict, ["POST"]),
            (f"{v2_version}/infer", self.v2_infer, ["POST"]),
            (LIVE_PATH, self.server_live, ["GET"]),
            (READY_PATH, self.server_ready, ["GET"]),
            ("/v2", self.server_metadata, ["GET"]),
            (v2_model, self.model_metadata, ["GET"]),
            (v2_version, self.model_metadata, ["GET"]),
            (f"{v2_model}/ready", self.model_ready, ["GET"]),
            (f"{v2_version}/ready", self.model_ready, ["GET"]),
            ("/v1/models", self.v1_models, ["GET"]),
            ("/v1/models/{name}/feedback", self.v1_feedback, ["POST"]),
            ("/v1/models/{name}", self.model_ready, ["GET"]),
            (METRICS_PATH, self.metrics, ["GET"]),
            ("/v1/models/{name}:explain", self.not_supported, ["POST"]),
            ("/v2/repository/models/{name}/load", self.not_supported, ["POST"]),
            ("/v2/repository/models/{name}/unload", self.not_supported, ["POST"]),
            ("/v2/repository/index", self.not_supported, ["POST"]),
        ]
        hot = (self.v2_infer, self.v1_predict)  # these answer their own errors, with the request id
        return [
            Route(path, endpoint if endpoint in hot else _answers_errors(endpoint), methods=methods)
            for path, endpoint, methods in table
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer ``{"error": ...}`` too, like every other error here."""
    assert isinstance(exc, HTTPException)
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return json_response(encode_error(ErrorResponse(message)), exc.status_code, exc.headers)


def build_app(
    dataplane: DataPlane,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[Any]] | None = None,
    *,
    max_request_bytes: int = _LIMITS["max_request_bytes"].default,
    body_timeout_s: float = _LIMITS["body_timeout_s"].default,
) -> Starlette:
    """The REST app of one data plane; ``lifespan`` runs the server's start-up and shutdown."""
    endpoints = RestEndpoints(dataplane, max_request_bytes=max_request_bytes, body_timeout_s=body_timeout_s)
    return Starlette(
        routes=endpoints.routes(),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


__all__ = ["REQUEST_ID_HEADER", "RestEndpoints", "build_app"]
