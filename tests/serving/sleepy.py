"""A fitted classifier that sleeps a fixed time in each call, for latency checks with known answers.

Tests pickle it into bundles; a server process unpickles it with the repository root on PYTHONPATH."""

from __future__ import annotations

import time
from typing import Any


class SleepyClassifier:
    """``model``'s predictions, each call ``seconds`` late (a sleep: it holds neither the GIL nor a core)."""

    def __init__(self, model: Any, seconds: float) -> None:
        self.model = model
        self.seconds = seconds
        self.classes_ = model.classes_

    def predict_proba(self, frame: Any) -> Any:
        time.sleep(self.seconds)
        return self.model.predict_proba(frame)

    def predict(self, frame: Any) -> Any:
        time.sleep(self.seconds)
        return self.model.predict(frame)
