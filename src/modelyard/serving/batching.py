"""Adaptive micro-batching: concurrent requests share one model call, which runs off the event loop.

One batcher per model serves V1, V2 REST and gRPC alike: with one server process they all run on one
asyncio loop. A request's rows join a queue; one worker task takes what is queued (up to
``max_batch_size`` rows) and runs the model on it in a single prediction thread, so the event loop keeps
answering health probes and reading new requests meanwhile.

The batching adapts to load instead of always waiting:

- idle: a lone request goes to the model at once, with no added latency;
- busy: requests arriving while the model runs pile up and go together in the next call;
- sustained concurrency (the previous call carried more than one request): the worker also waits, at
  most ``max_wait_s`` after the oldest queued request arrived, for more rows before calling the model,
  but only until the batch holds as many requests as the previous call did: with N clients in a closed
  loop all N are then in, and waiting longer would only idle the model.

A lone request on an idle server whose model answers small calls in microseconds (ONNX on a few rows)
is predicted on the event loop itself: handing it to the prediction thread and back would cost several
times the prediction. The model's small calls are timed (the first one in the thread); while they take
at most ``inline_budget_s`` on average, a lone one runs on the loop, else in the thread.

A failing call is retried one request at a time, so one poisoned request fails alone and its batch-mates
still get their answers. Requests are validated before they are queued: what reaches the model is
well-formed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from modelyard.serving.features import FeatureBatch
from modelyard.serving.types import Prediction

log = logging.getLogger(__name__)

PredictFn = Callable[[FeatureBatch], Prediction]
INLINE_MAX_ROWS = 8
"""The most rows a call predicted on the event loop may carry."""
BatchObserver = Callable[[int, float], None]
"""Called on the event loop after every model call with (rows, seconds)."""


@dataclass(frozen=True)
class BatchOutcome:
    """One request's share of a model call."""

    prediction: Prediction
    queue_seconds: float
    """From submit() until its batch was handed to the model."""
    predict_seconds: float
    """The model call that answered it (shared by the whole batch)."""
    batch_rows: int


@dataclass
class _Pending:
    batch: FeatureBatch
    future: asyncio.Future[BatchOutcome]
    enqueued: float


class AdaptiveBatcher:
    """Coalesces concurrent ``submit()`` calls into model calls of at most ``max_batch_size`` rows.

    A request larger than ``max_batch_size`` is not split: it goes to the model alone.
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        observer: BatchObserver | None = None,
        name: str = "model",
        inline_budget_s: float = 200e-6,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if inline_budget_s < 0:
            raise ValueError(f"inline_budget_s must be >= 0 (0: never on the loop), got {inline_budget_s}")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._observer = observer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{name}")
        self._queue: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._under_load = False
        self._previous_requests = 0
        self.inline_budget_s = inline_budget_s
        # Average seconds of a small call (None: none timed yet, so the first goes to the thread).
        self._small_call_s: float | None = None
        self.inline_calls = 0
        """Model calls made on the event loop (a lone small request on an idle server, fast model)."""
        self.calls = 0
        """Model calls made so far (retries of a failed batch included)."""

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    async def submit(self, batch: FeatureBatch) -> BatchOutcome:
        """Predict ``batch`` together with whatever else is queued; its own rows come back."""
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        future: asyncio.Future[BatchOutcome] = loop.create_future()
        self._queue.append(_Pending(batch, future, loop.time()))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain(), name="modelyard-batcher")
        return await future

    def close(self) -> None:
        """Stop the prediction thread after the call in progress, if any."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------ the worker

    def _take(self, items: list[_Pending], rows: int) -> int:
        """Move queued requests into ``items`` while they fit; the first one always does."""
        while self._queue:
            head = self._queue[0]
            if items and rows + head.batch.n_rows > self.max_batch_size:
                break
            items.append(self._queue.popleft())
            rows += head.batch.n_rows
        return rows

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                items: list[_Pending] = []
                rows = self._take(items, 0)
                if self._under_load and self.max_wait_s > 0:
                    rows = await self._wait_for_more(items, rows, loop)
                live = [item for item in items if not item.future.done()]  # callers that went away
                if live:
                    await self._run(live, loop)
                    self._under_load = len(live) > 1
                    self._previous_requests = len(live)
        except BaseException as exc:  # never leave a caller waiting forever
            for item in self._queue:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            self._queue.clear()
            raise

    async def _wait_for_more(self, items: list[_Pending], rows: int, loop: asyncio.AbstractEventLoop) -> int:
        assert self._arrived is not None
        deadline = items[0].enqueued + self.max_wait_s
        while rows < self.max_batch_size and not self._queue and len(items) < self._previous_requests:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
            rows = self._take(items, rows)
        return rows

    async def _run(self, items: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        merged = FeatureBatch.concat([item.batch for item in items])
        started = loop.time()
        try:
            prediction, seconds = await self._call(merged, loop)
        except Exception as exc:
            if len(items) == 1:
                self._fail(items[0], exc)
                return
            log.warning(
                "a batch of %d requests failed (%s: %s); retrying them one by one",
                len(items),
                type(exc).__name__,
                exc,
            )
            for item in items:
                await self._run([item], loop)
            return
        start = 0
        for item in items:
            stop = start + item.batch.n_rows
            share = Prediction(
                prediction.labels[start:stop],
                prediction.probabilities[start:stop],
                prediction.label_names[start:stop],
            )
            if not item.future.done():
                item.future.set_result(BatchOutcome(share, started - item.enqueued, seconds, merged.n_rows))
            start = stop

    async def _call(self, batch: FeatureBatch, loop: asyncio.AbstractEventLoop) -> tuple[Prediction, float]:
        self.calls += 1
        small = batch.n_rows <= INLINE_MAX_ROWS
        inline = (
            small
            and not self._under_load
            and not self._queue
            and self._small_call_s is not None
            and self._small_call_s <= self.inline_budget_s
        )
        began = time.perf_counter()
        if inline:
            self.inline_calls += 1
            prediction, model_seconds = self._timed_predict(batch)
        else:
            prediction, model_seconds = await loop.run_in_executor(self._executor, self._timed_predict, batch)
        seconds = time.perf_counter() - began
        if small:
            previous = self._small_call_s
            self._small_call_s = (
                model_seconds if previous is None else previous + 0.2 * (model_seconds - previous)
            )
        if self._observer is not None:
            self._observer(batch.n_rows, seconds)
        if len(prediction.labels) != batch.n_rows or len(prediction.probabilities) != batch.n_rows:
            raise RuntimeError(
                f"the model answered {len(prediction.labels)} label(s) for {batch.n_rows} row(s)"
            )
        return prediction, seconds

    def _timed_predict(self, batch: FeatureBatch) -> tuple[Prediction, float]:
        """The model's own time, without the hand-off to the thread: what deciding to inline needs."""
        began = time.perf_counter()
        prediction = self._predict(batch)
        return prediction, time.perf_counter() - began

    @staticmethod
    def _fail(item: _Pending, exc: Exception) -> None:
        if not item.future.done():
            item.future.set_exception(exc)


__all__ = ["AdaptiveBatcher", "BatchObserver", "BatchOutcome", "PredictFn"]
