"""Fixtures for the operator's tests: the Model CRD (the chart's checked-in copy) on the session's control
plane, a fresh namespace per test, and a real Prometheus scraping what two versions of four models export:
"good" (and "overtaken", the same) and "bad" candidates with traffic, a "quiet" one that is served but
gets none, and a "broken" one its predictor failed to load. The series are the predictor's names and
labels (readiness, the shadow counters and version-labelled request times a shadowing predictor exports),
served by prometheus_client. StalledKfp is a KFP host that takes requests and answers late."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelyard.operator.analysis import Prometheus
from modelyard.operator.crd import CHART_CRD, CRD_NAME

from ..monitoring.conftest import free_ports, start_prometheus


@pytest.fixture(scope="session")
def model_crd(control_plane: Any) -> Any:
    """The control plane with the Model CRD applied and established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART_CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    return control_plane


@pytest.fixture
def namespace(model_crd: Any) -> Iterator[str]:
    """A fresh namespace, deleted (in the background) after the test."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    model_crd.create_namespace(name)
    yield name
    model_crd.kubectl("delete", "namespace", name, "--wait=false")


CLASSES = ("setosa", "versicolor", "virginica")
GOOD = ("good", "overtaken", "moded")  # models whose candidate is as good as the stable version


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
        self.ready = Gauge("modelyard_model_ready", "", ["model", "version"], registry=r)
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
            self.seconds.labels("predict", model, version).observe(latency)

    def tick(self) -> None:
        balanced = (3, 3, 4)
        for good in GOOD:
            self.serve("1", good, errors=0, mix=balanced, latency=0.012)
            self.serve("2", good, errors=0, mix=balanced, latency=0.013)  # one bucket
            self.compared.labels(good, "2").inc(10)
            self.agreed.labels(good, "2").inc(10)
        self.serve("1", "bad", errors=0, mix=balanced, latency=0.012)
        self.serve("2", "bad", errors=3, mix=(10, 0, 0), latency=0.200)  # labels shuffled in training
        self.compared.labels("bad", "2").inc(10)
        self.agreed.labels("bad", "2").inc(4)
        self.serve("1", "quiet", errors=0, mix=balanced, latency=0.010)
        self.serve("1", "broken", errors=0, mix=balanced, latency=0.010)

    def run(self) -> None:
        for model, version, accuracy in (
            *((good, version, accuracy) for good in GOOD for version, accuracy in (("1", 0.95), ("2", 0.96))),
            ("bad", "1", 0.95),
        ):
            self.accuracy.labels(model, version).set(accuracy)
            self.labelled.labels(model, version).set(500)
        self.accuracy.labels("bad", "2").set(0.41)
        for model in (*GOOD, "bad", "quiet", "broken"):
            self.ready.labels(model, "1").set(1)
            self.ready.labels(model, "2").set(0 if model == "broken" else 1)
        self.labelled.labels("bad", "2").set(500)
        while not self.stop.wait(0.1):
            self.tick()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str) -> Iterator[Prometheus]:
    predictors = Predictors()
    (port,) = free_ports(1)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=predictors.registry)
    thread = threading.Thread(target=predictors.run, daemon=True)
    thread.start()
    started = start_prometheus(
        tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{port}"], prometheus_binary
    )
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


class StalledKfp:
    """A KFP host that is healthy (kfp.Client asks first) but holds every other request ``hold_s`` seconds,
    or until :meth:`release`, then answers 503: each reconcile of a Model that trains through it stays under
    way that long."""

    def __init__(self, hold_s: float) -> None:
        stalled = self
        self.open_requests = 0
        self.held = 0  # requests held so far
        self.counting = threading.Lock()
        self.released = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/healthz"):
                    body = json.dumps({"multi_user": False}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                with stalled.counting:
                    stalled.open_requests += 1
                    stalled.held += 1
                try:
                    stalled.released.wait(hold_s)
                    self.send_error(503, "stalled on purpose")
                finally:
                    with stalled.counting:
                        stalled.open_requests -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        """Answer the requests held, and every later one at once."""
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
