"""Adaptive micro-batching: coalescing, routing results back, isolating errors, staying off the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from modelyard.serving.batching import INLINE_MAX_ROWS, AdaptiveBatcher
from modelyard.serving.features import FeatureBatch
from modelyard.serving.types import Prediction

POISON = -1.0


def rows(*values: float) -> FeatureBatch:
    """One numeric feature; each value is a row."""
    return FeatureBatch(len(values), np.array(values, dtype=np.float64).reshape(-1, 1), {})


class EchoModel:
    """Labels each row with its own value, so a caller can tell whether it got its own rows back."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, batch: FeatureBatch) -> Prediction:
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch.n_rows)
        if self.delay_s:
            time.sleep(self.delay_s)
        values = batch.numeric[:, 0]
        if (values == POISON).any():
            raise ValueError("the model cannot score -1")
        return Prediction.of([f"v{v:g}" for v in values], np.stack([values, -values], axis=1))


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_concurrent_requests_share_model_calls_and_get_their_own_rows_back() -> None:
    model = EchoModel(delay_s=0.01)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=0.0)

    async def scenario() -> list[Prediction]:
        outcomes = await asyncio.gather(*(batcher.submit(rows(i, i + 0.5)) for i in range(40)))
        return [outcome.prediction for outcome in outcomes]

    predictions = run(scenario())
    batcher.close()
    assert batcher.calls == len(model.batches) < 40
    assert sum(model.batches) == 80
    for i, prediction in enumerate(predictions):
        assert prediction.labels == [f"v{i:g}", f"v{i + 0.5:g}"]
        assert prediction.probabilities[:, 0].tolist() == [i, i + 0.5]


def test_batches_never_exceed_max_batch_size_and_a_large_request_goes_alone() -> None:
    model = EchoModel()
    batcher = AdaptiveBatcher(model, max_batch_size=6, max_wait_s=0.0)

    async def scenario() -> None:
        await asyncio.gather(
            *(batcher.submit(rows(1, 2, 3)) for _ in range(10)), batcher.submit(rows(*range(9)))
        )

    run(scenario())
    batcher.close()
    assert max(n for n in model.batches if n != 9) <= 6
    assert 9 in model.batches  # larger than max_batch_size: not split, sent on its own
    assert sum(model.batches) == 39


def test_a_failing_request_fails_alone_and_its_batch_mates_get_answers() -> None:
    model = EchoModel()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=0.0)

    async def scenario() -> list[object]:
        return await asyncio.gather(
            *(batcher.submit(rows(POISON if i == 2 else i)) for i in range(5)), return_exceptions=True
        )

    results = run(scenario())
    batcher.close()
    assert isinstance(results[2], ValueError) and "cannot score -1" in str(results[2])
    for i in (0, 1, 3, 4):
        assert results[i].prediction.labels == [f"v{i}"]  # type: ignore[attr-defined]
    assert model.batches == [5, 1, 1, 1, 1, 1]  # the batch, then each request alone


def test_a_lone_request_is_not_held_back_by_the_batch_wait() -> None:
    model = EchoModel()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=5.0)

    async def scenario() -> float:
        began = time.perf_counter()
        await batcher.submit(rows(1))
        return time.perf_counter() - began

    elapsed = run(scenario())
    batcher.close()
    assert elapsed < 2.5  # far below the 5 s wait: idle, the request goes to the model at once


def test_under_sustained_load_the_worker_waits_for_batch_mates() -> None:
    model = EchoModel()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=1.0)

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(3)))  # load seen: a batch of 3
        first = asyncio.ensure_future(batcher.submit(rows(10)))
        await asyncio.sleep(0.05)  # arrives well within the 1 s wait
        second = asyncio.ensure_future(batcher.submit(rows(11)))
        await asyncio.gather(first, second)

    run(scenario())
    batcher.close()
    assert model.batches == [3, 2]


