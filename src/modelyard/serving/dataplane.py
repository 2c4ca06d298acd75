"""The data plane: health, metadata, inference and feedback, independent of REST and gRPC.

The transport adapters (``rest/``, ``grpc/``) decode bytes into the types of ``types.py``, call these
methods, and encode the typed answers they return. Errors are ``modelyard.errors`` exceptions, each
carrying its status (``status.py`` maps them for both transports): InvalidInput (400), NotFound (404),
NotReady (503). A client's mistake is never a 500: input is checked before it is queued for the model.
A model that raises is a 500, with two exceptions where the input is at fault, each a 400 naming the
feature and row, since the client can fix it: a missing value (null, or NaN in a binary tensor) that the
model cannot impute, and a row the model cannot score because finite but extreme values (1e308)
overflow its arithmetic, whether the model then raises or answers NaN. No answer and no log row ever
holds a non-finite probability.

After a prediction the metrics, drift and the prediction sink are fed in a callback scheduled on the
event loop, not while the caller waits: one callback for the requests answered together (a micro-batch).
A model may have a candidate version beside it (``rollout.py``): in canary mode it answers its share of
requests; in shadow mode it scores the stable version's rows once the caller has the stable answer, and
its failures are counted, never answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from modelyard import __version__
from modelyard.errors import InvalidInput, ModelyardError, NotFound, NotReady
from modelyard.serving.batching import BatchOutcome
from modelyard.serving.features import (
    NO_TEXT,
    BooleanTokens,
    FeatureBatch,
    MatrixColumns,
    features_from_instances,
    features_from_tensors,
    output_tensors,
    select_outputs,
)
from modelyard.serving.metrics import SHADOW_PROTOCOL, SHADOW_STAGE, ServingMetrics
from modelyard.serving.model import ServedModel
from modelyard.serving.rollout import SHADOW, Rollout, check_candidate
from modelyard.serving.sink import PredictionRecord, PredictionSink
from modelyard.serving.types import (
    SERVER_EXTENSIONS,
    SERVER_NAME,
    Datatype,
    FeedbackRequest,
    FeedbackResult,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelParameters,
    ModelReadiness,
    Prediction,
    ServerMetadata,
    TensorMetadata,
)
from modelyard.settings import ServingSettings

log = logging.getLogger(__name__)


FeedbackStore = Callable[..., FeedbackResult]
"""``record_feedback`` bound to the registry database: (model=, request_id=, label=, row=) -> result."""


class DataPlane:
    """The models this server serves, and what can be asked of them."""

    def __init__(
        self,
        *,
        max_request_rows: int,
        max_text_length: int = ServingSettings.model_fields["max_text_length"].default,
        metrics: ServingMetrics | None = None,
        prediction_log: PredictionSink | None = None,
        feedback_store: FeedbackStore | None = None,
    ) -> None:
        self.max_request_rows = max_request_rows
        self.max_text_length = max_text_length
        self.metrics = metrics
        self.prediction_log = prediction_log
        self._feedback_store = feedback_store
        self._models: dict[str, ServedModel] = {}
        self._rollouts: dict[str, Rollout] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._last_logged_at = datetime.min.replace(tzinfo=UTC)
        self._unrecorded: list[_Answered] = []  # answered, to be recorded by the pending callback
        self._recording_on: asyncio.AbstractEventLoop | None = None  # the loop that callback waits on

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

    def add_candidate(self, rollout: Rollout) -> None:
        """Serve ``rollout.candidate`` beside the stable model of its name, added before; ModelyardError
        naming the problem when the candidate did not load or does not fit the stable model."""
        candidate = rollout.candidate
        check_candidate(self.model(candidate.name), candidate)
        self._rollouts[candidate.name] = rollout
        if self.metrics is not None:
            algorithm = candidate.metadata.algorithm if candidate.metadata is not None else ""
            self.metrics.set_model_info(
                candidate.name, candidate.version, algorithm, candidate.runtime_kind, True, role="candidate"
            )
            if rollout.mode == SHADOW:
                self.metrics.start_shadow(candidate.name, candidate.version)

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return self._models

    @property
    def rollouts(self) -> Mapping[str, Rollout]:
        return self._rollouts

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The model served as ``name`` (and ``version`` when given), ready or not; NotFound otherwise."""
        model = self._models.get(name)
        if model is None:
            served = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not served here (served: {served})")
        if version is not None and version != model.version:
            rollout = self._rollouts.get(name)
            if rollout is not None and version == rollout.candidate.version:
                return rollout.candidate
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
        return (
            bool(self._models)
            and all(model.ready for model in self._models.values())
            and all(rollout.candidate.ready for rollout in self._rollouts.values())
        )

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, list(SERVER_EXTENSIONS))

    def model_readiness(self, name: str, version: str | None = None) -> ModelReadiness:
        model = self.model(name, version)
        return ModelReadiness(model.name, model.ready, model.load_error)

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """Open Inference Protocol model metadata, with our parameters and, when not ready, the error."""
        model = self.model(name, version)
        parameters = None
        if model.metadata is not None and model.ready:
            metadata = model.metadata
            schema = model.schema
            parameters = ModelParameters(
                classes=list(metadata.classes),
                features=[(f.name, f.type.value) for f in metadata.features],
                algorithm=metadata.algorithm,
                runtime=model.runtime_kind,
                max_request_rows=self.max_request_rows,
                # the other accepted input form: one [N, n_features] tensor, columns in feature order
                tensor_input=TensorMetadata("input-0", Datatype.FP64, [-1, len(schema.names)])
                if schema.all_numeric
                else None,
            )
        return ModelMetadata(
            name=model.name,
            versions=[model.version] if model.version else [],
            platform=model.platform,
            inputs=model.input_metadata(),
            outputs=model.output_metadata(),
            ready=model.ready,
            parameters=parameters,
            error=model.load_error,
        )

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
        model = self.answering_model(name, request_id, version)
        outputs = select_outputs(request)
        batch = features_from_tensors(request.inputs, model.schema, self.max_request_rows)
        decoded = decode_seconds + time.perf_counter() - started
        self._observe("decode", decoded, model)
        prediction = await self._predict(model, batch, request_id, started, decoded)
        tensors = output_tensors(prediction, model.schema, outputs)
        default_binary = request.binary_data_output
        binary = [default_binary if output.binary is None else output.binary for output in outputs]
        # request_id is the one id of the request (types.resolve_request_id): the body's id when given
        return InferenceResponse(model.name, model.version, request_id, tensors, binary)

    async def predict_v1(
        self,
        name: str,
        instances: list[Any],
        *,
        request_id: str,
        decode_seconds: float = 0.0,
        boolean_tokens: BooleanTokens = NO_TEXT,
    ) -> Prediction:
        """V1 predict: rows as lists (feature order) or objects keyed by feature name."""
        started = time.perf_counter()
        model = self.answering_model(name, request_id)
        batch = features_from_instances(
            instances, model.schema, self.max_request_rows, boolean_tokens=boolean_tokens
        )
        decoded = decode_seconds + time.perf_counter() - started
        self._observe("decode", decoded, model)
        return await self._predict(model, batch, request_id, started, decoded)

    def answering_model(self, name: str, request_id: str, version: str | None = None) -> ServedModel:
        """The ready model that answers ``request_id``: the version asked for; else, in canary mode, the
        candidate for its share of request ids; else the stable version."""
        model = self.ready_model(name, version)
        if version is None and self._rollouts:
            rollout = self._rollouts.get(model.name)
            if rollout is not None and rollout.answers(request_id):
                return rollout.candidate
        return model

    async def _predict(
        self, model: ServedModel, batch: FeatureBatch, request_id: str, started: float, decoded: float
    ) -> Prediction:
        # Bounded values only, in the model and in the prediction log.
        batch.check_text_length(self.max_text_length, "MODELYARD_SERVING__MAX_TEXT_LENGTH")
        try:
            outcome = await model.predict(batch)
        except ModelyardError:
            raise
        except (ValueError, TypeError) as exc:
            # The batcher retried this request alone: the model refused this request's own values. Only a
            # missing value is the client's to fix; any other refusal is the model's fault (a 500).
            _refuse_missing(model, batch, exc)
            await self._refuse_unscorable(model, batch, None, exc)
            raise
        finite = np.isfinite(outcome.prediction.probabilities).all(axis=1)
        if not finite.all():
            # No answer and no log row ever holds a NaN or infinite probability.
            outcome = await self._rescore_alone(model, batch, outcome, np.flatnonzero(~finite))
            finite = np.isfinite(outcome.prediction.probabilities).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(None, model.fails_for_missing, batch, first):
                _refuse_missing(model, batch.select(slice(first, first + 1)), None, first)
            await self._refuse_unscorable(model, batch, first, None)
            raise RuntimeError(f"the model answered non-finite probabilities for row {first}")
        latency_ms = (time.perf_counter() - started) * 1000.0
        loop = asyncio.get_running_loop()
        created_at = self._logged_at()
        self._record_soon(_Answered(model, batch, outcome, request_id, latency_ms, created_at), loop)
        if self._rollouts:
            rollout = self._rollouts.get(model.name)
            if rollout is not None and rollout.mode == SHADOW and rollout.candidate is not model:
                self._shadow(rollout, batch, outcome.prediction, request_id, decoded, created_at, loop)
        return outcome.prediction

    @staticmethod
    async def _rescore_alone(
        model: ServedModel, batch: FeatureBatch, outcome: BatchOutcome, rows: np.ndarray
    ) -> BatchOutcome:
        """``outcome`` with its non-finite ``rows`` answered by scoring each alone, where that is finite."""
        loop = asyncio.get_running_loop()
        rescored = await loop.run_in_executor(None, model.rescored_alone, batch, outcome.prediction, rows)
        return outcome if rescored is None else dataclasses.replace(outcome, prediction=rescored)

    @staticmethod
    async def _refuse_unscorable(
        model: ServedModel, batch: FeatureBatch, row: int | None, cause: BaseException | None
    ) -> None:
        """InvalidInput naming the row and feature when the request's own values are what the model
        cannot score (finite but extreme numbers, e.g. 1e308, overflow its arithmetic); else returns."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, model.unscorable, batch, row)
        if found is None:
            return
        row, feature = found
        value = batch.row(model.schema, row)[feature]
        raise InvalidInput(
            f"row {row} cannot be scored: feature {feature!r} is {value!r}, beyond what this model can "
            "compute with (its probabilities would not be numbers); send a value in the range it was "
            "trained on"
        ) from cause

    def _record_soon(self, answer: _Answered, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``answer`` recorded once its caller has it. The requests of one micro-batch resume in one
        turn of the event loop, so they are recorded together, in the next: one metrics update, drift
        observation and log submission for all of them, not one each."""
        self._unrecorded.append(answer)
        if self._recording_on is not loop:  # none pending on this loop (a stopped loop's never runs)
            loop.call_soon(self.record_pending)
            self._recording_on = loop

    def record_pending(self) -> None:
        """Metrics, drift and prediction log for the requests answered and not yet recorded; the server
        calls it before it flushes or stops the log. Never raises. Drift is watched on the rows clients
        got, not again on a shadow candidate's copies. A failure loses only its group's metrics (one
        model version's) or its request's record."""
        answers, self._unrecorded, self._recording_on = self._unrecorded, [], None
        if not answers:
            return
        if self.metrics is not None:
            groups: dict[tuple[int, bool], list[_Answered]] = {}
            for answer in answers:
                groups.setdefault((id(answer.model), answer.answered), []).append(answer)
            for group in groups.values():
                try:
                    self._observe_answered(self.metrics, group)
                except Exception:
                    ids = ", ".join(answer.request_id for answer in group)
                    log.exception("could not count the predictions of requests %s", ids)
        if self.prediction_log is not None:
            records = []
            for answer in answers:
                try:
                    records.append(answer.record())
                except Exception:
                    log.exception("could not log the prediction of request %s", answer.request_id)
            try:
                self.prediction_log.submit(records)
            except Exception:  # a sink must not raise; if one does, the requests are named
                ids = ", ".join(record.request_id for record in records)
                log.exception("could not log the predictions of requests %s", ids)

    @staticmethod
    def _observe_answered(metrics: ServingMetrics, answers: Sequence[_Answered]) -> None:
        """Metrics and drift for ``answers``, all of one model version and all answered or all shadow."""
        model = answers[0].model
        for answer in answers:
            metrics.observe_stage("queue", answer.outcome.queue_seconds, model.name, model.version)
            metrics.observe_stage("predict", answer.outcome.predict_seconds, model.name, model.version)
        predictions = [answer.outcome.prediction for answer in answers]
        if len(predictions) == 1:
            labels, probabilities = predictions[0].label_names, predictions[0].probabilities
        else:
            labels = np.concatenate([prediction.label_names for prediction in predictions])
            probabilities = np.concatenate([prediction.probabilities for prediction in predictions])
        metrics.observe_predictions(model.name, model.version, labels, probabilities.max(axis=1))
        if answers[0].answered and metrics.drift is not None:
            batch = FeatureBatch.concat([answer.batch for answer in answers])
            metrics.drift.observe(model.name, batch.numeric, batch.other, probabilities)

    # ------------------------------------------------------------ the shadow candidate

    def _shadow(
        self,
        rollout: Rollout,
        batch: FeatureBatch,
        stable: Prediction,
        request_id: str,
        decoded: float,
        created_at: datetime,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Have the candidate score ``batch`` once the caller has the stable answer (a task of its own)."""
        candidate = rollout.candidate
        if not rollout.takes_shadow(batch.n_rows):
            if self.metrics is not None:
                self.metrics.count_shadow_skipped(candidate.name, candidate.version, batch.n_rows)
            return
        rollout.backlog_rows += batch.n_rows
        task = loop.create_task(self._score_shadow(rollout, batch, stable, request_id, decoded, created_at))
        self._shadow_tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._shadow_tasks.discard)

    async def finish_shadows(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, for the shadow candidate to score the requests it was handed: on
        shutdown, before the prediction log writes what it holds. What is left then is cancelled (its
        rows counted as skipped), so no shadow task outlives the models."""
        if not self._shadow_tasks:
            return
        _, pending = await asyncio.wait(set(self._shadow_tasks), timeout=max(0.0, timeout_s))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _score_shadow(
        self,
        rollout: Rollout,
        batch: FeatureBatch,
        stable: Prediction,
        request_id: str,
        decoded: float,
        created_at: datetime,
    ) -> None:
        """Score the stable version's rows with the candidate; count, export and log it. Never raises.
        The log row has the stable row's ``created_at`` (feedback given before the shadow finished
        grades it too) and is not ``answered``."""
        candidate = rollout.candidate
        metrics = self.metrics
        started = time.perf_counter()
        try:
            outcome = await candidate.predict(batch)
            finite = np.isfinite(outcome.prediction.probabilities).all(axis=1)
            if not finite.all():  # judged as the stable version is: rows that overflow together, alone
                outcome = await self._rescore_alone(candidate, batch, outcome, np.flatnonzero(~finite))
                if not np.isfinite(outcome.prediction.probabilities).all():
                    raise RuntimeError("the candidate answered non-finite probabilities")
        except asyncio.CancelledError:
            if metrics is not None:  # the server stopped before the candidate scored it
                metrics.count_shadow_skipped(candidate.name, candidate.version, batch.n_rows)
            raise
        except Exception as exc:
            rollout.failed(exc)
            if metrics is not None:
                metrics.observe_request(SHADOW_PROTOCOL, candidate.name, candidate.version, 500)
            return
        finally:
            rollout.backlog_rows -= batch.n_rows
        # the time the candidate would have taken to answer: the request's decoding, then its own queue
        seconds = decoded + time.perf_counter() - started
        prediction = outcome.prediction
        try:
            if metrics is not None:
                metrics.observe_request(SHADOW_PROTOCOL, candidate.name, candidate.version, 200)
                metrics.observe_stage(SHADOW_STAGE, seconds, candidate.name, candidate.version)
                agreed = int(np.count_nonzero(prediction.label_names == stable.label_names))
                metrics.observe_shadow(candidate.name, candidate.version, batch.n_rows, agreed)
            answer = _Answered(candidate, batch, outcome, request_id, seconds * 1000.0, created_at, False)
            self._record_soon(answer, asyncio.get_running_loop())
        except Exception:
            log.exception("could not record the shadow prediction of request %s", request_id)

    def _logged_at(self) -> datetime:
        """The prediction's time in the log; the event loop's thread is the only caller."""
        self._last_logged_at = strictly_after(self._last_logged_at, datetime.now(UTC))
        return self._last_logged_at

    def _observe(self, stage: str, seconds: float, model: ServedModel) -> None:
        if self.metrics is not None:
            self.metrics.observe_stage(stage, seconds, model.name, model.version)

    def observe_stage(
        self,
        stage: str,
        seconds: float,
        name: str,
        *,
        request_id: str | None = None,
        version: str | None = None,
    ) -> None:
        """For the transports: their encode and total times, under the version that answered."""
        if self.metrics is None:
            return
        model = self._answered_by(name, request_id, version)
        if model is not None:  # an unknown name in a URL must not mint a new series
            self.metrics.observe_stage(stage, seconds, model.name, model.version)

    def observe_request(
        self,
        protocol: str,
        name: str,
        status: int | str,
        *,
        request_id: str | None = None,
        version: str | None = None,
    ) -> None:
        """Count a finished request under the version that answered it. The model label is only ever a
        served model's name."""
        if self.metrics is None:
            return
        model = self._answered_by(name, request_id, version)
        if model is not None:
            self.metrics.observe_request(protocol, model.name, model.version, status)

    def _answered_by(self, name: str, request_id: str | None, version: str | None) -> ServedModel | None:
        """The served model a request's metrics belong to, as :meth:`answering_model` chose it (or would
        have, for a request refused before); None for a name not served here."""
        model = self._models.get(name)
        if model is None or not self._rollouts:
            return model
        rollout = self._rollouts.get(name)
        if rollout is None:
            return model
        if version is not None:
            return rollout.candidate if version == rollout.candidate.version else model
        return rollout.candidate if request_id is not None and rollout.answers(request_id) else model

    # ------------------------------------------------------------ feedback

    async def feedback(self, name: str, feedback: FeedbackRequest) -> FeedbackResult:
        """Store the true label of a logged prediction."""
        model = self.ready_model(name)
        if feedback.row >= self.max_request_rows:
            raise InvalidInput(
                f"'row' is {feedback.row}, but a request carries at most {self.max_request_rows} rows: "
                f"row is 0 to {self.max_request_rows - 1}"
            )
        label = class_label(feedback.label, model.schema.classes)
        if self._feedback_store is None:
            raise NotReady("feedback is off: this server has no prediction log database")
        call = functools.partial(
            self._feedback_store,
            model=model.name,
            request_id=feedback.request_id,
            label=label,
            row=feedback.row,
        )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, call)
        except NotFound:
            if self.prediction_log is None:
                raise
            # The prediction may still wait to be recorded or in the log's queue: write it, ask again.
            self.record_pending()
            await self.prediction_log.flush(timeout_s=5.0)
            return await loop.run_in_executor(None, call)


