"""Prometheus metrics of the model server, served on ``GET /metrics``.

Every series lives in the server's own ``CollectorRegistry`` (not prometheus-client's global one, so two
servers in one test process never collide) and every name starts with ``modelyard_``:

=============================================  =========  ==========================================
name                                           type       labels
=============================================  =========  ==========================================
``modelyard_requests_total``                   counter    protocol, model, version, status
``modelyard_request_stage_seconds``            histogram  stage (decode, queue, predict, encode, total,
                                                          shadow), model, version
``modelyard_batch_rows``                       histogram  (rows in one model call)
``modelyard_predictions_total``                counter    model, version, class
``modelyard_prediction_confidence``            histogram  model, version (max probability of a row)
``modelyard_model_info``                       gauge = 1  model, version, algorithm, runtime, role
``modelyard_model_ready``                      gauge 0/1  model, version
``modelyard_shadow_compared_total``            counter    model, version (rows a shadow candidate scored)
``modelyard_shadow_agreed_total``              counter    model, version (... predicting the stable class)
``modelyard_shadow_skipped_total``             counter    model, version (rows not shadowed: backlog, stop)
``modelyard_prediction_log_queue_depth``       gauge
``modelyard_prediction_log_dropped_total``     counter    reason
``modelyard_prediction_log_written_total``     counter    (rows inserted into the database)
``modelyard_prediction_log_spooled_total``     counter    (rows written to the local spool)
``modelyard_prediction_log_replayed_total``    counter    (spooled rows replayed later)
``modelyard_prediction_log_spool_bytes``       gauge      (size of the spool file)
``modelyard_process_*``                        various    CPU, RSS, open fds (own registry only)
=============================================  =========  ==========================================

Label values must come from the server, never straight from a request: ``model`` is the served model's
name (not the name in an unknown URL), ``version`` the version that answered (or, for a shadow candidate,
scored), ``status`` an HTTP code or gRPC code name. Unknown protocols and stages are refused, so a caller's
typo cannot mint new series. A shadow candidate's copies of requests are counted under the protocol
``shadow`` and timed under the stage ``shadow`` (not ``total``), so they never pass for client traffic;
``role`` on ``modelyard_model_info`` (``stable`` or ``candidate``) lets alerts leave a candidate to the
rollout analysis.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from modelyard.monitoring.drift import DriftMonitor

SHADOW_PROTOCOL = "shadow"  # the protocol label of the copies a shadow candidate scores
PROTOCOLS = ("v1", "v2-rest", "v2-grpc", SHADOW_PROTOCOL)
STAGES = ("decode", "queue", "predict", "encode", "total")  # of every request a version answers
SHADOW_STAGE = (
    "shadow"  # a shadow candidate's time to score a request: the request's decoding, queue, predict
)
ROLES = ("stable", "candidate")
# 0.1 ms .. 10 s: a LogisticRegression row takes ~0.2 ms, a cold RandomForest batch seconds.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_ROWS_BUCKETS = tuple(float(2**power) for power in range(15))  # 1 .. 16384 rows
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Why the prediction log gave records up (see PredictionLog).
DROP_REASONS = ("queue_full", "spool_full", "rejected", "invalid", "stopped", "writer_failed")


class _BulkHistogram(Collector):
    """A labelled histogram that takes a whole array per call.

    prometheus-client's Histogram observes one value per call (a lock and a Python loop per row); a
    10,000-row request would spend ~15 ms there. Here one call costs a numpy ``searchsorted``.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]):
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._lock = threading.Lock()
        # per label tuple: (non-cumulative counts, one slot per bound plus +Inf; sum of values)
        self._series: dict[tuple[str, ...], tuple[np.ndarray, float]] = {}

    def observe(self, labelvalues: tuple[str, ...], values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return
        # side="left": the first bound >= value, i.e. Prometheus' "le" (less than or equal) bucket.
        slots = np.searchsorted(self._bounds, finite, side="left")
        counts = np.bincount(slots, minlength=len(self._bounds) + 1)
        total = float(finite.sum())
        with self._lock:
            previous = self._series.get(labelvalues)
            if previous is None:
                self._series[labelvalues] = (counts, total)
            else:
                self._series[labelvalues] = (previous[0] + counts, previous[1] + total)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            series = list(self._series.items())
        bounds = [*(repr(float(bound)) for bound in self._bounds), "+Inf"]
        for labelvalues, (counts, total) in series:
            cumulative = np.cumsum(counts)
            buckets = [(bound, float(count)) for bound, count in zip(bounds, cumulative, strict=True)]
            family.add_metric(list(labelvalues), buckets, sum_value=total)
        yield family


class Together(Collector):
    """Collectors of one kind (the live accuracy of the stable and the candidate version) as one: an
    exposition may describe each metric family once, so their samples are merged by family."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = list(collectors)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily, as each collector is

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for collector in self.collectors:
            for family in collector.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


class ServingMetrics:
    """The server's metrics. Cheap to call on the request path; thread-safe."""

    def __init__(self, registry: CollectorRegistry | None = None, *, drift: bool = True) -> None:
        own_registry = registry is None
        self.registry = CollectorRegistry() if registry is None else registry
        # modelyard_drift_*, modelyard_output_drift_*, modelyard_estimated_accuracy (monitoring/drift.py)
        self.drift = DriftMonitor() if drift else None
        if self.drift is not None:
            self.registry.register(self.drift)
        if own_registry:
            # Registered only on a registry of our own: the global one already has process_* series.
            ProcessCollector(namespace="modelyard", registry=self.registry)
        self._requests = Counter(
            "modelyard_requests",
            "Inference requests answered, by protocol, model, version and status (HTTP code or gRPC code).",
            ["protocol", "model", "version", "status"],
            registry=self.registry,
        )
        self._stage_seconds = Histogram(
            "modelyard_request_stage_seconds",
            "Time spent per request stage: decode, queue (waiting for a batch), predict, encode, total; "
            "by the model and version that answered. A shadow candidate's time per request is its stage "
            "shadow (decode, queue and predict), never total.",
            ["stage", "model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._stage_children: dict[tuple[str, str, str], Any] = {}
        self._batch_rows = Histogram(
            "modelyard_batch_rows",
            "Rows passed to the model in one call (after micro-batching).",
            buckets=BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )
        self._predictions = Counter(
            "modelyard_predictions",
            "Predicted rows by predicted class.",
            ["model", "version", "class"],
            registry=self.registry,
        )
        self._confidence = _BulkHistogram(
            "modelyard_prediction_confidence",
            "Probability of the predicted class (the highest probability of each row).",
            ["model", "version"],
            CONFIDENCE_BUCKETS,
        )
        self.registry.register(self._confidence)
        self._model_info = Gauge(
            "modelyard_model_info",
            "The served model: always 1, the labels carry the information.",
            ["model", "version", "algorithm", "runtime", "role"],
            registry=self.registry,
        )
        self._model_ready = Gauge(
            "modelyard_model_ready",
            "1 when the model is loaded and answers predictions, else 0.",
            ["model", "version"],
            registry=self.registry,
        )
        self._model_labels: dict[tuple[str, str], tuple[str, str, str, str, str]] = {}
        self._shadow_compared = Counter(
            "modelyard_shadow_compared",
            "Rows a shadow candidate scored beside the stable version, by the candidate's version.",
            ["model", "version"],
            registry=self.registry,
        )
        self._shadow_agreed = Counter(
            "modelyard_shadow_agreed",
            "Rows a shadow candidate predicted as the stable version did, by the candidate's version.",
            ["model", "version"],
            registry=self.registry,
        )
        self._shadow_skipped = Counter(
            "modelyard_shadow_skipped",
            "Rows the shadow candidate did not score: too many waited for it already, or the server "
            "stopped first.",
            ["model", "version"],
            registry=self.registry,
        )
        self._model_lock = threading.Lock()
        self._log_queue = Gauge(
            "modelyard_prediction_log_queue_depth",
            "Prediction-log records (one per answered request, whatever its rows) held in memory, waiting to "
            "be written.",
            registry=self.registry,
        )
        self._log_dropped = Counter(
            "modelyard_prediction_log_dropped",
            "Prediction-log records (one per request) given up: queue_full, spool_full, rejected (by the "
            "database, or values its columns cannot take), invalid, stopped (submitted after stop).",
            ["reason"],
            registry=self.registry,
        )
        # Every reason exists from the start at 0, so rate() and alerts see the first drop.
        self._log_dropped_children = {reason: self._log_dropped.labels(reason) for reason in DROP_REASONS}
        self._log_written = Counter(
            "modelyard_prediction_log_written",
            "Prediction-log records (one per answered request, whatever its rows) inserted into the database "
            "(replayed ones included).",
            registry=self.registry,
        )
        self._log_spooled = Counter(
            "modelyard_prediction_log_spooled",
            "Prediction-log records (one per request) written to the local spool because the database was "
            "unreachable.",
            registry=self.registry,
        )
        self._log_replayed = Counter(
            "modelyard_prediction_log_replayed",
            "Spooled prediction-log records (one per request) replayed into the database once it came back "
            "(any it already held included).",
            registry=self.registry,
        )
        self._log_spool_bytes = Gauge(
            "modelyard_prediction_log_spool_bytes",
            "Size of the prediction-log spool file (0 when nothing waits to be replayed).",
            registry=self.registry,
        )

    # ------------------------------------------------------------ requests

    def observe_request(self, protocol: str, model: str, version: str, status: int | str) -> None:
        """Count one answered request; ``status`` is an HTTP code (200, 400, ...) or a gRPC code name."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
        self._requests.labels(protocol, model, version, str(status)).inc()

    def observe_stage(self, stage: str, seconds: float, model: str, version: str) -> None:
        """Record how long one request to ``model`` at ``version`` spent in ``stage`` (decode, queue,
        predict, encode or total; shadow for a shadow candidate's whole scoring)."""
        child = self._stage_children.get((stage, model, version))
        if child is None:
            child = self._stage_child(stage, model, version)
        child.observe(seconds)

    def _stage_child(self, stage: str, model: str, version: str) -> Any:
        if stage not in STAGES and stage != SHADOW_STAGE:
            raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}, {SHADOW_STAGE}")
        child = self._stage_children[(stage, model, version)] = self._stage_seconds.labels(
            stage, model, version
        )
        return child

    def observe_batch(self, rows: int) -> None:
        """Record the rows of one model call."""
        self._batch_rows.observe(rows)

    def observe_predictions(
        self, model: str, version: str, labels: Sequence[str] | np.ndarray, confidences: np.ndarray
    ) -> None:
        """Count predicted classes and record each row's confidence.

        ``confidences`` is the probability of each row's predicted class (shape [N]); a probability
        matrix [N, n_classes] is accepted too and reduced to its row maxima.
        """
        values = np.asarray(confidences, dtype=np.float64)
        if values.ndim == 2:
            values = values.max(axis=1) if values.shape[1] else np.empty(0)
        if values.ndim != 1 or values.shape[0] != len(labels):
            raise ValueError(
                f"confidences must have one value per label: {len(labels)} label(s), "
                f"confidences of shape {list(np.shape(confidences))}"
            )
        tally = Tally(labels.tolist() if isinstance(labels, np.ndarray) else labels)
        for label, count in tally.items():
            self._predictions.labels(model, version, str(label)).inc(count)
        self._confidence.observe((model, version), values)

    # ------------------------------------------------------------ shadow candidate

    def start_shadow(self, model: str, version: str) -> None:
        """Export the shadow counters of a candidate at 0, so the first rows it scores show in rate()."""
        self._shadow_compared.labels(model, version)
        self._shadow_agreed.labels(model, version)
        self._shadow_skipped.labels(model, version)
        self._stage_child(SHADOW_STAGE, model, version)

    def observe_shadow(self, model: str, version: str, compared: int, agreed: int) -> None:
        """Count rows the candidate ``version`` scored beside the stable one, and those it agreed on."""
        if agreed > compared:
            raise ValueError(f"{agreed} agreed row(s) of {compared} compared: at most all of them agree")
        self._shadow_compared.labels(model, version).inc(compared)
        self._shadow_agreed.labels(model, version).inc(agreed)

    def count_shadow_skipped(self, model: str, version: str, rows: int) -> None:
        self._shadow_skipped.labels(model, version).inc(rows)

    # ------------------------------------------------------------ model

    def set_model_info(
        self, model: str, version: str, algorithm: str, runtime: str, ready: bool, *, role: str = "stable"
    ) -> None:
        """Describe the served model; a later call for the same model and ``role`` (``stable``, or
        ``candidate`` for a version rolled out beside it) replaces its series."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        labels = (model, version, algorithm, runtime, role)
        with self._model_lock:
            previous = self._model_labels.get((model, role))
            if previous is not None and previous != labels:
                self._model_info.remove(*previous)
                if previous[:2] != labels[:2]:
                    self._model_ready.remove(*previous[:2])
            self._model_labels[(model, role)] = labels
            self._model_info.labels(*labels).set(1)
            self._model_ready.labels(model, version).set(1 if ready else 0)
        for stage in STAGES:  # exported from the start, at zero, so rate() sees the first request
            self._stage_child(stage, model, version)

    # ------------------------------------------------------------ prediction log

    def set_log_queue(self, depth: int) -> None:
        self._log_queue.set(depth)

    def count_log_dropped(self, n: int, reason: str = "queue_full") -> None:
        child = self._log_dropped_children.get(reason)
        if child is None:
            raise ValueError(f"unknown drop reason {reason!r}: use one of {', '.join(DROP_REASONS)}")
        if n > 0:
            child.inc(n)

    def count_log_written(self, n: int) -> None:
        if n > 0:
            self._log_written.inc(n)

    def count_log_spooled(self, n: int) -> None:
        if n > 0:
            self._log_spooled.inc(n)

    def count_log_replayed(self, n: int) -> None:
        if n > 0:
            self._log_replayed.inc(n)

    def set_log_spool_bytes(self, size: int) -> None:
        self._log_spool_bytes.set(size)

    # ------------------------------------------------------------ exposition

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type for ``GET /metrics``.

        Without ``accept`` this is Prometheus' text format; pass the request's Accept header to let a
        scraper that asks for OpenMetrics have it.
        """
        if accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
