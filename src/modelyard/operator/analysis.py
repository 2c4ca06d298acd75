"""Judging a candidate version against the stable one, from what the predictors export to Prometheus.

Each check compares the two versions of one model over the same window of traffic, in the manner of
Kayenta's canary judge: one value per check, one threshold, and a combined verdict.

================================  =========================================================================
``error_ratio``                   the candidate's server-error rate over the stable one's (floored at 0.1%)
``latency_p95_ratio``             the candidate's p95 request time over the stable one's
``class_mix_js_distance``         Jensen-Shannon distance of the predicted-class mix (0 alike .. 1 disjoint)
``agreement``                     share of shadowed rows the candidate predicts as the stable one did
``live_accuracy_delta``           candidate minus stable live accuracy, once both have ``min_labels`` labels
================================  =========================================================================

A check without data (no traffic yet, no labels, a metric the predictor does not export) is neither
passed nor failed. The verdict fails when any check fails, passes when none fails and at least one had
data, and is inconclusive otherwise; the rollout counts passes, failures and inconclusive analyses against
its policy. Before any check, ``candidate_served`` asks whether a predictor reports the candidate ready.
The series read are the predictor's (``modelyard.serving.metrics``, ``modelyard.monitoring.accuracy``);
``modelyard_shadow_compared_total`` and ``modelyard_shadow_agreed_total`` are what a predictor scoring a
shadow candidate counts, by ``model`` and the candidate's ``version``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.errors import ModelyardError
from modelyard.monitoring.drift import js_distance
from modelyard.monitoring.rules import SERVER_ERROR_STATUS
from modelyard.operator.resource import Thresholds

ERROR_RATE_FLOOR = 0.001  # below one error in a thousand requests, error rates count as equal
MIN_CLASS_ROWS = 20  # predicted rows each version needs before its class mix is compared
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


class PrometheusError(ModelyardError):
    """Prometheus could not be asked, or refused a query; the message names the query."""

    status_code = 502


class Prometheus:
    """The instant-query API of one Prometheus server."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> list[dict[str, Any]]:
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as answer:
                document = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                detail = str(json.loads(body)["error"])
            except (ValueError, KeyError, TypeError):
                detail = body[:300]
            raise PrometheusError(f"Prometheus refused {expr!r}: {exc.code} {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"cannot query Prometheus at {self.url} ({expr!r}): {exc}") from exc
        if document.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {expr!r}: {document.get('error')}")
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The value of a query that yields at most one series; None when it yields none or NaN."""
        result = self.query(expr)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if np.isnan(value) or np.isinf(value) else value


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float
    passed: bool | None  # None: no data
    detail: str

    def to_status(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "passed": self.passed}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    checks: tuple[Check, ...]

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.passed is False]

    def summary(self) -> str:
        if self.verdict == FAIL:
            return "; ".join(check.detail for check in self.failed)
        measured = [check.detail for check in self.checks if check.passed is not None]
        return "; ".join(measured) if measured else "no check had data yet"


def combine(checks: list[Check]) -> Verdict:
    if any(check.passed is False for check in checks):
        return Verdict(FAIL, tuple(checks))
    if any(check.passed for check in checks):
        return Verdict(PASS, tuple(checks))
    return Verdict(INCONCLUSIVE, tuple(checks))


class Analysis:
    """The checks of one model's candidate against its stable version over ``window`` (e.g. ``5m``)."""

    def __init__(self, prometheus: Prometheus, model: str, window: str) -> None:
        self.prometheus = prometheus
        self.model = model
        self.window = window

    def run(self, stable: int, candidate: int, thresholds: Thresholds) -> Verdict:
        steps: list[Callable[[int, int, Thresholds], Check]] = [
            self.error_ratio,
            self.latency_p95_ratio,
            self.class_mix,
            self.agreement,
            self.live_accuracy,
        ]
        return combine([step(stable, candidate, thresholds) for step in steps])

    def candidate_served(self, candidate: int) -> bool:
        """Whether a predictor reports the candidate loaded and ready (``modelyard_model_ready`` is 1)."""
        ready = self.prometheus.scalar(f"max(modelyard_model_ready{{{self._selector(candidate)}}})")
        return ready == 1

    def _selector(self, version: int, extra: str = "") -> str:
        return f'model="{self.model}",version="{version}"' + (f",{extra}" if extra else "")

    def _error_rate(self, version: int) -> float | None:
        requests = f"modelyard_requests_total{{{self._selector(version)}}}"
        server_errors = f'status=~"{SERVER_ERROR_STATUS}"'
        errors = f"modelyard_requests_total{{{self._selector(version, server_errors)}}}"
        total = self.prometheus.scalar(f"sum(increase({requests}[{self.window}]))")
        if not total:
            return None
        failed = self.prometheus.scalar(f"sum(increase({errors}[{self.window}]))") or 0.0
        return failed / total

    def error_ratio(self, stable: int, candidate: int, thresholds: Thresholds) -> Check:
        limit = thresholds.max_error_ratio
        ours, theirs = self._error_rate(candidate), self._error_rate(stable)
        if ours is None or theirs is None:
            return Check("error_ratio", None, limit, None, "error_ratio: no requests of both versions yet")
        value = max(ours, ERROR_RATE_FLOOR) / max(theirs, ERROR_RATE_FLOOR)
        passed = value <= limit
        detail = (
            f"error_ratio {value:.2f} (candidate {ours:.2%} of requests failed, stable {theirs:.2%}; "
            f"limit {limit:g})"
        )
        return Check("error_ratio", value, limit, passed, detail)

    def _p95(self, version: int) -> float | None:
        # The model's own time, measured alike for both versions: a shadow candidate's total would hold
        # no encoding and start after the stable answer, a canary's would not.
        predict = 'stage="predict"'
        buckets = f"modelyard_request_stage_seconds_bucket{{{self._selector(version, predict)}}}"
        return self.prometheus.scalar(
            f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{self.window}])))"
        )

    def latency_p95_ratio(self, stable: int, candidate: int, thresholds: Thresholds) -> Check:
        limit = thresholds.max_latency_p95_ratio
        ours, theirs = self._p95(candidate), self._p95(stable)
        if ours is None or theirs is None or theirs <= 0:
            detail = "latency_p95_ratio: no request times by version yet"
            return Check("latency_p95_ratio", None, limit, None, detail)
        value = ours / theirs
        detail = (
            f"latency_p95_ratio {value:.2f} (candidate {ours * 1000:.1f} ms, stable {theirs * 1000:.1f} ms)"
        )
        return Check("latency_p95_ratio", value, limit, value <= limit, detail)

    def _class_counts(self, version: int) -> dict[str, float]:
        series = f"modelyard_predictions_total{{{self._selector(version)}}}"
        result = self.prometheus.query(f"sum by (class) (increase({series}[{self.window}]))")
        return {item["metric"].get("class", ""): float(item["value"][1]) for item in result}

    def class_mix(self, stable: int, candidate: int, thresholds: Thresholds) -> Check:
        limit = thresholds.max_class_mix_js_distance
        ours, theirs = self._class_counts(candidate), self._class_counts(stable)
        if sum(ours.values()) < MIN_CLASS_ROWS or sum(theirs.values()) < MIN_CLASS_ROWS:
            detail = f"class_mix_js_distance: fewer than {MIN_CLASS_ROWS} predicted rows of a version"
            return Check("class_mix_js_distance", None, limit, None, detail)
        classes = sorted(set(ours) | set(theirs))
        value = js_distance(
            np.array([ours.get(c, 0.0) for c in classes]), np.array([theirs.get(c, 0.0) for c in classes])
        )
        detail = f"class_mix_js_distance {value:.3f} (limit {limit:g})"
        return Check("class_mix_js_distance", value, limit, value <= limit, detail)

    def agreement(self, stable: int, candidate: int, thresholds: Thresholds) -> Check:
        limit = thresholds.min_agreement
        selector = self._selector(candidate)
        compared = self.prometheus.scalar(
            f"sum(increase(modelyard_shadow_compared_total{{{selector}}}[{self.window}]))"
        )
        if not compared:
            return Check("agreement", None, limit, None, "agreement: no shadowed rows yet")
        agreed = self.prometheus.scalar(
            f"sum(increase(modelyard_shadow_agreed_total{{{selector}}}[{self.window}]))"
        )
        value = min(1.0, (agreed or 0.0) / compared)  # increase() extrapolates each series on its own
        detail = f"agreement {value:.1%} of {compared:.0f} shadowed rows (minimum {limit:.0%})"
        return Check("agreement", value, limit, value >= limit, detail)

    def live_accuracy(self, stable: int, candidate: int, thresholds: Thresholds) -> Check:
        margin = thresholds.accuracy_margin
        values = []
        for version in (candidate, stable):
            labelled = self.prometheus.scalar(
                f"max(modelyard_live_labelled_rows{{{self._selector(version)}}})"
            )
            accuracy = self.prometheus.scalar(f"max(modelyard_live_accuracy{{{self._selector(version)}}})")
            if labelled is None or labelled < thresholds.min_labels or accuracy is None:
                detail = f"live_accuracy_delta: fewer than {thresholds.min_labels} labelled rows of a version"
                return Check("live_accuracy_delta", None, -margin, None, detail)
            values.append(accuracy)
        value = values[0] - values[1]
        detail = (
            f"live_accuracy_delta {value:+.3f} (candidate {values[0]:.3f}, stable {values[1]:.3f}; "
            f"margin {margin:g})"
        )
        return Check("live_accuracy_delta", value, -margin, value >= -margin, detail)
