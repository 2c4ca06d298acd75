"""Where the data plane hands its answered requests: a PredictionSink, and the PredictionRecord it takes.

The data plane depends on this protocol, never on the SQLAlchemy prediction log that implements it
(``modelyard.serving.prediction_log.PredictionLog``), so this module imports neither. A sink takes
records without waiting on I/O and without raising, and can be asked to write what it holds now: the
server does that before it looks a fresh prediction up again (feedback on a request answered a moment
ago).

A record describes one request, column by column: the data plane builds it from the arrays it already
holds (a reference per feature and per class, whatever the number of rows), and the sink converts them
off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class PredictionRecord:
    """One answered request of ``rows`` rows, as the data plane hands it over.

    ``features`` maps each feature to its ``rows`` values as the request sent them (a list or a numpy
    array; None or NaN where a value was missing), ``labels`` holds the predicted class of each row, and
    ``probabilities`` maps each class to its ``rows`` probabilities (empty when the model gave labels
    only). The sink must treat all three as read-only: they may be the data plane's own arrays, which
    the data plane never changes once handed over (the log may send them as they are until stored).
    ``answered`` is False for a shadow candidate's scoring of a request the stable version answered.
    """

    request_id: str
    model: str
    version: str
    rows: int
    features: Mapping[str, Any]  # name -> list or 1-d numpy array of ``rows`` values
    labels: Any  # list or 1-d numpy array of ``rows`` classes (str or int)
    probabilities: Mapping[str, Any]  # class -> list or 1-d numpy array of ``rows`` floats
    latency_ms: float
    created_at: datetime
    answered: bool = True


@runtime_checkable
class PredictionSink(Protocol):
    """What the data plane needs of a prediction log."""

    def submit(self, records: Sequence[PredictionRecord]) -> None:
        """Take records for writing; never blocks on I/O and never raises."""

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Write what was submitted so far; True when all of it is stored, False otherwise."""
        ...


__all__ = ["PredictionRecord", "PredictionSink"]
