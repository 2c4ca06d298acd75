"""Where the data plane hands its answered rows: a PredictionSink, and the PredictionRecord it takes.

The data plane depends on this protocol, never on the SQLAlchemy prediction log that implements it
(``modelyard.serving.prediction_log.PredictionLog``), so this module imports neither. A sink takes
records without waiting on I/O and without raising, and can be asked to write what it holds now: the
server does that before it looks a fresh prediction up again (feedback on a request answered a moment
ago).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class PredictionRecord:
    """One answered row, as the data plane hands it over."""

    request_id: str
    row: int
    model: str
    version: str
    features: dict[str, Any]
    label: str | int
    probabilities: dict[str, float]
    latency_ms: float
    created_at: datetime


@runtime_checkable
class PredictionSink(Protocol):
    """What the data plane needs of a prediction log."""

    def submit(self, records: Sequence[PredictionRecord]) -> None:
        """Take records for writing; never blocks on I/O and never raises."""

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Write what was submitted so far; True when all of it is stored, False otherwise."""
        ...


__all__ = ["PredictionRecord", "PredictionSink"]
