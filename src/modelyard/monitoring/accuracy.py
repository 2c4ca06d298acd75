"""Live accuracy: logged predictions joined to their feedback by request id, over matured windows.

Labels arrive late, so a window is judged only once it has *matured*: it ends ``maturity`` before now.
:func:`live_accuracy` reads one window from the registry database (each label joined to the logged request
by request id and model, then to its row's predicted class) and returns accuracy and macro-F1 of the
labelled rows, the label counts and the label coverage. Where rows have no label, a confidence-based
estimate (CBPE) is computed from the logged probabilities and the holdout calibration of the bundle's
drift reference, and named as an estimate everywhere it appears.

:class:`AccuracyCollector` refreshes that window on a thread of its own and exports it to Prometheus,
so a scrape never waits for the database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Connection, Engine, and_, func, select

from modelyard.bundle import BundleMetadata
from modelyard.monitoring.drift import drift_reference_of
from modelyard.monitoring.reference import CONFIDENCE_OUTPUT, Binning
from modelyard.registry.packed import logged_columns
from modelyard.registry.tables import Feedback, Prediction
from modelyard.settings import MonitoringSettings, load_settings

log = logging.getLogger(__name__)

# Rows of unlabelled probabilities read for the estimate: a sample, newest first, bounds the query.
ESTIMATE_SAMPLE_ROWS = 50_000
# Logged requests fetched per round trip while that sample is gathered.
ESTIMATE_CHUNK_REQUESTS = 500


@dataclass(frozen=True)
class AccuracyWindow:
    """One window's live accuracy. ``accuracy`` and ``macro_f1`` are None without labelled rows."""

    model: str
    version: str | None
    since: datetime
    until: datetime
    predicted_rows: int
    labelled_rows: int
    accuracy: float | None
    macro_f1: float | None
    label_counts: dict[str, int] = field(default_factory=dict)
    estimated_accuracy: float | None = None
    """CBPE estimate over the rows without a label (None without a calibration or such rows)."""

    @property
    def coverage(self) -> float:
        return self.labelled_rows / self.predicted_rows if self.predicted_rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "predicted_rows": self.predicted_rows,
            "labelled_rows": self.labelled_rows,
            "label_coverage": self.coverage,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "label_counts": self.label_counts,
            "estimated_accuracy": self.estimated_accuracy,
        }


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in either list (scikit-learn's definition)."""
    classes = sorted(set(truth) | set(predicted))
    if not classes:
        return 0.0
    t = np.asarray(truth, dtype=object)
    p = np.asarray(predicted, dtype=object)
    scores = []
    for label in classes:
        true_positive = int(np.sum((t == label) & (p == label)))
        denominator = int(np.sum(t == label)) + int(np.sum(p == label))
        scores.append(2.0 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


def estimate_accuracy(
    reference: Mapping[str, Any], probabilities: Sequence[Mapping[str, float]]
) -> float | None:
    """CBPE: the calibrated accuracy of each row's confidence bin, averaged. None when it cannot be told."""
    calibration = reference.get("calibration")
    if not calibration or not probabilities:
        return None
    binning = Binning(reference, [])
    if CONFIDENCE_OUTPUT not in binning.slices:
        return None
    confidence = np.array([max(row.values()) if row else np.nan for row in probabilities], dtype="float64")
    confidence = confidence[np.isfinite(confidence)]
    if confidence.size == 0:
        return None
    accuracy = np.asarray(calibration["accuracy"], dtype="float64")
    return float(accuracy[binning.bin_numeric_output(confidence)].mean())


def live_accuracy(
    engine: Engine,
    model: str,
    *,
    since: datetime,
    until: datetime,
    version: str | None = None,
    reference_stats: Mapping[str, Any] | None = None,
) -> AccuracyWindow:
    """The live accuracy of ``model`` (one ``version`` or all) over predictions made in [since, until)."""
    if until <= since:
        raise ValueError(
            f"the window must end after it starts: since {since.isoformat()}, until {until.isoformat()}"
        )
    conditions = [Prediction.model == model, Prediction.created_at >= since, Prediction.created_at < until]
    if version is not None:
        conditions.append(Prediction.version == version)  # a shadow candidate's rows included
    else:
        conditions.append(Prediction.answered.is_(True))  # what clients got: a shadowed request once
    joined = and_(
        Feedback.request_id == Prediction.request_id,
        Feedback.model == Prediction.model,
        # a label grades the prediction it was given for: a later one that reused the id is not graded
        Feedback.created_at >= Prediction.created_at,
    )
    with engine.connect() as connection:
        predicted_rows = int(
            connection.execute(
                select(func.coalesce(func.sum(Prediction.rows), 0)).where(*conditions)
            ).scalar_one()
        )
        # Each label names a row of a logged request (of every version that logged it); the row's
        # predicted class is read from the request's labels, fetched once per labelled request.
        graded = connection.execute(
            select(Prediction.id, Feedback.row, Feedback.label).join(Feedback, joined).where(*conditions)
        ).all()
        labelled_ids = {prediction_id for prediction_id, _, _ in graded}
        predicted_labels: dict[int, list[Any]] = {}
        if labelled_ids:
            labelled = select(Feedback.id).where(joined).exists()
            for prediction_id, labels in connection.execute(
                select(Prediction.id, Prediction.labels).where(*conditions, labelled)
            ):
                predicted_labels[prediction_id] = labels if isinstance(labels, list) else []
        pairs: list[tuple[str, str]] = []
        labelled_rows: dict[int, set[int]] = {}
        for prediction_id, row, true_label in graded:
            labels = predicted_labels.get(prediction_id, [])
            if row < len(labels) and labels[row] is not None:
                pairs.append((str(labels[row]), str(true_label)))
                labelled_rows.setdefault(prediction_id, set()).add(row)
        unlabelled: list[Mapping[str, float]] = []
        reference = drift_reference_of(reference_stats)
        if reference is not None and predicted_rows > len(pairs):
            unlabelled = _unlabelled_probabilities(connection, conditions, labelled_rows)
    predicted = [p for p, _ in pairs]
    truth = [t for _, t in pairs]
    counts: dict[str, int] = {}
    for label in truth:
        counts[label] = counts.get(label, 0) + 1
    hits = sum(1 for p, t in zip(predicted, truth, strict=True) if p == t)
    return AccuracyWindow(
        model=model,
        version=version,
        since=since,
        until=until,
        predicted_rows=predicted_rows,
        labelled_rows=len(pairs),
        accuracy=hits / len(pairs) if pairs else None,
        macro_f1=macro_f1(truth, predicted) if pairs else None,
        label_counts=dict(sorted(counts.items())),
        estimated_accuracy=estimate_accuracy(reference, unlabelled) if reference is not None else None,
    )


def _unlabelled_probabilities(
    connection: Connection, conditions: Sequence[ColumnElement[bool]], labelled: Mapping[int, set[int]]
) -> list[Mapping[str, float]]:
    """``{class: probability}`` of each row without a label, newest request first, at most
    ESTIMATE_SAMPLE_ROWS rows; requests are read a chunk at a time, and no further than needed."""
    found: list[Mapping[str, float]] = []
    requests = connection.execute(
        select(Prediction.id, Prediction.rows, Prediction.probabilities, Prediction.packed_probabilities)
        .where(*conditions)
        .order_by(Prediction.created_at.desc())
        .execution_options(yield_per=ESTIMATE_CHUNK_REQUESTS)
    )
    for prediction_id, rows, stored, packed in requests:
        probabilities = logged_columns(stored if isinstance(stored, dict) else None, packed)
        if not probabilities:
            continue
        skip = labelled.get(prediction_id, set())
        classes = list(probabilities)
        for row in range(rows):
            if row in skip:
                continue
            values = {c: probabilities[c][row] for c in classes if probabilities[c][row] is not None}
            if values:
                found.append(values)
        if len(found) >= ESTIMATE_SAMPLE_ROWS:
            requests.close()
            return found[:ESTIMATE_SAMPLE_ROWS]
    return found


class AccuracyCollector(Collector):
    """Exports one model version's live accuracy; a thread refreshes it every ``refresh_seconds``.

    =======================================  =====  ==========================================================
    ``modelyard_live_accuracy``              gauge  accuracy of the labelled rows (from ``min_labels`` rows)
    ``modelyard_live_macro_f1``              gauge  macro-F1 of the labelled rows (from ``min_labels`` rows)
    ``modelyard_live_predicted_rows``        gauge  rows predicted in the matured window
    ``modelyard_live_labelled_rows``         gauge  of those, rows with feedback
    ``modelyard_live_label_coverage``        gauge  labelled / predicted
    ``modelyard_live_label_rows``            gauge  labelled rows by true ``class`` (the model's classes)
    ``modelyard_live_estimated_accuracy``    gauge  ESTIMATE (CBPE) over the window's unlabelled rows
    ``modelyard_accuracy_gate``              gauge  the accuracy below which the model alerts
    =======================================  =====  ==========================================================

    Every series is labelled ``model`` and ``version``; ``window`` says the window length, e.g. ``24h``.
    """

    def __init__(
        self,
        engine: Engine,
        model: str,
        version: str,
        *,
        gate: float,
        classes: Sequence[str | int] = (),
        reference_stats: Mapping[str, Any] | None = None,
        window: timedelta = timedelta(hours=24),
        maturity: timedelta = timedelta(hours=1),
        min_labels: int = 30,
        refresh_seconds: float = 60.0,
    ) -> None:
        self.engine = engine
        self.model = model
        self.version = version
        self.gate = gate
        self.classes = {str(c) for c in classes}
        self.reference_stats = reference_stats
        self.window = window
        self.maturity = maturity
        self.min_labels = min_labels
        self.refresh_seconds = refresh_seconds
        self.latest: AccuracyWindow | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self, now: datetime | None = None) -> AccuracyWindow:
        until = (now or datetime.now(UTC)) - self.maturity
        self.latest = live_accuracy(
            self.engine,
            self.model,
            since=until - self.window,
            until=until,
            version=self.version,
            reference_stats=self.reference_stats,
        )
        return self.latest

    def start(self) -> None:
        """Refresh now and then every ``refresh_seconds`` on a daemon thread, until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"accuracy-{self.model}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # a database outage must not end the thread: the next refresh retries
                log.exception("could not refresh the live accuracy of %s", self.model)
            self._stop.wait(self.refresh_seconds)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "window"]
        hours = self.window.total_seconds() / 3600
        base = [self.model, self.version, f"{hours:g}h"]
        gate = GaugeMetricFamily(
            "modelyard_accuracy_gate", "Live accuracy below this alerts.", labels=labels[:2]
        )
        gate.add_metric(base[:2], self.gate)
        yield gate
        window = self.latest
        if window is None:
            return
        families = {
            "predicted": GaugeMetricFamily(
                "modelyard_live_predicted_rows", "Rows predicted in the matured window.", labels=labels
            ),
            "labelled": GaugeMetricFamily(
                "modelyard_live_labelled_rows", "Rows of the matured window with feedback.", labels=labels
            ),
            "coverage": GaugeMetricFamily(
                "modelyard_live_label_coverage", "Labelled rows / predicted rows.", labels=labels
            ),
        }
        families["predicted"].add_metric(base, window.predicted_rows)
        families["labelled"].add_metric(base, window.labelled_rows)
        families["coverage"].add_metric(base, window.coverage)
        yield from families.values()
        per_class = GaugeMetricFamily(
            "modelyard_live_label_rows", "Labelled rows by true class.", labels=[*labels, "class"]
        )
        for label, count in window.label_counts.items():
            if not self.classes or label in self.classes:
                per_class.add_metric([*base, label], count)
        yield per_class
        if window.labelled_rows >= self.min_labels and window.accuracy is not None:
            accuracy = GaugeMetricFamily(
                "modelyard_live_accuracy",
                "Accuracy of the labelled rows of the matured window.",
                labels=labels,
            )
            accuracy.add_metric(base, window.accuracy)
            yield accuracy
            f1 = GaugeMetricFamily("modelyard_live_macro_f1", "Macro-F1 of the labelled rows.", labels=labels)
            f1.add_metric(base, window.macro_f1 or 0.0)
            yield f1
        if window.estimated_accuracy is not None:
            estimate = GaugeMetricFamily(
                "modelyard_live_estimated_accuracy",
                "An ESTIMATE (CBPE) of accuracy on the matured window's rows that have no label.",
                labels=labels,
            )
            estimate.add_metric(base, window.estimated_accuracy)
            yield estimate


def accuracy_gate(metadata: BundleMetadata, tolerance: float) -> float:
    """Live accuracy below this alerts: the holdout accuracy less ``tolerance`` (0 without one)."""
    holdout = metadata.metrics.get("accuracy")
    return max(0.0, float(holdout) - tolerance) if holdout is not None else 0.0


def start_accuracy_collector(
    registry: Any,
    engine: Engine,
    name: str,
    version: str,
    metadata: BundleMetadata,
    settings: MonitoringSettings | None = None,
) -> AccuracyCollector:
    """Register and start the live accuracy of a served bundle on a server's Prometheus ``registry`` (None:
    the caller registers it, e.g. with another version's, as one exposition may hold a family once)."""
    config = settings or load_settings().monitoring
    collector = AccuracyCollector(
        engine,
        name,
        version,
        gate=accuracy_gate(metadata, config.accuracy_tolerance),
        classes=metadata.classes,
        reference_stats=metadata.reference_stats,
        window=timedelta(hours=config.accuracy_window_h),
        maturity=timedelta(hours=config.accuracy_maturity_h),
        refresh_seconds=config.accuracy_refresh_s,
    )
    if registry is not None:
        registry.register(collector)
    collector.start()
    return collector


__all__ = [
    "AccuracyCollector",
    "AccuracyWindow",
    "accuracy_gate",
    "estimate_accuracy",
    "live_accuracy",
    "macro_f1",
    "start_accuracy_collector",
]