def strictly_after(previous: datetime, now: datetime) -> datetime:
    """``now``, or one microsecond after ``previous`` when the clock has not moved past it: two predictions
    under one reused id are told apart by their time in the log (its unique key), even within one tick."""
    return now if now > previous else previous + timedelta(microseconds=1)


def _refuse_missing(
    model: ServedModel, batch: FeatureBatch, cause: BaseException | None, first_row: int = 0
) -> None:
    """InvalidInput naming the first missing value, for a model that cannot impute; else returns.
    ``batch`` holds the request's rows from ``first_row`` on."""
    missing = batch.first_missing(model.schema)
    if missing is not None:
        feature, row = missing
        row += first_row
        raise InvalidInput(
            f"feature {feature!r} row {row} is missing, and this model cannot impute missing values: "
            "send a value"
        ) from cause


def class_label(label: str | int, classes: Sequence[str | int]) -> str | int:
    """The model's class that ``label`` names, by value or by text (``"1"`` names the class 1)."""
    for known in classes:
        if label == known or str(label) == str(known):
            return known
    listed = ", ".join(repr(c) for c in classes)
    raise InvalidInput(f"label {label!r} is not one of the model's classes: {listed}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Answered:
    """A request a model version answered, waiting to be recorded (``answered`` is False for a shadow
    candidate's scoring of a request the stable version answered)."""

    model: ServedModel
    batch: FeatureBatch
    outcome: BatchOutcome
    request_id: str
    latency_ms: float
    created_at: datetime
    answered: bool = True

    def record(self) -> PredictionRecord:
        """The request's one log record: references to its columns, whatever its rows (the log converts
        them on its own thread)."""
        schema = self.model.schema
        prediction = self.outcome.prediction
        return PredictionRecord(
            request_id=self.request_id,
            model=self.model.name,
            version=self.model.version,
            rows=self.batch.n_rows,
            features=MatrixColumns(schema.numeric_names, self.batch.numeric, self.batch.other),
            labels=prediction.label_names,
            probabilities=MatrixColumns(schema.class_names, prediction.probabilities),
            latency_ms=self.latency_ms,
            created_at=self.created_at,
            answered=self.answered,
        )


__all__ = ["DataPlane", "FeedbackStore", "class_label", "strictly_after"]
