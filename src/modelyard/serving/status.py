"""One map from the error root (``modelyard.errors``) to what both transports answer.

Each ``ModelyardError`` carries its HTTP status; the gRPC code follows from it here, so REST and gRPC
answer the same failure the same way. A client's mistake (4xx) and a model that is not ready (503) answer
their message; a client that disconnected mid-request (``ClientGone``) is counted as 499 and logged in
one INFO line. Anything else is a fault of the server: the client gets ``internal error`` and the request
id, never the exception's text, and the trace goes to the log under that id. The health and metrics
routes, which the main port and the probe port both serve, are named here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from modelyard.errors import ClientGone, ModelyardError
from modelyard.serving.types import ErrorResponse

log = logging.getLogger("modelyard.serving")

INTERNAL_ERROR = "internal error"

LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"

GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
"""HTTP status -> the name of a ``grpc.StatusCode`` member (the gRPC adapter looks it up)."""


@dataclass(frozen=True)
class Failure:
    """How one failed request is answered, on either transport."""

    http_status: int
    grpc_code: str
    response: ErrorResponse


def client_facing(exc: BaseException) -> bool:
    """A client's mistake, or a model that is not ready: answered with the exception's own message."""
    return isinstance(exc, ModelyardError) and (exc.status_code < 500 or exc.status_code == 503)


def codes(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, gRPC code name) that ``exc`` is answered with."""
    status = exc.status_code if isinstance(exc, ModelyardError) and client_facing(exc) else 500
    return status, GRPC_CODES.get(status, "UNKNOWN")


def failure(exc: BaseException, request_id: str | None = None) -> Failure:
    """The answer to ``exc``. A server fault is logged here, with its trace and the request id."""
    status, code = codes(exc)
    if isinstance(exc, ClientGone):
        # the client's doing, and routine: one line, no trace
        log.info("request %s: %s", request_id or "(no id)", exc.message)
    if isinstance(exc, ModelyardError) and client_facing(exc):
        return Failure(status, code, ErrorResponse(exc.message))
    log.error("internal error serving request %s", request_id or "(no id)", exc_info=exc)
    return Failure(status, code, ErrorResponse(INTERNAL_ERROR, request_id))


__all__ = [
    "GRPC_CODES",
    "INTERNAL_ERROR",
    "LIVE_PATH",
    "METRICS_PATH",
    "READY_PATH",
    "Failure",
    "client_facing",
    "codes",
    "failure",
]
