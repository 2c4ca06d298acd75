"""A fitted classifier that sleeps a fixed time in each call, for latency checks with known answers.

Tests pickle it into bundles; a server process unpickles it with the repository root on PYTHONPATH."""

from __future__ import annotations

import time
from typing import Any


class SleepyClassifier:
    """``model``'s predictions, each call ``seconds`` late (a sleep: it holds neither the GIL nor a core);
    unpickling it takes ``load_seconds``."""

    def __init__(self, model: Any, seconds: float, load_seconds: float = 0.0) -> None:
        self.model = model
        self.seconds = seconds
        self.load_seconds = load_seconds
        self.classes_ = model.classes_

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(state.get("load_seconds", 0.0))  # a large model's unpickling, or its download
        self.__dict__.update(state)

    def predict_proba(self, frame: Any) -> Any:
        time.sleep(self.seconds)
        return self.model.predict_proba(frame)

    def predict(self, frame: Any) -> Any:
        time.sleep(self.seconds)
        return self.model.predict(frame)
