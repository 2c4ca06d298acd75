"""REST adapter: V1 and V2 (Open Inference Protocol) routes over the data plane.

The routes are plain Starlette routes added to kserve's FastAPI app before kserve adds its own, so they
take precedence (the first matching route wins). They read the raw body themselves, which is what lets
them accept a JSON body without Content-Type (tritonclient sends none) and the binary tensor extension,
and answer every error as ``{"error": "..."}`` with the status of the ``modelyard.errors`` class.

Every inference and feedback response carries ``x-request-id``: the client's, or a generated one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelyard.errors import InvalidInput, ModelyardError
from modelyard.serving.codec import (
    INFERENCE_HEADER_CONTENT_LENGTH,
    decode_v1,
    decode_v2_rest,
    encode_json,
    encode_v1,
    encode_v2_rest,
    error_body,
)
from modelyard.serving.dataplane import DataPlane, check_request_id, new_request_id

log = logging.getLogger(__name__)

JSON = "application/json"
REQUEST_ID_HEADER = "x-request-id"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"

Endpoint = Callable[[Request], Awaitable[Response]]


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode_json(document), status_code=status, media_type=JSON, headers=headers)


def _error(exc: BaseException, headers: dict[str, str] | None = None) -> Response:
    if isinstance(exc, ModelyardError):
        status, message = exc.status_code, exc.message
    else:
        log.exception("internal error while serving a request")
        status, message = 500, f"internal error: {type(exc).__name__}: {exc}"
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)


def _header_request_id(request: Request) -> str | None:
    value = request.headers.get(REQUEST_ID_HEADER)
    return None if value is None else check_request_id(value, f"{REQUEST_ID_HEADER} header")


class RestRoutes:
    """The endpoints, bound to one data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    # ------------------------------------------------------------ health and metadata

    async def server_metadata(self, request: Request) -> Response:
        return _json(self.dataplane.server_metadata())

    # No await in these two: fastpath.py runs them to completion inside uvicorn's parser callback.
    async def server_live(self, request: Request) -> Response:
        return _json({"live": self.dataplane.live()})

    async def server_ready(self, request: Request) -> Response:
        ready = self.dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        params = request.path_params
        try:
            return _json(self.dataplane.model_metadata(params["name"], params.get("version")))
        except ModelyardError as exc:
            return _error(exc)

    async def model_ready(self, request: Request) -> Response:
        params = request.path_params
        try:
            model = self.dataplane.model(params["name"], params.get("version"))
        except ModelyardError as exc:
            return _error(exc)
        document: dict[str, Any] = {"name": model.name, "ready": model.ready}
        if model.load_error is not None:
            document["error"] = model.load_error
        return _json(document, 200 if model.ready else 503)

    async def v1_models(self, request: Request) -> Response:
        return _json({"models": sorted(self.dataplane.models)})

    async def metrics(self, request: Request) -> Response:
        metrics = self.dataplane.metrics
        if metrics is None:
            return Response(b"", status_code=404)
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    # ------------------------------------------------------------ inference

    async def v2_infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name: str = request.path_params["name"]
        version: str | None = request.path_params.get("version")
        headers: dict[str, str] = {}
        status = 200
        try:
            request_id = _header_request_id(request)
            self.dataplane.ready_model(name, version)  # 404/503 before reading the body
            body = await request.body()
            decoded = decode_v2_rest(body, request.headers.get(INFERENCE_HEADER_CONTENT_LENGTH))
            if request_id is None and decoded.id is not None:
                request_id = check_request_id(decoded.id, "request 'id'")
            request_id = request_id or new_request_id()
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
            self.dataplane.observe_stage("encode", time.perf_counter() - encoding)
            if json_length is None:
                result = Response(content, media_type=JSON, headers=headers)
            else:
                headers[INFERENCE_HEADER_CONTENT_LENGTH] = str(json_length)
                result = Response(content, media_type="application/octet-stream", headers=headers)
        except Exception as exc:
            result = _error(exc, headers)
            status = result.status_code
        self.dataplane.observe_stage("total", time.perf_counter() - started)
        self.dataplane.observe_request("v2-rest", name, status)
        return result

    async def v1_predict(self, request: Request) -> Response:
        started = time.perf_counter()
        name: str = request.path_params["name"]
        headers: dict[str, str] = {}
        status = 200
        try:
            request_id = _header_request_id(request) or new_request_id()
            headers[REQUEST_ID_HEADER] = request_id
            self.dataplane.ready_model(name)
            body = await request.body()
            instances = decode_v1(body)
            prediction = await self.dataplane.predict_v1(
                name,
                instances,
                request_id=request_id,
                decode_seconds=time.perf_counter() - started,
                may_hold_booleans=b"true" in body or b"false" in body,
            )
            encoding = time.perf_counter()
            result = Response(encode_v1(prediction), media_type=JSON, headers=headers)
            self.dataplane.observe_stage("encode", time.perf_counter() - encoding)
        except Exception as exc:
            result = _error(exc, headers)
            status = result.status_code
        self.dataplane.observe_stage("total", time.perf_counter() - started)
        self.dataplane.observe_request("v1", name, status)
        return result

    async def v1_feedback(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        try:
            body = await request.body()
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON in the request body: {exc}") from None
            return _json(await self.dataplane.feedback(name, document))
        except Exception as exc:
            return _error(exc)

    async def not_supported(self, request: Request) -> Response:
        """Routes kserve would otherwise answer with a model this server does not manage that way."""
        path = request.url.path
        if path.endswith(":explain"):
            message = "explanations are not supported by this server"
        else:
            message = "the model repository extension is not supported: this server serves one bundle"
        return Response(error_body(message), status_code=501, media_type=JSON)

    # ------------------------------------------------------------ wiring

    def probes(self) -> dict[str, Endpoint]:
        """The server's health probes (GET) by path: fastpath.py answers them ahead of queued work."""
        return {LIVE_PATH: self.server_live, READY_PATH: self.server_ready}

    def inference_routes(self) -> list[tuple[str, Endpoint]]:
        """(path, endpoint) of the POST routes that carry the load: fastpath.py calls them directly,
        without FastAPI's middleware and router (each of these endpoints answers its own errors)."""
        hot = (self.v2_infer, self.v1_predict)
        return [(path, endpoint) for path, endpoint, methods in self.routes() if endpoint in hot]

    def routes(self) -> list[tuple[str, Endpoint, list[str]]]:
        """(path, endpoint, methods), in matching order."""
        v2_model = "/v2/models/{name}"
        v2_version = "/v2/models/{name}/versions/{version}"
        return [
            ("/v2", self.server_metadata, ["GET"]),
            (LIVE_PATH, self.server_live, ["GET"]),
            (READY_PATH, self.server_ready, ["GET"]),
            (v2_model, self.model_metadata, ["GET"]),
            (v2_version, self.model_metadata, ["GET"]),
            (f"{v2_model}/ready", self.model_ready, ["GET"]),
            (f"{v2_version}/ready", self.model_ready, ["GET"]),
            (f"{v2_model}/infer", self.v2_infer, ["POST"]),
            (f"{v2_version}/infer", self.v2_infer, ["POST"]),
            ("/v1/models", self.v1_models, ["GET"]),
            ("/v1/models/{name}:predict", self.v1_predict, ["POST"]),
            ("/v1/models/{name}/feedback", self.v1_feedback, ["POST"]),
            ("/v1/models/{name}", self.model_ready, ["GET"]),
            ("/metrics", self.metrics, ["GET"]),
            ("/v1/models/{name}:explain", self.not_supported, ["POST"]),
            ("/v2/repository/models/{name}/load", self.not_supported, ["POST"]),
            ("/v2/repository/models/{name}/unload", self.not_supported, ["POST"]),
            ("/v2/repository/index", self.not_supported, ["POST"]),
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer ``{"error": ...}`` too, like every other error here."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    message = f"{detail}: {request.method} {request.url.path}"
    return Response(
        error_body(message), status_code=status, media_type=JSON, headers=getattr(exc, "headers", None)
    )


def install_routes(app: Any, dataplane: DataPlane) -> RestRoutes:
    """Add the routes to a Starlette/FastAPI ``app``, ahead of any route added later (kserve's)."""
    from starlette.exceptions import HTTPException

    routes = RestRoutes(dataplane)
    for path, endpoint, methods in routes.routes():
        app.add_route(path, endpoint, methods=methods, include_in_schema=False)
    app.add_exception_handler(HTTPException, _http_error)
    return routes


__all__ = ["REQUEST_ID_HEADER", "RestRoutes", "install_routes"]
