"""Protocol types of the model server, free of any transport (REST, gRPC) and of kserve.

The REST and gRPC codecs turn bytes into these, the data plane takes and returns them, and
``features.py`` converts between them and the model's features. Tensors hold numpy arrays from the
start: nothing is turned into Python lists on the way in, and only JSON encoding turns them into text on
the way out. Metadata, feedback and errors are dataclasses too: each transport writes them in its own
wire format, and none of them is a loose dict.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np

from modelyard.errors import InvalidInput


class Datatype(StrEnum):
    """Tensor datatypes of the Open Inference Protocol (V2)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The little-endian numpy dtype of a fixed-size datatype; object for BYTES."""
        return _NUMPY_DTYPES[self]

    @property
    def is_numeric(self) -> bool:
        """Integers and floats (not BOOL, not BYTES): what a numeric feature accepts."""
        return self not in (Datatype.BOOL, Datatype.BYTES)

    @property
    def is_integer(self) -> bool:
        return self.value.startswith(("INT", "UINT"))


_NUMPY_DTYPES: dict[Datatype, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype("?"),
    Datatype.UINT8: np.dtype("<u1"),
    Datatype.UINT16: np.dtype("<u2"),
    Datatype.UINT32: np.dtype("<u4"),
    Datatype.UINT64: np.dtype("<u8"),
    Datatype.INT8: np.dtype("<i1"),
    Datatype.INT16: np.dtype("<i2"),
    Datatype.INT32: np.dtype("<i4"),
    Datatype.INT64: np.dtype("<i8"),
    Datatype.FP16: np.dtype("<f2"),
    Datatype.FP32: np.dtype("<f4"),
    Datatype.FP64: np.dtype("<f8"),
    Datatype.BYTES: np.dtype(object),
}


@dataclass(frozen=True)
class Tensor:
    """One named input or output tensor. BYTES data is an object array of ``bytes`` (or ``str``)."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` None means "use the request's default"."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferenceRequest:
    """A V2 inference request after transport decoding (REST JSON, REST binary, or gRPC)."""

    inputs: list[Tensor]
    id: str | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def labels_only(self) -> bool:
        """``"parameters": {"labels_only": true}`` asks for the ``label`` output alone."""
        return self.parameters.get("labels_only") is True

    @property
    def binary_data_output(self) -> bool:
        """The binary tensor extension's request-level default for outputs (REST only)."""
        return self.parameters.get("binary_data_output") is True


@dataclass(frozen=True)
class InferenceResponse:
    """A V2 inference response: tensors in the order they are to be sent."""

    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    binary: list[bool]
    """Per output: send it as raw bytes after the JSON header (REST binary extension)."""


@dataclass(frozen=True)
class TensorMetadata:
    """An input or output in model metadata; -1 marks a variable dimension."""

    name: str
    datatype: Datatype
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype.value, "shape": list(self.shape)}


@dataclass(frozen=True)
class ServerMetadata:
    """The Open Inference Protocol's server metadata."""

    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True)
class ModelParameters:
    """What a client needs beyond the protocol's metadata to build a request (only when ready)."""

    classes: list[str | int]
    features: list[tuple[str, str]]
    """(name, type) in column order; type is numeric, categorical or text."""
    algorithm: str
    runtime: str
    max_request_rows: int
    tensor_input: TensorMetadata | None
    """The other accepted input form of an all-numeric model: one [N, n_features] FP64 tensor."""


