"""The probe server on its own port: health and metrics from threads of its own, readiness the models'."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.model import ServedModel
from modelyard.serving.probes import ProbeServer

from .conftest import ServerProcess, send


def probe_server(model: ServedModel, serving: bool = True) -> ProbeServer:
    metrics = ServingMetrics()
    dataplane = DataPlane(max_request_rows=10, metrics=metrics)
    dataplane.add_model(model)
    server = ProbeServer(dataplane, "127.0.0.1", 0, serving=lambda: serving)
    server.start()
    return server


@pytest.fixture
def ready_model(bundles: dict[str, Path]) -> Iterator[ServedModel]:
    model = ServedModel("iris", bundles["numeric"], version="3")
    model.load()
    yield model
    model.close()


def test_live_ready_and_metrics(ready_model: ServedModel) -> None:
    server = probe_server(ready_model)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert send("GET", f"{base}/v2/health/live").json() == {"live": True}
        assert send("GET", f"{base}/v2/health/ready").json() == {"ready": True}
        metrics = send("GET", f"{base}/metrics")
        assert (
            metrics.status == 200
            and 'modelyard_model_info{algorithm="logistic_regression"' in metrics.body.decode()
        )
        other = send("GET", f"{base}/v2/models/iris/infer")
        assert other.status == 404 and "this port serves /v2/health/live" in other.json()["error"]
    finally:
        server.stop()


def test_readiness_is_the_models_and_503_until_the_servers_listen_or_once_they_stop(
    ready_model: ServedModel, bundles: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(bundles["numeric"], tmp_path / "bundle")
    (tmp_path / "bundle" / "model.joblib").write_bytes(b"tampered")
    broken = ServedModel("iris", tmp_path / "bundle")
    broken.load()
    for model, serving in ((broken, True), (ready_model, False)):
        server = probe_server(model, serving=serving)
        try:
            answer = send("GET", f"http://127.0.0.1:{server.port}/v2/health/ready")
            assert answer.status == 503 and answer.json() == {"ready": False}
            assert send("GET", f"http://127.0.0.1:{server.port}/v2/health/live").status == 200
        finally:
            server.stop()


def test_a_port_in_use_is_named(ready_model: ServedModel) -> None:
    first = probe_server(ready_model)
    try:
        with pytest.raises(OSError, match=f"cannot listen for probes and metrics on 127.0.0.1:{first.port}"):
            ProbeServer(DataPlane(max_request_rows=1), "127.0.0.1", first.port)
    finally:
        first.stop()


def test_the_server_answers_probes_on_its_metrics_port(
    numeric_server: ServerProcess, tampered_server: ServerProcess
) -> None:
    assert send("GET", f"{numeric_server.probe_url}/v2/health/ready").json() == {"ready": True}
    assert "modelyard_model_info" in send("GET", f"{numeric_server.probe_url}/metrics").body.decode()
    assert send("GET", f"{tampered_server.probe_url}/v2/health/ready").status == 503
    assert send("GET", f"{tampered_server.probe_url}/v2/health/live").status == 200