def test_the_wait_ends_once_the_previous_call_s_clients_are_all_back() -> None:
    model = EchoModel()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=5.0)

    async def scenario() -> float:
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(2)))  # a call of 2 requests
        began = time.perf_counter()
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(2)))  # both clients are back
        return time.perf_counter() - began

    elapsed = run(scenario())
    batcher.close()
    assert model.batches == [2, 2]
    assert elapsed < 2.5  # far below the 5 s wait: nobody else was coming


def test_the_model_runs_off_the_event_loop() -> None:
    model = EchoModel(delay_s=0.3)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=0.0, name="echo")
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(ticker(stop))
        await batcher.submit(rows(1))
        stop.set()
        await task

    run(scenario())
    batcher.close()
    assert ticks > 3  # the loop kept running while the model slept in its thread
    assert model.threads == {"predict-echo_0"}


def test_lone_small_requests_to_a_fast_model_are_predicted_on_the_loop() -> None:
    model = EchoModel()
    # a generous budget, so a busy test machine pausing one call cannot send the next ones to the thread
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=0.002, name="echo", inline_budget_s=0.05)

    async def scenario() -> tuple[list[list[str]], str]:
        labels = [(await batcher.submit(rows(i))).prediction.labels for i in range(20)]
        big = await batcher.submit(rows(*range(INLINE_MAX_ROWS + 1)))
        assert len(big.prediction.labels) == INLINE_MAX_ROWS + 1
        return labels, threading.current_thread().name

    labels, loop_thread = run(scenario())
    batcher.close()
    assert labels == [[f"v{i}"] for i in range(20)]
    assert batcher.calls == 21
    assert batcher.inline_calls == 19  # the first call times the model in the thread; a large one goes there
    assert model.threads == {loop_thread, "predict-echo_0"}


def test_a_slow_model_and_concurrent_requests_stay_off_the_loop() -> None:
    model = EchoModel(delay_s=0.002)  # 2 ms: ten times the default inline budget
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=0.0, name="slow")
    fast = EchoModel()
    fast_batcher = AdaptiveBatcher(fast, max_batch_size=64, max_wait_s=0.0, name="fast")

    async def scenario() -> None:
        for i in range(10):
            await batcher.submit(rows(i))
        await fast_batcher.submit(rows(0))  # timed in the thread: the model is fast
        for _ in range(5):
            await asyncio.gather(*(fast_batcher.submit(rows(i)) for i in range(8)))

    run(scenario())
    batcher.close()
    fast_batcher.close()
    assert batcher.inline_calls == 0 and model.threads == {"predict-slow_0"}
    # concurrent requests are batched in the thread; only a lone request after a lone call may go inline
    assert fast_batcher.inline_calls <= 1


def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    model = EchoModel(delay_s=0.05)
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_wait_s=0.0)

    async def scenario() -> list[object]:
        busy = asyncio.ensure_future(batcher.submit(rows(0)))  # occupies the model
        await asyncio.sleep(0)
        leaving = asyncio.ensure_future(batcher.submit(rows(1)))
        staying = asyncio.ensure_future(batcher.submit(rows(2)))
        await asyncio.sleep(0)
        leaving.cancel()
        return await asyncio.gather(busy, staying)

    results = run(scenario())
    batcher.close()
    assert [r.prediction.labels for r in results] == [["v0"], ["v2"]]  # type: ignore[attr-defined]
    assert model.batches == [1, 1]  # the cancelled request never reached the model


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        AdaptiveBatcher(EchoModel(), max_batch_size=0, max_wait_s=0)
    with pytest.raises(ValueError, match="max_wait_s must be >= 0"):
        AdaptiveBatcher(EchoModel(), max_batch_size=1, max_wait_s=-1)
    with pytest.raises(ValueError, match=r"inline_budget_s must be >= 0 \(0: never on the loop\), got -1"):
        AdaptiveBatcher(EchoModel(), max_batch_size=1, max_wait_s=0, inline_budget_s=-1)
