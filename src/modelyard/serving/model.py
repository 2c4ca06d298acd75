"""One served model: a verified bundle, its runtime, its schema and its micro-batcher.

Loading verifies every file of the bundle against its sha256 before anything is unpickled
(``modelyard.serving.runtime.open_runtime``, which unpickles model.joblib only when ONNX Runtime cannot
answer). A bundle that fails verification or loading leaves the model registered but not ready, with
the reason kept in ``load_error``: the server stays live, readiness says 503, and the model metadata
shows why."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelyard.bundle import BundleMetadata
from modelyard.errors import ModelyardError, NotReady
from modelyard.serving.batching import AdaptiveBatcher, BatchObserver, BatchOutcome
from modelyard.serving.features import FeatureBatch, FeatureSchema
from modelyard.serving.runtime import ModelRuntime, OnnxRuntime, open_runtime
from modelyard.serving.types import Prediction, TensorMetadata

log = logging.getLogger(__name__)

PLATFORMS = {"sklearn": "sklearn", "onnx": "onnxruntime_onnx"}


UNSCORABLE_SEARCH_CALLS = 24
"""Model calls the search for an unscorable row and feature may make for one request, on the error path."""


class ServedModel:
    """A bundle served under ``name``. Call :meth:`load` once; it never raises."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        *,
        version: str = "",
        prefer_onnx: bool = True,
        onnx_threads: int = 1,
        max_batch_size: int = 1024,
        max_batch_wait_s: float = 0.002,
        batch_observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.model_dir = model_dir
        self.prefer_onnx = prefer_onnx
        self.onnx_threads = onnx_threads
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self._batch_observer = batch_observer
        self.ready = False
        self.load_error: str | None = None
        self.metadata: BundleMetadata | None = None
        self._schema: FeatureSchema | None = None
        self._runtime: ModelRuntime | None = None
        self._batcher: AdaptiveBatcher | None = None
        self._class_array: np.ndarray = np.empty(0, dtype=object)
        self._class_names: np.ndarray = np.empty(0, dtype=object)
        self._predict_numeric: Callable[[np.ndarray], np.ndarray] | None = None

    # ------------------------------------------------------------ loading

    def load(self) -> bool:
        """Verify and load the bundle. On failure keep the reason, log it, and stay not ready.

        Idempotent and cheap after a failure: kserve's gRPC path may call it on every request.
        """
        if self.ready or self.load_error is not None:
            return self.ready
        try:
            # verifies every file first; unpickles model.joblib only when scikit-learn must answer
            runtime, metadata = open_runtime(
                self.model_dir, prefer_onnx=self.prefer_onnx, onnx_threads=self.onnx_threads
            )
        except ModelyardError as exc:
            self._fail(exc.message)
            return False
        except Exception:  # a bundle is untrusted input: any failure means "not ready", not a crash
            log.exception("model %s: loading %s failed", self.name, self.model_dir)
            self._fail("the bundle failed to load (the server's log has the error)")
            return False
        self.metadata = metadata
        self._schema = FeatureSchema(metadata)
        self._runtime = runtime
        self._predict_numeric = (
            runtime.predict_proba_numeric
            if isinstance(runtime, OnnxRuntime) and runtime.takes_numeric_matrix and self._schema.all_numeric
            else None
        )
        self._class_array = np.array(list(metadata.classes), dtype=object)
        self._class_names = np.array([str(label) for label in metadata.classes], dtype=object)
        self._batcher = AdaptiveBatcher(
            self._predict_rows,
            max_batch_size=self.max_batch_size,
            max_wait_s=self.max_batch_wait_s,
            observer=self._batch_observer,
            name=self.name,
        )
        self.ready = True
        onnx_unused = getattr(runtime, "onnx_unused", None)
        log.info(
            "model %s%s loaded from %s: %s, %d feature(s), classes %s, runtime %s%s%s",
            self.name,
            f"@{self.version}" if self.version else "",
            self.model_dir,
            metadata.algorithm,
            len(metadata.features),
            metadata.classes,
            runtime.kind,
            f" ({runtime.threads} thread(s))" if isinstance(runtime, OnnxRuntime) else "",
            f" (not ONNX: {onnx_unused})" if onnx_unused and self.prefer_onnx else "",
        )
        return True

    def _fail(self, reason: str) -> None:
        self.load_error = reason
        self.ready = False
        log.error("model %s is NOT READY: %s", self.name, reason)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self.ready = False

    # ------------------------------------------------------------ what the data plane uses

    @property
    def schema(self) -> FeatureSchema:
        if self._schema is None:
            raise self.not_ready()
        return self._schema

    @property
    def runtime_kind(self) -> str:
        return self._runtime.kind if self._runtime is not None else ""

    @property
    def platform(self) -> str:
        return PLATFORMS.get(self.runtime_kind, self.runtime_kind)

    @property
    def batcher(self) -> AdaptiveBatcher:
        if self._batcher is None:
            raise self.not_ready()
        return self._batcher

    def not_ready(self) -> NotReady:
        reason = self.load_error or "it is still loading"
        return NotReady(f"model {self.name!r} is not ready: {reason}")

    async def predict(self, batch: FeatureBatch) -> BatchOutcome:
        """Predict through the micro-batcher (coalesced with concurrent requests, off the event loop)."""
        if not self.ready:
            raise self.not_ready()
        return await self.batcher.submit(batch)

    def _predict_rows(self, batch: FeatureBatch) -> Prediction:
        """Runs in the prediction thread, once per micro-batch."""
        assert self._runtime is not None and self._schema is not None
        if self._predict_numeric is not None:
            probabilities = self._predict_numeric(batch.numeric)
        else:
            probabilities = self._runtime.predict_proba(batch.to_frame(self._schema))
        predicted = np.argmax(probabilities, axis=1)
        return Prediction(self._class_array[predicted].tolist(), probabilities, self._class_names[predicted])

    # ------------------------------------------------------------ rows the model cannot score

    def rescored_alone(
        self, batch: FeatureBatch, prediction: Prediction, rows: np.ndarray
    ) -> Prediction | None:
        """``prediction`` with each of ``rows`` (those answered non-finite) scored again on its own, or None
        when one of them is not finite alone either, or they are more than ``UNSCORABLE_SEARCH_CALLS``.

        Extreme but finite values (1e308) can overflow to infinities whose sum depends on the order the
        runtime adds them in, and that order can differ with the batch's size: a row answered NaN inside
        a batch may score finitely alone, and then its own answer is the one to give. Error path only.
        """
        if len(rows) > UNSCORABLE_SEARCH_CALLS:
            return None
        probabilities = prediction.probabilities.copy()
        labels = list(prediction.labels)
        label_names = prediction.label_names.copy()
        for row in rows.tolist():
            try:
                alone = self._predict_rows(batch.select(slice(row, row + 1)))
            except Exception:  # whatever the runtime raises, the row is not scored
                return None
            if not np.isfinite(alone.probabilities).all():
                return None
            probabilities[row] = alone.probabilities[0]
            labels[row] = alone.labels[0]
            label_names[row] = alone.label_names[0]
        return Prediction(labels, probabilities, label_names)

    def scores(self, batch: FeatureBatch) -> bool:
        """Whether the model answers finite probabilities for every row of ``batch``, calling the runtime
        directly (not through the batcher). Only for the error path: see :meth:`unscorable`."""
        try:
            probabilities = self._predict_rows(batch).probabilities
        except Exception:  # whatever the runtime raises, the row is not scored
            return False
        return bool(np.isfinite(probabilities).all())

    def fails_for_missing(self, batch: FeatureBatch, row: int) -> bool:
        """Whether row ``row`` of ``batch`` is answered non-finite because of its missing values: it has
        some, and it still does not score once its other numeric values are all 0 (a runtime without an
        imputer answers NaN for a NaN; one with an imputer fails on such a row only for its other values).
        Error path only."""
        alone = batch.select(slice(row, row + 1))
        if alone.first_missing(self.schema) is None:
            return False
        present = np.flatnonzero(np.isfinite(alone.numeric[0])).tolist()
        return not self.scores(alone.with_numeric(0, present, 0.0))

    def unscorable(self, batch: FeatureBatch, row: int | None = None) -> tuple[int, str] | None:
        """(row, feature) of the first row the model cannot score because of its own numeric values, or
        None when the fault is the model's. Runs off the event loop, on the error path only.

        The row is ``row`` when known (the model answered it NaN), else found by bisection (the model
        raised for the request: about log2(rows) calls). It is the client's only if it fails on its own
        and scores once its numeric values are all 0; otherwise (a batch effect, a transient fault, a
        broken model) the fault is the model's. The feature is the first whose value, set to 0, lets the
        row be scored, tried within ``UNSCORABLE_SEARCH_CALLS`` calls in all; else the largest in
        magnitude. A hostile request thus costs a bounded number of extra calls.
        """
        calls = 0

        def scores(candidate: FeatureBatch) -> bool:
            nonlocal calls
            calls += 1
            return self.scores(candidate)

        if row is None:
            if scores(batch):
                return None
            start, stop = 0, batch.n_rows
            while stop - start > 1:
                middle = (start + stop) // 2
                if scores(batch.select(slice(start, middle))):
                    start = middle
                else:
                    stop = middle
            row = start
        alone = batch.select(slice(row, row + 1))
        columns = range(len(self.schema.numeric_names))
        if not columns or scores(alone) or not scores(alone.with_numeric(0, columns, 0.0)):
            return None
        names = self.schema.numeric_names
        for column in columns:
            if calls >= UNSCORABLE_SEARCH_CALLS:
                break
            if scores(alone.with_numeric(0, [column], 0.0)):
                return row, names[column]
        magnitudes = np.nan_to_num(np.abs(alone.numeric[0]), nan=0.0)
        return row, names[int(np.argmax(magnitudes))]

    def input_metadata(self) -> list[TensorMetadata]:
        return self._schema.input_metadata() if self._schema is not None else []

    def output_metadata(self) -> list[TensorMetadata]:
        return self._schema.output_metadata() if self._schema is not None else []


__all__ = ["PLATFORMS", "ServedModel"]
