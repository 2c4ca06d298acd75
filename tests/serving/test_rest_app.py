"""The REST adapter in process: the Starlette app over a real data plane and real bundles, through
Starlette's TestClient (real HTTP semantics, no socket)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.testclient import TestClient

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.model import ServedModel
from modelyard.serving.rest.app import build_app

from .conftest import NUMERIC_CLASSES

ROW = [5.1, 3.5, 1.4, 0.2]
MATRIX = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [ROW]}]}


class BrokenRuntime:
    """Fails on every call: a fault inside the model runtime."""

    kind = "sklearn"

    def predict_proba(self, frame: Any) -> Any:
        raise RuntimeError("secret internal state 0xdeadbeef")


@pytest.fixture
def model(bundles: dict[str, Path]) -> Iterator[ServedModel]:
    served = ServedModel("iris", bundles["numeric"], version="3")
    served.load()
    yield served
    served.close()


@pytest.fixture
def dataplane(model: ServedModel) -> DataPlane:
    plane = DataPlane(max_request_rows=10)
    plane.add_model(model)
    return plane


@pytest.fixture
def client(dataplane: DataPlane) -> Iterator[TestClient]:
    with TestClient(build_app(dataplane)) as test_client:
        yield test_client


def test_v2_and_v1_inference(client: TestClient) -> None:
    answer = client.post("/v2/models/iris/infer", content=json.dumps(MATRIX), headers={"x-request-id": "a1"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "a1"
    label, probabilities = answer.json()["outputs"]
    assert label["data"][0] in NUMERIC_CLASSES and probabilities["shape"] == [1, 3]
    v1 = client.post("/v1/models/iris:predict", content=json.dumps({"instances": [ROW]}))
    assert v1.status_code == 200 and v1.json()["predictions"] == label["data"]


def test_health_metadata_and_readiness(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/iris/versions/3/ready").json() == {"name": "iris", "ready": True}
    metadata = client.get("/v2/models/iris").json()
    assert metadata["versions"] == ["3"] and metadata["parameters"]["classes"] == NUMERIC_CLASSES
    assert client.get("/metrics").status_code == 404  # this data plane has no metrics


def test_app_middleware_sees_inference_requests(dataplane: DataPlane) -> None:
    seen: list[str] = []

    async def record(request: Any, call_next: Any) -> Any:
        seen.append(request.url.path)
        return await call_next(request)

    app = build_app(dataplane)
    app.add_middleware(BaseHTTPMiddleware, dispatch=record)
    with TestClient(app) as client:
        assert client.post("/v2/models/iris/infer", content=json.dumps(MATRIX)).status_code == 200
        assert (
            client.post("/v1/models/iris:predict", content=b'{"instances": [[1, 2, 3, 4]]}').status_code
            == 200
        )
    assert seen == ["/v2/models/iris/infer", "/v1/models/iris:predict"]


def test_a_client_mistake_is_a_400_naming_it(client: TestClient) -> None:
    answer = client.post("/v2/models/iris/infer", content=b'{"inputs": []}')
    assert answer.status_code == 400 and answer.json() == {
        "error": "'inputs' must be a non-empty array of tensors"
    }
    answer = client.post("/v1/models/iris/feedback", content=b"{")
    assert answer.status_code == 400 and "malformed JSON" in answer.json()["error"]


def test_a_fault_inside_the_model_is_a_500_with_the_request_id_and_the_trace_in_the_log(
    client: TestClient, model: ServedModel, caplog: pytest.LogCaptureFixture
) -> None:
    model._runtime = BrokenRuntime()  # type: ignore[assignment]  # our own class
    model._predict_numeric = None
    with caplog.at_level(logging.ERROR, logger="modelyard.serving"):
        answer = client.post(
            "/v2/models/iris/infer", content=json.dumps(MATRIX), headers={"x-request-id": "r-9"}
        )
        v1 = client.post("/v1/models/iris:predict", content=json.dumps({"instances": [ROW]}))
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error", "request_id": "r-9"}
    assert v1.status_code == 500 and v1.json()["request_id"] == v1.headers["x-request-id"]
    assert "0xdeadbeef" not in answer.text and "RuntimeError" not in answer.text
    traced = [record for record in caplog.records if record.exc_info]
    assert "r-9" in traced[0].getMessage() and "0xdeadbeef" in str(traced[0].exc_info[1])


def test_unknown_routes_and_methods_answer_an_error_body(client: TestClient) -> None:
    assert client.get("/v3/x").json() == {"error": "Not Found: GET /v3/x"}
    wrong = client.get("/v2/models/iris/infer")
    assert wrong.status_code == 405 and wrong.json() == {
        "error": "Method Not Allowed: GET /v2/models/iris/infer"
    }
    assert client.post("/v1/models/iris:explain").status_code == 501


def test_binary_outputs_follow_the_json_header(client: TestClient) -> None:
    document = {**MATRIX, "parameters": {"binary_data_output": True}}
    answer = client.post("/v2/models/iris/infer", content=json.dumps(document))
    length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.content[:length])
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    probabilities = np.frombuffer(answer.content[length + sizes[0] :], dtype="<f8")
    assert probabilities.shape == (3,) and abs(probabilities.sum() - 1) < 1e-9
