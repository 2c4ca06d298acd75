"""The data plane: health, metadata, inference and feedback, independent of REST and gRPC.

The transport adapters (``rest.py``, ``grpc.py``) decode bytes into the types of ``types.py``, call these
methods, and encode what they return. Errors are ``modelyard.errors`` exceptions, each carrying its
status: InvalidInput (400), NotFound (404), NotReady (503). A client's mistake is never a 500: input is
checked before it is queued for the model, and a model that refuses a request's values (for instance a
NaN the model cannot impute) answers that request with a 400 naming the model's complaint.

After a prediction the metrics and the prediction log are fed in a callback scheduled on the event loop,
not while the caller waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from modelyard import __version__
from modelyard.errors import InvalidInput, ModelyardError, NotFound, NotReady
from modelyard.serving.batching import BatchOutcome
from modelyard.serving.codec import (
    FeatureBatch,
    features_from_instances,
    features_from_tensors,
    output_tensors,
    select_outputs,
)
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.model import ServedModel
from modelyard.serving.prediction_log import PredictionLog, PredictionRecord
from modelyard.serving.types import (
    SERVER_EXTENSIONS,
    SERVER_NAME,
    InferenceRequest,
    InferenceResponse,
    Prediction,
)

log = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 128

FeedbackStore = Callable[..., Any]
"""``record_feedback`` bound to the registry database: (model=, request_id=, label=, row=) -> Any."""


def new_request_id() -> str:
    return uuid.uuid4().hex


def check_request_id(value: str, source: str) -> str:
    if not value or len(value) > MAX_REQUEST_ID_LENGTH or not value.isprintable():
        raise InvalidInput(
            f"the {source} must be 1 to {MAX_REQUEST_ID_LENGTH} printable characters, got {value[:40]!r}"
        )
    return value


class DataPlane:
    """The models this server serves, and what can be asked of them."""

    def __init__(
        self,
        *,
        max_request_rows: int,
        metrics: ServingMetrics | None = None,
        prediction_log: PredictionLog | None = None,
        feedback_store: FeedbackStore | None = None,
    ) -> None:
        self.max_request_rows = max_request_rows
        self.metrics = metrics
        self.prediction_log = prediction_log
        self._feedback_store = feedback_store
        self._models: dict[str, ServedModel] = {}

    # ------------------------------------------------------------ models

    def add_model(self, model: ServedModel) -> None:
        self._models[model.name] = model
        self.publish_model_info(model)

    def publish_model_info(self, model: ServedModel) -> None:
        if self.metrics is not None:
            algorithm = model.metadata.algorithm if model.metadata is not None else ""
            self.metrics.set_model_info(model.name, model.version, algorithm, model.runtime_kind, model.ready)
            if self.metrics.drift is not None and model.metadata is not None:
                reference = model.metadata.reference_stats
                self.metrics.drift.attach(model.name, model.version, reference, model.schema.numeric_names)

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return self._models

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The model served as ``name`` (and ``version`` when given), ready or not; NotFound otherwise."""
        model = self._models.get(name)
        if model is None:
            served = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not served here (served: {served})")
        if version is not None and version != model.version:
            serving = f"version {model.version!r}" if model.version else "an unversioned bundle"
            raise NotFound(f"model {name!r} has no version {version!r} here: this server serves {serving}")
        return model

    def ready_model(self, name: str, version: str | None = None) -> ServedModel:
        model = self.model(name, version)
        if not model.ready:
            raise model.not_ready()
        return model

    # ------------------------------------------------------------ health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return bool(self._models) and all(model.ready for model in self._models.values())

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(SERVER_EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Open Inference Protocol model metadata, plus ``parameters`` and, when not ready, ``error``."""
        model = self.model(name, version)
        document: dict[str, Any] = {
            "name": model.name,
            "versions": [model.version] if model.version else [],
            "platform": model.platform,
            "inputs": [tensor.to_dict() for tensor in model.input_metadata()],
            "outputs": [tensor.to_dict() for tensor in model.output_metadata()],
        }
        parameters: dict[str, Any] = {"ready": model.ready}
        if model.metadata is not None and model.ready:
            metadata = model.metadata
            schema = model.schema
            parameters.update(
                {
                    "classes": list(metadata.classes),
                    "features": [{"name": f.name, "type": f.type.value} for f in metadata.features],
                    "algorithm": metadata.algorithm,
                    "runtime": model.runtime_kind,
                    "max_request_rows": self.max_request_rows,
                }
            )
            if schema.all_numeric:
                # the other accepted input form: one [N, n_features] tensor, columns in feature order
                parameters["tensor_input"] = {"datatype": "FP64", "shape": [-1, len(schema.names)]}
        document["parameters"] = parameters
        if model.load_error is not None:
            document["error"] = model.load_error
        return document

    # ------------------------------------------------------------ inference

    async def infer(
        self,
        name: str,
        request: InferenceRequest,
        *,
        request_id: str,
        version: str | None = None,
        decode_seconds: float = 0.0,
    ) -> InferenceResponse:
        """V2 inference (REST or gRPC)."""
        started = time.perf_counter()
        model = self.ready_model(name, version)
        outputs = select_outputs(request)
        batch = features_from_tensors(request.inputs, model.schema, self.max_request_rows)
        self._observe("decode", decode_seconds + time.perf_counter() - started)
        prediction = await self._predict(model, batch, request_id, started)
        tensors = output_tensors(prediction, model.schema, outputs)
        default_binary = request.binary_data_output
        binary = [default_binary if output.binary is None else output.binary for output in outputs]
        return InferenceResponse(model.name, model.version, request.id or request_id, tensors, binary)

    async def predict_v1(
        self,
        name: str,
        instances: list[Any],
        *,
        request_id: str,
        decode_seconds: float = 0.0,
        may_hold_booleans: bool = True,
    ) -> Prediction:
        """V1 predict: rows as lists (feature order) or objects keyed by feature name."""
        started = time.perf_counter()
        model = self.ready_model(name)
        batch = features_from_instances(
            instances, model.schema, self.max_request_rows, may_hold_booleans=may_hold_booleans
        )
        self._observe("decode", decode_seconds + time.perf_counter() - started)
        return await self._predict(model, batch, request_id, started)

    async def _predict(
        self, model: ServedModel, batch: FeatureBatch, request_id: str, started: float
    ) -> Prediction:
        try:
            outcome = await model.predict(batch)
        except ModelyardError:
            raise
        except (ValueError, TypeError) as exc:
            # The batcher retried this request alone: the model refused this request's own values.
            raise InvalidInput(f"the model could not score this input: {exc}") from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        asyncio.get_running_loop().call_soon(
            self._after_prediction, model, batch, outcome, request_id, latency_ms, datetime.now(UTC)
        )
        return outcome.prediction

    def _after_prediction(
        self,
        model: ServedModel,
        batch: FeatureBatch,
        outcome: BatchOutcome,
        request_id: str,
        latency_ms: float,
        created_at: datetime,
    ) -> None:
        """Metrics and prediction log, once the caller has its answer. Never raises."""
        try:
            prediction = outcome.prediction
            if self.metrics is not None:
                self.metrics.observe_stage("queue", outcome.queue_seconds)
                self.metrics.observe_stage("predict", outcome.predict_seconds)
                self.metrics.observe_predictions(
                    model.name,
                    model.version,
                    prediction.label_names,
                    prediction.probabilities.max(axis=1),
                )
                if self.metrics.drift is not None:
                    probabilities = prediction.probabilities
                    self.metrics.drift.observe(model.name, batch.numeric, batch.other, probabilities)
            if self.prediction_log is not None:
                self.prediction_log.submit(
                    prediction_records(model, batch, prediction, request_id, latency_ms, created_at)
                )
        except Exception:
            log.exception("could not record the prediction of request %s", request_id)

    def _observe(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_stage(stage, seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """For the transports: their encode and total times."""
        self._observe(stage, seconds)

    def observe_request(self, protocol: str, name: str, status: int | str) -> None:
        """Count a finished request. The model label is only ever a served model's name."""
        if self.metrics is None:
            return
        model = self._models.get(name)
        if model is None:
            return  # an unknown name in a URL must not mint a new series
        self.metrics.observe_request(protocol, model.name, model.version, status)

    # ------------------------------------------------------------ feedback

    async def feedback(self, name: str, document: Any) -> dict[str, Any]:
        """Store the true label of a logged prediction: ``{"request_id", "label", "row": 0}``."""
        model = self.ready_model(name)
        request_id, label, row = parse_feedback(document, model.schema.classes)
        if self._feedback_store is None:
            raise NotReady("feedback is off: this server has no prediction log database")
        call = functools.partial(
            self._feedback_store, model=model.name, request_id=request_id, label=label, row=row
        )
        loop = asyncio.get_running_loop()
        try:
            stored = await loop.run_in_executor(None, call)
        except NotFound:
            if self.prediction_log is None:
                raise
            # The prediction may still wait in the log's queue: write it, then ask once more.
            await self.prediction_log.flush(timeout_s=5.0)
            stored = await loop.run_in_executor(None, call)
        answer: dict[str, Any] = {"model": model.name, "request_id": request_id, "row": row, "label": label}
        if dataclasses.is_dataclass(stored) and not isinstance(stored, type):
            answer.update(dataclasses.asdict(stored))
        return answer


def parse_feedback(document: Any, classes: Sequence[str | int]) -> tuple[str, str | int, int]:
    if not isinstance(document, dict):
        raise InvalidInput('feedback must be a JSON object: {"request_id": ..., "label": ..., "row": 0}')
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
    for known in classes:
        if label == known or str(label) == str(known):
            return request_id, known, row
    listed = ", ".join(repr(c) for c in classes)
    raise InvalidInput(f"label {label!r} is not one of the model's classes: {listed}")


def prediction_records(
    model: ServedModel,
    batch: FeatureBatch,
    prediction: Prediction,
    request_id: str,
    latency_ms: float,
    created_at: datetime,
) -> list[PredictionRecord]:
    schema = model.schema
    names = schema.class_names
    records = []
    for row, (label, probabilities) in enumerate(
        zip(prediction.labels, prediction.probabilities.tolist(), strict=True)
    ):
        records.append(
            PredictionRecord(
                request_id=request_id,
                row=row,
                model=model.name,
                version=model.version,
                features=batch.row(schema, row),
                label=label,
                probabilities=dict(zip(names, probabilities, strict=True)),
                latency_ms=latency_ms,
                created_at=created_at,
            )
        )
    return records


__all__ = [
    "MAX_REQUEST_ID_LENGTH",
    "DataPlane",
    "FeedbackStore",
    "check_request_id",
    "new_request_id",
    "parse_feedback",
    "prediction_records",
]
