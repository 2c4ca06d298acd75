"""Online drift: live traffic binned like the reference, and its distance from it, as Prometheus metrics.

:class:`DriftMonitor` is a prometheus-client collector. The server calls :meth:`DriftMonitor.observe` after
each prediction with the batch's columns and probabilities; that only queues the batch. Every few hundred
batches (and before each scrape) the queued rows are binned together, which costs about a dozen numpy
operations whatever the number of rows, and added to the current slot of a sliding window. Distances are
computed only when Prometheus scrapes.

Exported, per model and version (``feature`` is a feature of the bundle's schema, ``output`` is
``class`` or ``confidence``, ``bin`` a label from the reference; every label set is bounded by the
reference, never by the traffic):

=============================================  =======  ====================================================
``modelyard_drift_enabled``                    gauge    1 when the bundle carries a drift reference
``modelyard_drift_window_rows``                gauge    rows in the current window
``modelyard_drift_psi``                        gauge    feature: population stability index, window vs ref
``modelyard_drift_js_distance``                gauge    feature: Jensen-Shannon distance (base 2, 0..1)
``modelyard_drift_bin_rows_total``             counter  feature, bin: binned rows per bin since start
``modelyard_drift_reference_share``            gauge    feature, bin: the reference's share of the bin
``modelyard_drift_oov_rate``                   gauge    feature: out-of-vocabulary token share (text)
``modelyard_drift_reference_oov_rate``         gauge    feature
``modelyard_output_drift_psi``                 gauge    output
``modelyard_output_drift_js_distance``         gauge    output
``modelyard_output_drift_bin_rows_total``      counter  output, bin
``modelyard_output_drift_reference_share``     gauge    output, bin
``modelyard_estimated_accuracy``               gauge    CBPE estimate over the window (no labels needed)
=============================================  =======  ====================================================

Under heavy traffic a uniform sample of the rows is binned: every stride-th row, the stride chosen from the
previous slot's rows so that a slot bins about ``target_rows_per_slot`` rows, and raised within a slot as
soon as it has seen target x stride rows (a burst, or a server's first slot, has no previous slot to go
by). Shares, and so distances,
are unbiased; the bin counters count binned rows. Distances are exported only once the window has binned
``min_rows`` rows; with fewer, sampling noise alone would look like drift. The counters let Prometheus
compare all replicas' traffic with the reference (the model dashboard's bin panel does).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.monitoring.reference import DRIFT_FORMAT, Binning

log = logging.getLogger(__name__)

# Smallest share a bin is given before a logarithm: an empty bin on one side must not make PSI infinite.
SHARE_FLOOR = 1e-4


def psi(current: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two share vectors: sum of (p - q) * ln(p / q)."""
    p = np.maximum(np.asarray(current, dtype="float64"), SHARE_FLOOR)
    q = np.maximum(np.asarray(reference, dtype="float64"), SHARE_FLOOR)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(current: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance (the square root of the divergence, base 2): 0 identical, 1 disjoint."""
    p = np.asarray(current, dtype="float64")
    q = np.asarray(reference, dtype="float64")
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = 0.5 * np.nansum(np.where(p > 0, p * np.log2(p / m), 0.0)) + 0.5 * np.nansum(
            np.where(q > 0, q * np.log2(q / m), 0.0)
        )
    return float(math.sqrt(max(0.0, min(1.0, divergence))))


def drift_reference_of(reference_stats: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The drift reference inside a bundle's ``reference_stats``, or None for bundles made without one."""
    drift = (reference_stats or {}).get("drift")
    if isinstance(drift, dict) and drift.get("format") == DRIFT_FORMAT:
        return drift
    return None


@dataclass
class _Tracked:
    model: str
    version: str
    binning: Binning | None
    reference: dict[str, Any]
    slot_seconds: float
    slots: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    window: np.ndarray = field(init=False)
    totals: np.ndarray = field(init=False)
    rows: np.ndarray = field(init=False)
    current: int = 0
    # batches observed but not yet binned: (numeric, other, probabilities, rows)
    pending: list[tuple[np.ndarray, Mapping[str, np.ndarray], np.ndarray | None]] = field(
        default_factory=list
    )
    pending_rows: int = 0
    # Under heavy traffic only every stride-th row is binned (a uniform sample of the row stream, so the
    # shares are unbiased); the stride follows the previous slot's rows so a slot bins about target rows.
    target_rows: int = 2000
    stride: int = 1
    offset: int = 0
    seen: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        size = self.binning.size if self.binning is not None else 0
        self.window = np.zeros((self.slots, size), dtype=np.int64)
        self.totals = np.zeros(size, dtype=np.int64)
        self.rows = np.zeros(self.slots, dtype=np.int64)
        self.seen = np.zeros(self.slots, dtype=np.int64)
        self.current = self._slot_now()

    def _slot_now(self) -> int:
        return int(time.monotonic() // self.slot_seconds)

    def speed_up(self, seen: int) -> None:
        """The current slot has seen ``seen`` rows, target x stride already: grow the stride to the rows
        the slot is on course to see over the target, so a burst (or a server's first slot) is sampled
        like steady traffic. Call with the lock held."""
        elapsed = max(time.monotonic() - self.current * self.slot_seconds, 1e-3)
        on_course = seen * self.slot_seconds / elapsed
        self.stride = max(self.stride + 1, int(on_course // self.target_rows))

    def advance(self) -> int:
        """Clear the slots the clock moved past; the index of the current slot. Call with the lock held."""
        now = self._slot_now()
        if now != self.current:
            last_seen = int(self.seen[self.current % self.slots]) if now == self.current + 1 else 0
            self.stride = max(1, last_seen // self.target_rows)
            for step in range(self.current + 1, min(now, self.current + self.slots) + 1):
                self.window[step % self.slots] = 0
                self.rows[step % self.slots] = 0
                self.seen[step % self.slots] = 0
            self.current = now
        return now % self.slots


class DriftMonitor(Collector):
    """Per served model: bin counts of a sliding window, and distances from the reference at scrape time.

    ``window_seconds`` is split into ``slots`` slots; the window always covers the last full slots plus the
    current one. ``max_features`` bounds the ``feature`` label: a wider schema tracks its first features.
    """

    def __init__(
        self,
        *,
        window_seconds: float = 600.0,
        slots: int = 10,
        min_rows: int = 200,
        max_features: int = 100,
        pending_batches: int = 256,
        pending_rows: int = 8192,
        target_rows_per_slot: int = 2000,
    ) -> None:
        if window_seconds <= 0 or slots < 1 or min_rows < 1 or max_features < 1:
            raise ValueError(
                "window_seconds must be positive and slots, min_rows, max_features at least 1, got "
                f"{window_seconds}, {slots}, {min_rows}, {max_features}"
            )
        self.window_seconds = window_seconds
        self.slots = slots
        self.min_rows = min_rows
        self.max_features = max_features
        self.pending_batches = pending_batches
        self.pending_rows = pending_rows
        self.target_rows_per_slot = target_rows_per_slot
        self._models: dict[str, _Tracked] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the hot path

    def attach(
        self,
        model: str,
        version: str,
        reference_stats: Mapping[str, Any] | None,
        numeric_columns: Sequence[str],
    ) -> bool:
        """Start tracking ``model``; ``numeric_columns`` orders the numeric matrix :meth:`observe` gets.

        A bundle without a drift reference is tracked as disabled: one log line, and
        ``modelyard_drift_enabled`` 0. True when drift is on.
        """
        reference = drift_reference_of(reference_stats)
        binning = None
        if reference is None:
            log.warning(
                "drift is off for model %s@%s: its bundle has no drift reference", model, version or "-"
            )
        else:
            reference = self._bounded(reference, model)
            binning = Binning(reference, numeric_columns)
        tracked = _Tracked(
            model,
            version,
            binning,
            reference or {},
            self.window_seconds / self.slots,
            self.slots,
            target_rows=self.target_rows_per_slot,
        )
        with self._lock:
            self._models[model] = tracked
        return binning is not None

    def observe(
        self,
        model: str,
        numeric: np.ndarray,
        other: Mapping[str, np.ndarray],
        probabilities: np.ndarray | None,
    ) -> None:
        """Count one batch of ``model``'s rows (see :meth:`Binning.count`). Unknown models are ignored."""
        tracked = self._models.get(model)
        if tracked is None or tracked.binning is None:
            return
        # Binning costs the same dozen numpy calls for one row as for a thousand: batches wait here and
        # are binned together once enough have come, or when a scrape asks.
        rows = len(numeric)
        with tracked.lock:
            slot = tracked.advance()
            tracked.seen[slot] += rows
            seen = int(tracked.seen[slot])
            if seen >= tracked.target_rows * tracked.stride:
                tracked.speed_up(seen)
            stride = tracked.stride
            first = -tracked.offset % stride
            tracked.offset += rows
            if first >= rows:
                return
            if stride > 1:
                numeric = numeric[first::stride]
                other = {name: column[first::stride] for name, column in other.items()}
                probabilities = None if probabilities is None else probabilities[first::stride]
            tracked.pending.append((numeric, other, probabilities))
            tracked.pending_rows += len(numeric)
            due = len(tracked.pending) >= self.pending_batches or tracked.pending_rows >= self.pending_rows
        if due:
            self._bin_pending(tracked)

    def _bin_pending(self, tracked: _Tracked) -> None:
        with tracked.lock:
            pending, tracked.pending, tracked.pending_rows = tracked.pending, [], 0
        if not pending or tracked.binning is None:
            return
        counts = np.zeros(tracked.binning.size, dtype=np.int64)
        rows = 0
        # same-shaped batches (each request's) are concatenated and binned in one pass
        with_outputs = [batch for batch in pending if batch[2] is not None]
        without = [batch for batch in pending if batch[2] is None]
        for group in (with_outputs, without):
            if not group:
                continue
            numeric = np.concatenate([batch[0] for batch in group])
            names = group[0][1].keys()
            other = {name: np.concatenate([batch[1][name] for batch in group]) for name in names}
            probabilities = None
            if group is with_outputs:
                probabilities = np.concatenate([batch[2] for batch in group if batch[2] is not None])
            counts += tracked.binning.count(numeric, other, probabilities)
            rows += len(numeric)
        with tracked.lock:
            slot = tracked.advance()
            tracked.window[slot] += counts
            tracked.rows[slot] += rows
            tracked.totals += counts

    def detach(self, model: str) -> None:
        with self._lock:
            self._models.pop(model, None)

    # ------------------------------------------------------------ what a scrape sees

    def window(self, model: str) -> tuple[int, np.ndarray] | None:
        """(rows, bin counts) of ``model``'s current window, or None when drift is off for it."""
        tracked = self._models.get(model)
        if tracked is None or tracked.binning is None:
            return None
        self._bin_pending(tracked)
        with tracked.lock:
            tracked.advance()
            return int(tracked.rows.sum()), tracked.window.sum(axis=0)

    def seen_rows(self, model: str) -> int:
        """Rows observed in ``model``'s current window, binned or not (see the stride)."""
        tracked = self._models.get(model)
        if tracked is None:
            return 0
        with tracked.lock:
            tracked.advance()
            return int(tracked.seen.sum())

    def distances(self, model: str) -> dict[str, tuple[float, float]]:
        """{feature or output: (PSI, JS distance)} over the current window; empty below ``min_rows``."""
        tracked = self._models.get(model)
        current = self.window(model)
        if tracked is None or tracked.binning is None or current is None:
            return {}
        rows, counts = current
        if rows < self.min_rows:
            return {}
        result = {}
        for name, place in tracked.binning.slices.items():
            observed = counts[place]
            if observed.sum() == 0:
                continue
            reference = np.asarray(self._described(tracked, name)["shares"], dtype="float64")
            result[name] = (psi(observed, reference), js_distance(observed, reference))
        return result

    def estimated_accuracy(self, model: str) -> float | None:
        """CBPE: the holdout accuracy of each confidence bin, weighted by the window's rows in that bin."""
        tracked = self._models.get(model)
        current = self.window(model)
        if tracked is None or tracked.binning is None or current is None:
            return None
        calibration = tracked.reference.get("calibration")
        place = tracked.binning.slices.get("confidence")
        if not calibration or place is None:
            return None
        counts = current[1][place]
        total = counts.sum()
        if total < self.min_rows:
            return None
        return float(np.dot(counts, np.asarray(calibration["accuracy"], dtype="float64")) / total)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily: the families depend on the models attached

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        enabled = GaugeMetricFamily(
            "modelyard_drift_enabled", "1 when the served bundle has a drift reference.", labels=labels
        )
        window_rows = GaugeMetricFamily(
            "modelyard_drift_window_rows", "Rows in the drift window.", labels=labels
        )
        estimate = GaugeMetricFamily(
            "modelyard_estimated_accuracy",
            "An ESTIMATE of accuracy without labels (CBPE): the holdout accuracy of each confidence bin, "
            "weighted by the window's rows.",
            labels=labels,
        )
        families: dict[str, dict[str, GaugeMetricFamily | CounterMetricFamily]] = {
            kind: {
                "psi": GaugeMetricFamily(
                    f"modelyard_{kind}drift_psi",
                    "Population stability index, window vs reference (0.1 moderate, 0.2 large).",
                    labels=[*labels, key],
                ),
                "js": GaugeMetricFamily(
                    f"modelyard_{kind}drift_js_distance",
                    "Jensen-Shannon distance (base 2) of the window from the reference.",
                    labels=[*labels, key],
                ),
                "bins": CounterMetricFamily(
                    f"modelyard_{kind}drift_bin_rows",
                    "Rows per bin since the server started.",
                    labels=[*labels, key, "bin"],
                ),
                "shares": GaugeMetricFamily(
                    f"modelyard_{kind}drift_reference_share",
                    "The reference's share of each bin.",
                    labels=[*labels, key, "bin"],
                ),
            }
            for kind, key in (("", "feature"), ("output_", "output"))
        }
        oov = GaugeMetricFamily(
            "modelyard_drift_oov_rate",
            "Share of the window's text tokens not in the reference vocabulary.",
            labels=[*labels, "feature"],
        )
        reference_oov = GaugeMetricFamily(
            "modelyard_drift_reference_oov_rate",
            "The reference's share of tokens not in its kept vocabulary.",
            labels=[*labels, "feature"],
        )
        with self._lock:
            tracked_models = list(self._models.values())
        for tracked in tracked_models:
            base = [tracked.model, tracked.version]
            enabled.add_metric(base, 1.0 if tracked.binning is not None else 0.0)
            binning = tracked.binning
            if binning is None:
                continue
            current = self.window(tracked.model)
            assert current is not None
            rows, counts = current
            window_rows.add_metric(base, float(self.seen_rows(tracked.model)))
            with tracked.lock:
                totals = tracked.totals.copy()
            distances = self.distances(tracked.model)
            for name, place in binning.slices.items():
                kind = "" if name in binning.features else "output_"
                group = families[kind]
                described = self._described(tracked, name)
                for label, total, share in zip(
                    described["bins"], totals[place], described["shares"], strict=True
                ):
                    group["bins"].add_metric([*base, name, label], float(total))
                    group["shares"].add_metric([*base, name, label], float(share))
                if name in distances:
                    group["psi"].add_metric([*base, name], distances[name][0])
                    group["js"].add_metric([*base, name], distances[name][1])
            for name in binning.text_features:
                tokens, unknown = binning.token_counts(counts, name)
                reference_oov.add_metric(
                    [*base, name], float(tracked.reference["features"][name]["oov_rate"])
                )
                if tokens and rows >= self.min_rows:
                    oov.add_metric([*base, name], unknown / tokens)
            accuracy = self.estimated_accuracy(tracked.model)
            if accuracy is not None:
                estimate.add_metric(base, accuracy)
        yield enabled
        yield window_rows
        for group in families.values():
            yield from group.values()
        yield oov
        yield reference_oov
        yield estimate

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _described(tracked: _Tracked, name: str) -> dict[str, Any]:
        features: dict[str, Any] = tracked.reference.get("features", {})
        described: dict[str, Any] = features[name] if name in features else tracked.reference["outputs"][name]
        return described

    def _bounded(self, reference: dict[str, Any], model: str) -> dict[str, Any]:
        features = reference.get("features", {})
        if len(features) <= self.max_features:
            return reference
        log.warning(
            "model %s has %d features: drift tracks the first %d (max_features)",
            model,
            len(features),
            self.max_features,
        )
        kept = dict(list(features.items())[: self.max_features])
        return {**reference, "features": kept}


__all__ = ["SHARE_FLOOR", "DriftMonitor", "drift_reference_of", "js_distance", "psi"]
