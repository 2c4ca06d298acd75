"""ServingMetrics: names, labels and values as a scraper reads them, and a scrape by a real Prometheus."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from modelyard.monitoring.prometheus_server import start_prometheus
from modelyard.serving.metrics import DROP_REASONS, STAGES, ServingMetrics

from .conftest import free_ports


def families(metrics: ServingMetrics) -> dict[str, list[Sample]]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(metrics: ServingMetrics, sample_name: str, **labels: str) -> float:
    """The value of the one sample with this name and exactly these labels."""
    found = [
        sample.value
        for samples in families(metrics).values()
        for sample in samples
        if sample.name == sample_name and sample.labels == labels
    ]
    assert len(found) == 1, f"{sample_name}{labels}: {len(found)} samples"
    return found[0]


def test_every_series_is_prefixed_and_the_documented_families_exist() -> None:
    metrics = ServingMetrics()
    names = set(families(metrics))
    assert all(name.startswith("modelyard_") for name in names), sorted(names)
    assert {
        "modelyard_requests",
        "modelyard_request_stage_seconds",
        "modelyard_batch_rows",
        "modelyard_predictions",
        "modelyard_prediction_confidence",
        "modelyard_model_info",
        "modelyard_model_ready",
        "modelyard_prediction_log_queue_depth",
        "modelyard_prediction_log_dropped",
        "modelyard_prediction_log_written",
        "modelyard_prediction_log_spooled",
        "modelyard_prediction_log_replayed",
        "modelyard_prediction_log_spool_bytes",
        "modelyard_process_resident_memory_bytes",
    } <= names


def test_requests_are_counted_by_protocol_model_version_and_status() -> None:
    metrics = ServingMetrics()
    for _ in range(3):
        metrics.observe_request("v2-rest", "iris", "2", 200)
    metrics.observe_request("v1", "iris", "2", 400)
    metrics.observe_request("v2-grpc", "iris", "2", "INVALID_ARGUMENT")
    sample = "modelyard_requests_total"
    assert value(metrics, sample, protocol="v2-rest", model="iris", version="2", status="200") == 3
    assert value(metrics, sample, protocol="v1", model="iris", version="2", status="400") == 1
    assert (
        value(metrics, sample, protocol="v2-grpc", model="iris", version="2", status="INVALID_ARGUMENT") == 1
    )


def test_unknown_protocols_stages_and_drop_reasons_are_refused_by_name() -> None:
    metrics = ServingMetrics()
    with pytest.raises(ValueError, match=r"unknown protocol 'v3': use one of v1, v2-rest, v2-grpc"):
        metrics.observe_request("v3", "iris", "1", 200)
    with pytest.raises(ValueError, match=r"unknown stage 'decoding': use one of decode, queue"):
        metrics.observe_stage("decoding", 0.1, "iris", "1")
    with pytest.raises(ValueError, match=r"unknown drop reason 'lost': use one of queue_full"):
        metrics.count_log_dropped(1, "lost")


def test_stage_latency_buckets_span_a_tenth_of_a_millisecond_to_ten_seconds() -> None:
    metrics = ServingMetrics()
    metrics.set_model_info("iris", "1", "logistic_regression", "onnx", ready=True)
    # Every stage of a described model is exported from the start, at zero.
    for stage in STAGES:
        assert (
            value(metrics, "modelyard_request_stage_seconds_count", stage=stage, model="iris", version="1")
            == 0
        )
    for seconds in (0.00008, 0.0002, 7.0, 30.0):
        metrics.observe_stage("predict", seconds, "iris", "1")
    metrics.observe_stage("predict", 0.3, "iris", "2")  # another version: a series of its own
    bucket = "modelyard_request_stage_seconds_bucket"
    one = {"stage": "predict", "model": "iris", "version": "1"}
    assert value(metrics, bucket, **one, le="0.0001") == 1
    assert value(metrics, bucket, **one, le="0.00025") == 2
    assert value(metrics, bucket, **one, le="5.0") == 2
    assert value(metrics, bucket, **one, le="10.0") == 3
    assert value(metrics, bucket, **one, le="+Inf") == 4
    assert value(metrics, "modelyard_request_stage_seconds_sum", **one) == pytest.approx(37.00028)
    assert value(metrics, "modelyard_request_stage_seconds_count", **{**one, "version": "2"}) == 1
    assert value(metrics, "modelyard_request_stage_seconds_count", **{**one, "stage": "decode"}) == 0


def test_batch_sizes_are_a_histogram_of_rows_per_model_call() -> None:
    metrics = ServingMetrics()
    for rows in (1, 1, 3, 64, 10_000):
        metrics.observe_batch(rows)
    bucket = "modelyard_batch_rows_bucket"
    assert value(metrics, bucket, le="1.0") == 2
    assert value(metrics, bucket, le="4.0") == 3
    assert value(metrics, bucket, le="64.0") == 4
    assert value(metrics, bucket, le="16384.0") == 5
    assert value(metrics, "modelyard_batch_rows_sum") == 10_069


def test_predictions_are_counted_by_class_with_a_confidence_histogram() -> None:
    metrics = ServingMetrics()
    metrics.observe_predictions("iris", "2", ["setosa", "virginica", "setosa"], np.array([0.97, 0.55, 1.0]))
    # A probability matrix is reduced to each row's highest probability; NaN rows are not observed.
    probabilities = np.array([[0.1, 0.9], [0.35, 0.65], [np.nan, np.nan]])
    metrics.observe_predictions("iris", "2", ["virginica", "virginica", "setosa"], probabilities)

    counted = "modelyard_predictions_total"
    assert value(metrics, counted, model="iris", version="2", **{"class": "setosa"}) == 3
    assert value(metrics, counted, model="iris", version="2", **{"class": "virginica"}) == 3
    bucket = "modelyard_prediction_confidence_bucket"
    assert value(metrics, bucket, model="iris", version="2", le="0.5") == 0
    assert value(metrics, bucket, model="iris", version="2", le="0.6") == 1
    assert value(metrics, bucket, model="iris", version="2", le="0.7") == 2
    assert value(metrics, bucket, model="iris", version="2", le="0.9") == 3
    assert value(metrics, bucket, model="iris", version="2", le="0.99") == 4
    assert value(metrics, bucket, model="iris", version="2", le="1.0") == 5
    assert value(metrics, bucket, model="iris", version="2", le="+Inf") == 5
    assert value(metrics, "modelyard_prediction_confidence_count", model="iris", version="2") == 5
    assert value(metrics, "modelyard_prediction_confidence_sum", model="iris", version="2") == pytest.approx(
        0.97 + 0.55 + 1.0 + 0.9 + 0.65
    )


def test_a_confidence_per_label_is_required() -> None:
    metrics = ServingMetrics()
    with pytest.raises(ValueError, match=r"one value per label: 2 label\(s\), confidences of shape \[3\]"):
        metrics.observe_predictions("iris", "1", ["a", "b"], np.array([0.5, 0.6, 0.7]))


def test_integer_class_labels_are_exported_as_strings() -> None:
    metrics = ServingMetrics()
    metrics.observe_predictions("digits", "1", [3, 3, 7], np.array([0.8, 0.9, 0.7]))  # type: ignore[list-item]
    assert value(metrics, "modelyard_predictions_total", model="digits", version="1", **{"class": "3"}) == 2


def test_model_info_describes_the_served_model_and_a_reload_replaces_it() -> None:
    metrics = ServingMetrics()
    metrics.set_model_info("iris", "2", "random_forest", "sklearn", ready=False)
    assert value(metrics, "modelyard_model_ready", model="iris", version="2") == 0
    metrics.set_model_info("iris", "2", "random_forest", "onnx", ready=True)
    metrics.set_model_info("wine", "1", "svm", "sklearn", ready=True)
    info = families(metrics)["modelyard_model_info"]
    assert sorted(((sample.labels, sample.value) for sample in info), key=lambda pair: pair[0]["model"]) == [
        (
            {
                "model": "iris",
                "version": "2",
                "algorithm": "random_forest",
                "runtime": "onnx",
                "role": "stable",
            },
            1.0,
        ),
        ({"model": "wine", "version": "1", "algorithm": "svm", "runtime": "sklearn", "role": "stable"}, 1.0),
    ]
    metrics.set_model_info("iris", "3", "random_forest", "onnx", ready=True)
    ready = families(metrics)["modelyard_model_ready"]
    assert sorted((sample.labels["model"], sample.labels["version"], sample.value) for sample in ready) == [
        ("iris", "3", 1.0),
        ("wine", "1", 1.0),
    ]


def test_a_candidate_is_described_beside_the_stable_version() -> None:
    metrics = ServingMetrics()
    metrics.set_model_info("iris", "1", "logistic_regression", "onnx", ready=True)
    metrics.set_model_info("iris", "2", "random_forest", "sklearn", ready=True, role="candidate")
    ready = families(metrics)["modelyard_model_ready"]
    assert sorted((sample.labels["version"], sample.value) for sample in ready) == [("1", 1.0), ("2", 1.0)]
    metrics.set_model_info("iris", "3", "random_forest", "sklearn", ready=True, role="candidate")
    info = families(metrics)["modelyard_model_info"]
    assert sorted((sample.labels["version"], sample.labels["role"]) for sample in info) == [
        ("1", "stable"),
        ("3", "candidate"),
    ]
    with pytest.raises(ValueError, match=r"^unknown role 'canary': use one of stable, candidate$"):
        metrics.set_model_info("iris", "4", "svm", "sklearn", ready=True, role="canary")


def test_shadow_rows_are_counted_by_the_candidate_version_from_zero() -> None:
    metrics = ServingMetrics()
    metrics.start_shadow("iris", "2")
    for name in ("compared", "agreed", "skipped"):
        assert value(metrics, f"modelyard_shadow_{name}_total", model="iris", version="2") == 0
    # the shadow's time per request is its own stage, exported from zero; never the clients' total
    shadow_time = {"stage": "shadow", "model": "iris", "version": "2"}
    assert value(metrics, "modelyard_request_stage_seconds_count", **shadow_time) == 0
    metrics.observe_stage("shadow", 0.01, "iris", "2")
    assert value(metrics, "modelyard_request_stage_seconds_count", **shadow_time) == 1
    metrics.observe_shadow("iris", "2", compared=10, agreed=7)
    metrics.observe_shadow("iris", "2", compared=5, agreed=5)
    metrics.count_shadow_skipped("iris", "2", rows=3)
    metrics.observe_request("shadow", "iris", "2", 500)
    assert value(metrics, "modelyard_shadow_compared_total", model="iris", version="2") == 15
    assert value(metrics, "modelyard_shadow_agreed_total", model="iris", version="2") == 12
    assert value(metrics, "modelyard_shadow_skipped_total", model="iris", version="2") == 3
    assert (
        value(metrics, "modelyard_requests_total", protocol="shadow", model="iris", version="2", status="500")
        == 1
    )
    with pytest.raises(ValueError, match=r"3 agreed row\(s\) of 2 compared: at most all of them agree"):
        metrics.observe_shadow("iris", "2", compared=2, agreed=3)


def test_prediction_log_gauges_and_counters() -> None:
    metrics = ServingMetrics()
    for reason in DROP_REASONS:
        assert value(metrics, "modelyard_prediction_log_dropped_total", reason=reason) == 0
    metrics.set_log_queue(42)
    metrics.count_log_dropped(3)
    metrics.count_log_dropped(2, "spool_full")
    metrics.count_log_dropped(0, "invalid")
    metrics.count_log_written(500)
    metrics.count_log_spooled(120)
    metrics.count_log_replayed(120)
    metrics.set_log_spool_bytes(4096)
    assert value(metrics, "modelyard_prediction_log_queue_depth") == 42
    assert value(metrics, "modelyard_prediction_log_dropped_total", reason="queue_full") == 3
    assert value(metrics, "modelyard_prediction_log_dropped_total", reason="spool_full") == 2
    assert value(metrics, "modelyard_prediction_log_dropped_total", reason="invalid") == 0
    assert value(metrics, "modelyard_prediction_log_written_total") == 500
    assert value(metrics, "modelyard_prediction_log_spooled_total") == 120
    assert value(metrics, "modelyard_prediction_log_replayed_total") == 120
    assert value(metrics, "modelyard_prediction_log_spool_bytes") == 4096


def test_each_instance_has_its_own_registry_and_a_given_registry_is_used_as_is() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.observe_request("v1", "iris", "1", 200)
    assert (
        value(first, "modelyard_requests_total", protocol="v1", model="iris", version="1", status="200") == 1
    )
    assert "modelyard_requests_total" not in {s.name for s in families(second)["modelyard_requests"]}

    shared = CollectorRegistry()
    given = ServingMetrics(registry=shared)
    assert given.registry is shared
    # No process collector on a registry the caller owns (it may already have one).
    assert not any(name.startswith("modelyard_process") for name in families(given))


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it() -> None:
    metrics = ServingMetrics()
    metrics.observe_request("v1", "iris", "1", 200)
    body, content_type = metrics.render(accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b'modelyard_requests_total{model="iris",protocol="v1",status="200",version="1"} 1.0' in body


def test_a_large_batch_is_observed_whole() -> None:
    metrics = ServingMetrics()
    labels = ["a", "b"] * 5_000
    confidences = np.linspace(0.5, 1.0, 10_000)
    metrics.observe_predictions("iris", "1", labels, confidences)
    assert value(metrics, "modelyard_prediction_confidence_count", model="iris", version="1") == 10_000


# ---------------------------------------------------------------- a real Prometheus scrapes us


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[ServingMetrics, str]]:
    """ServingMetrics.render() behind a stdlib HTTP server on a free loopback port."""
    metrics = ServingMetrics()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, content_type = metrics.render(self.headers.get("Accept"))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield metrics, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _api(base: str, path: str, **params: str) -> dict[str, object]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=2) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def _query(base: str, expression: str) -> list[dict[str, object]]:
    answer = _api(base, "/api/v1/query", query=expression)
    assert answer["status"] == "success", answer
    data = answer["data"]
    assert isinstance(data, dict)
    result: list[dict[str, object]] = data["result"]
    return result


def test_a_real_prometheus_scrapes_the_metrics(
    metrics_endpoint: tuple[ServingMetrics, str], tmp_path: Path, prometheus_binary: str
) -> None:
    metrics, target = metrics_endpoint
    metrics.observe_request("v2-rest", "iris", "3", 200)
    metrics.observe_request("v2-rest", "iris", "3", 200)
    metrics.observe_predictions("iris", "3", ["setosa"], np.array([0.93]))
    metrics.set_model_info("iris", "3", "logistic_regression", "onnx", ready=True)

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "modelyard", "static_configs": [{"targets": [target]}]}],
    }
    (port,) = free_ports(1)
    server = start_prometheus(tmp_path / "prometheus", config, port, prometheus_binary)
    base = server.url
    try:
        deadline = time.monotonic() + 30
        requests: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            assert server.process.poll() is None, server.log_tail()
            try:
                up = _query(base, 'up{job="modelyard"}')
                requests = _query(base, 'modelyard_requests_total{model="iris"}')
            except OSError:  # not listening yet
                up = requests = []
            if up and requests:
                break
            time.sleep(0.3)
        assert requests, f"no sample scraped within 30 s; log: {server.log_tail()}"
        assert up[0]["value"][1] == "1"  # type: ignore[index]
        assert requests[0]["metric"] == {
            "__name__": "modelyard_requests_total",
            "instance": target,
            "job": "modelyard",
            "model": "iris",
            "protocol": "v2-rest",
            "status": "200",
            "version": "3",
        }
        assert requests[0]["value"][1] == "2"  # type: ignore[index]
        info = _query(base, "modelyard_model_info")
        assert info[0]["metric"]["runtime"] == "onnx"  # type: ignore[index]
        confidence = _query(base, 'modelyard_prediction_confidence_bucket{le="0.95"}')
        assert confidence[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        server.stop()