@dataclass(frozen=True)
class ModelMetadata:
    """The Open Inference Protocol's model metadata, with our parameters and, when not ready, why."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    ready: bool
    parameters: ModelParameters | None = None
    error: str | None = None


@dataclass(frozen=True)
class ModelReadiness:
    """Whether one model answers inference, and why not when it does not."""

    name: str
    ready: bool
    error: str | None = None


@dataclass(frozen=True)
class FeedbackRequest:
    """The true label of one row of a logged prediction."""

    request_id: str
    label: str | int
    row: int = 0


@dataclass(frozen=True)
class FeedbackResult:
    """Stored ground truth, with the prediction it grades."""

    model: str
    version: str
    request_id: str
    row: int
    label: str
    predicted_label: str
    correct: bool
    replaced: str | None
    """The label this feedback replaced, or None when it is the first for this prediction."""
    created_at: datetime


@dataclass(frozen=True)
class ErrorResponse:
    """What a failed request answers: a message for the client, and the request id when one was given
    or made (a 500 carries it so that the trace in the server's log can be found)."""

    error: str
    request_id: str | None = None


@dataclass(frozen=True)
class Prediction:
    """What the model answers for a batch of rows: one label and one probability row per input row."""

    labels: list[str | int]
    probabilities: np.ndarray
    """[rows, classes] float64, columns in the bundle's ``classes`` order."""
    label_names: np.ndarray
    """The labels as strings (an object array), as V2 answers them and the metrics count them. The model
    takes them from its class names, which costs far less than ``str()`` of each row on the event loop."""

    @classmethod
    def of(cls, labels: list[str | int], probabilities: np.ndarray) -> Prediction:
        """A prediction whose label strings are made here, one ``str()`` a row."""
        return cls(labels, probabilities, np.array([str(label) for label in labels], dtype=object))


MAX_REQUEST_ID_LENGTH = 128


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: the Unix time in milliseconds, then 74 random bits.

    Ids minted one after another sort together (within one millisecond, in no order), so the prediction
    log's unique index takes them at its right edge; random ids put each row on a random page of it,
    which every commit then writes whole. Made here because ``uuid.uuid7`` arrives with Python 3.14.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC's variant
    return f"{value:032x}"


def check_request_id(value: str, source: str) -> str:
    """A client's request id, refused (naming ``source``) unless it is 1 to 128 printable characters."""
    if not value or len(value) > MAX_REQUEST_ID_LENGTH or not value.isprintable():
        raise InvalidInput(
            f"the {source} must be 1 to {MAX_REQUEST_ID_LENGTH} printable characters, got {value[:40]!r}"
        )
    return value


def resolve_request_id(body_id: str | None, transport_id: str | None, transport_source: str) -> str:
    """The one id of a request: the one its response carries (``id`` and the ``x-request-id`` header or
    metadata), the prediction log stores and feedback names.

    The protocol's own field first (the V2 body's or message's ``id``, which the protocol says the
    response echoes), then the ``x-request-id`` header or metadata (``transport_source`` names it), then
    one minted here. Each is checked when it is the one used.
    """
    if body_id is not None:
        return check_request_id(body_id, "request 'id'")
    if transport_id is not None:
        return check_request_id(transport_id, transport_source)
    return new_request_id()


LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
OUTPUT_NAMES = (LABEL_OUTPUT, PROBABILITIES_OUTPUT)

SERVER_NAME = "modelyard"
BINARY_TENSOR_EXTENSION = "binary_tensor_data"
SERVER_EXTENSIONS = (BINARY_TENSOR_EXTENSION,)

__all__ = [
    "BINARY_TENSOR_EXTENSION",
    "LABEL_OUTPUT",
    "MAX_REQUEST_ID_LENGTH",
    "OUTPUT_NAMES",
    "PROBABILITIES_OUTPUT",
    "SERVER_EXTENSIONS",
    "SERVER_NAME",
    "Datatype",
    "ErrorResponse",
    "FeedbackRequest",
    "FeedbackResult",
    "InferenceRequest",
    "InferenceResponse",
    "ModelMetadata",
    "ModelParameters",
    "ModelReadiness",
    "Prediction",
    "RequestedOutput",
    "ServerMetadata",
    "Tensor",
    "TensorMetadata",
    "check_request_id",
    "new_request_id",
    "resolve_request_id",
]
