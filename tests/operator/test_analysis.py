"""The candidate analysis against a real Prometheus that scrapes, once a second, the series two versions of
three models export: a good candidate passes, a bad one fails naming each failed check, and a candidate
without traffic is inconclusive. The series are the predictor's names and labels (and the shadow counters
and version-labelled request times a shadowing predictor exports), served by prometheus_client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelyard.operator.analysis import FAIL, INCONCLUSIVE, PASS, Analysis, Prometheus, PrometheusError
from modelyard.operator.resource import Thresholds

from ..monitoring.conftest import free_ports, start_prometheus

CLASSES = ("setosa", "versicolor", "virginica")


class Predictors:
    """What the stable and candidate predictors of each model would export, advanced every 0.1 s."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelyard_requests", "", ["protocol", "model", "version", "status"], registry=r
        )
        self.predictions = Counter("modelyard_predictions", "", ["model", "version", "class"], registry=r)
        self.compared = Counter("modelyard_shadow_compared", "", ["model", "version"], registry=r)
        self.agreed = Counter("modelyard_shadow_agreed", "", ["model", "version"], registry=r)
        self.seconds = Histogram(
            "modelyard_request_stage_seconds", "", ["stage", "model", "version"], registry=r
        )
        self.accuracy = Gauge("modelyard_live_accuracy", "", ["model", "version"], registry=r)
        self.labelled = Gauge("modelyard_live_labelled_rows", "", ["model", "version"], registry=r)
        self.stop = threading.Event()

    def serve(
        self, version: str, model: str, *, errors: int, mix: tuple[int, int, int], latency: float
    ) -> None:
        self.requests.labels("v2", model, version, "200").inc(10 - errors)
        if errors:
            self.requests.labels("v2", model, version, "500").inc(errors)
        for name, count in zip(CLASSES, mix, strict=True):
            self.predictions.labels(model, version, name).inc(count)
        for _ in range(10):
            self.seconds.labels("total", model, version).observe(latency)

    def tick(self) -> None:
        balanced = (3, 3, 4)
        self.serve("1", "good", errors=0, mix=balanced, latency=0.012)
        self.serve("2", "good", errors=0, mix=balanced, latency=0.013)  # one bucket
        self.compared.labels("good", "2").inc(10)
        self.agreed.labels("good", "2").inc(10)
        self.serve("1", "bad", errors=0, mix=balanced, latency=0.012)
        self.serve("2", "bad", errors=3, mix=(10, 0, 0), latency=0.200)  # labels shuffled in training
        self.compared.labels("bad", "2").inc(10)
        self.agreed.labels("bad", "2").inc(4)
        self.serve("1", "quiet", errors=0, mix=balanced, latency=0.010)

    def run(self) -> None:
        for model, version, accuracy in (("good", "1", 0.95), ("good", "2", 0.96), ("bad", "1", 0.95)):
            self.accuracy.labels(model, version).set(accuracy)
            self.labelled.labels(model, version).set(500)
        self.accuracy.labels("bad", "2").set(0.41)
        self.labelled.labels("bad", "2").set(500)
        while not self.stop.wait(0.1):
            self.tick()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    predictors = Predictors()
    (port,) = free_ports(1)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=predictors.registry)
    thread = threading.Thread(target=predictors.run, daemon=True)
    thread.start()
    started = start_prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{port}"])
    try:
        client = Prometheus(started.url)
        deadline = time.monotonic() + 60
        expr = 'count_over_time(modelyard_requests_total{model="good",version="2",status="200"}[1m])'
        while (client.scalar(expr) or 0) < 6:  # rates need several scrapes of the same series
            assert time.monotonic() < deadline, "Prometheus scraped too few samples"
            time.sleep(0.5)
        yield client
    finally:
        predictors.stop.set()
        started.process.stop()
        server.shutdown()


def checks_of(verdict: Any) -> dict[str, Any]:
    return {check.name: check for check in verdict.checks}


def test_a_good_candidate_passes_every_check_with_data(prometheus: Prometheus) -> None:
    verdict = Analysis(prometheus, "good", "1m").run(stable=1, candidate=2, thresholds=Thresholds())
    assert verdict.verdict == PASS, verdict.summary()
    checks = checks_of(verdict)
    assert checks["error_ratio"].value == pytest.approx(1.0)
    assert checks["class_mix_js_distance"].value == pytest.approx(0.0, abs=0.01)
    assert checks["agreement"].value == pytest.approx(1.0, rel=0.01)
    assert checks["live_accuracy_delta"].value == pytest.approx(0.01)
    assert checks["latency_p95_ratio"].value == pytest.approx(1.0, rel=0.05)
    assert checks["latency_p95_ratio"].passed is True
    assert all(check.passed for check in verdict.checks)


def test_a_bad_candidate_fails_and_names_each_failed_check(prometheus: Prometheus) -> None:
    verdict = Analysis(prometheus, "bad", "1m").run(stable=1, candidate=2, thresholds=Thresholds())
    assert verdict.verdict == FAIL
    failed = {check.name for check in verdict.failed}
    assert failed == {
        "error_ratio",
        "latency_p95_ratio",
        "class_mix_js_distance",
        "agreement",
        "live_accuracy_delta",
    }
    checks = checks_of(verdict)
    assert checks["error_ratio"].value == pytest.approx(300.0, rel=0.02)  # 30% against the 0.1% floor
    assert checks["agreement"].value == pytest.approx(0.4, rel=0.02)
    assert checks["live_accuracy_delta"].value == pytest.approx(-0.54)
    summary = verdict.summary()
    assert "error_ratio 300" in summary
    assert "(candidate 30.0" in summary
    assert "% of requests failed, stable 0.00%; limit 1.5)" in summary
    assert "agreement 40" in summary


def test_thresholds_decide_the_verdict(prometheus: Prometheus) -> None:
    lenient = Thresholds(
        max_error_ratio=1000,
        max_latency_p95_ratio=1000,
        max_class_mix_js_distance=1,
        min_agreement=0.3,
        accuracy_margin=1,
    )
    verdict = Analysis(prometheus, "bad", "1m").run(stable=1, candidate=2, thresholds=lenient)
    assert verdict.verdict == PASS


def test_a_candidate_without_traffic_is_inconclusive(prometheus: Prometheus) -> None:
    verdict = Analysis(prometheus, "quiet", "1m").run(stable=1, candidate=2, thresholds=Thresholds())
    assert verdict.verdict == INCONCLUSIVE
    assert all(check.passed is None for check in verdict.checks)
    assert checks_of(verdict)["error_ratio"].detail == "error_ratio: no requests of both versions yet"
    assert verdict.summary() == "no check had data yet"


def test_a_query_prometheus_refuses_names_the_query(prometheus: Prometheus) -> None:
    with pytest.raises(
        PrometheusError, match=r"Prometheus refused 'sum\(\(': 400 .*unclosed left parenthesis"
    ):
        prometheus.query("sum((")


def test_an_unreachable_prometheus_names_its_address(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with pytest.raises(
        PrometheusError, match=rf"cannot query Prometheus at http://127.0.0.1:{port} \('up'\)"
    ):
        Prometheus(f"http://127.0.0.1:{port}", timeout_s=2).query("up")
