"""The server end to end, over raw HTTP: health, metadata, V1, V2 (JSON, no Content-Type, binary), errors,
the feedback route, metrics, and a tampered bundle that leaves the server live but not ready."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sqlalchemy import create_engine, select

from modelyard.bundle import manifest_digest
from modelyard.registry.tables import Prediction as PredictionRow
from modelyard.serving.types import new_request_id

from .conftest import (
    MIXED_CLASSES,
    NUMERIC_CLASSES,
    ServerProcess,
    free_ports,
    post_json,
    send,
    server_env,
    start_server,
)

ROW = [5.1, 3.5, 1.4, 0.2]


def infer_url(server: ServerProcess, model: str = "numeric") -> str:
    return f"{server.url}/v2/models/{model}/infer"


def matrix(rows: list[list[float]], datatype: str = "FP64") -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "datatype": datatype, "shape": [len(rows), 4], "data": rows}]}


# ---------------------------------------------------------------- health and metadata


def test_health_and_server_metadata(numeric_server: ServerProcess) -> None:
    url = numeric_server.url
    assert send("GET", f"{url}/v2/health/live").json() == {"live": True}
    assert send("GET", f"{url}/v2/health/ready").json() == {"ready": True}
    metadata = send("GET", f"{url}/v2").json()
    assert metadata["name"] == "modelyard" and "binary_tensor_data" in metadata["extensions"]
    assert send("GET", f"{url}/v2/models/numeric/ready").json() == {"name": "numeric", "ready": True}
    assert send("GET", f"{url}/v2/models/numeric/versions/3/ready").status == 200
    assert send("GET", f"{url}/v1/models").json() == {"models": ["numeric"]}
    assert send("GET", f"{url}/v1/models/numeric").json() == {"name": "numeric", "ready": True}


def test_model_metadata_comes_from_the_bundle_schema(numeric_server: ServerProcess) -> None:
    answer = send("GET", f"{numeric_server.url}/v2/models/numeric")
    assert answer.status == 200
    metadata = answer.json()
    assert (
        metadata["name"] == "numeric" and metadata["versions"] == ["3"] and metadata["platform"] == "sklearn"
    )
    assert [i["name"] for i in metadata["inputs"]] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert {i["datatype"] for i in metadata["inputs"]} == {"FP64"}
    assert metadata["outputs"][1] == {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}
    assert send("GET", f"{numeric_server.url}/v2/models/numeric/versions/3").json() == metadata


def test_a_bundle_served_without_a_version_is_versioned_by_its_manifest_digest(
    mixed_server: ServerProcess, bundles: dict[str, Path]
) -> None:
    metadata = send("GET", f"{mixed_server.url}/v2/models/churn").json()
    assert metadata["versions"] == [manifest_digest(bundles["mixed"])[:12]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v1/models/nope"),
        ("GET", "/v2/models/numeric/versions/9"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v1/models/nope:predict"),
    ],
)
def test_unknown_models_and_versions_are_404_with_an_error_body(
    numeric_server: ServerProcess, method: str, path: str
) -> None:
    answer = send(method, numeric_server.url + path, b"{}" if method == "POST" else None)
    assert answer.status == 404
    assert "is not served here" in answer.json()["error"] or "has no version '9'" in answer.json()["error"]


# ---------------------------------------------------------------- V1


def test_v1_predicts_lists_and_objects(numeric_server: ServerProcess, mixed_server: ServerProcess) -> None:
    named = dict(zip(["sepal_length", "sepal_width", "petal_length", "petal_width"], ROW, strict=True))
    answer = post_json(
        f"{numeric_server.url}/v1/models/numeric:predict",
        {"instances": [ROW, named]},
        {"x-request-id": "client-id-1"},
    )
    assert answer.status == 200 and answer.headers["x-request-id"] == "client-id-1"
    document = answer.json()
    assert (
        document["predictions"][0] == document["predictions"][1]
        and document["predictions"][0] in NUMERIC_CLASSES
    )
    assert np.allclose(np.sum(document["probabilities"], axis=1), 1.0)

    answer = post_json(
        f"{mixed_server.url}/v1/models/churn:predict",
        {"instances": [[45, "pro", "great lovely fine"], {"age": None, "plan": None, "review": None}]},
    )
    assert answer.status == 200 and uuid.UUID(hex=answer.headers["x-request-id"]).version == 7  # minted
    assert all(label in MIXED_CLASSES for label in answer.json()["predictions"])  # integers stay integers


def test_minted_request_ids_are_uuid7_in_the_order_they_were_made() -> None:
    before_ms = time.time_ns() // 1_000_000
    first = new_request_id()
    time.sleep(0.002)
    second = new_request_id()
    after_ms = time.time_ns() // 1_000_000
    for minted in (first, second):
        parsed = uuid.UUID(hex=minted)
        assert len(minted) == 32 and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= parsed.int >> 80 <= after_ms  # its first 48 bits are when it was made
    assert first < second
    assert len({new_request_id() for _ in range(10_000)}) == 10_000  # the same millisecond, still unique


# ---------------------------------------------------------------- V2


def test_v2_json_without_or_with_any_content_type(numeric_server: ServerProcess) -> None:
    payload = json.dumps({**matrix([ROW, ROW]), "id": "my-id"}).encode()
    for headers in ({}, {"Content-Type": "application/json; charset=utf-8"}, {"Content-Type": "text/plain"}):
        answer = send("POST", infer_url(numeric_server), payload, headers)
        assert answer.status == 200, answer.body
        document = answer.json()
        assert document["id"] == "my-id" and answer.headers["x-request-id"] == "my-id"
        assert document["model_name"] == "numeric" and document["model_version"] == "3"
        label, probabilities = document["outputs"]
        assert label["datatype"] == "BYTES" and label["shape"] == [2] and label["data"][0] in NUMERIC_CLASSES
        assert probabilities["datatype"] == "FP64" and probabilities["shape"] == [2, 3]


def test_v2_one_input_per_feature_for_a_mixed_model(mixed_server: ServerProcess) -> None:
    document = {
        "inputs": [
            {"name": "age", "datatype": "INT32", "shape": [2, 1], "data": [30, 50]},
            {"name": "plan", "datatype": "BYTES", "shape": [2], "data": ["free", "pro"]},
            {"name": "review", "datatype": "BYTES", "shape": [2], "data": ["awful broken", None]},
        ],
        "parameters": {"labels_only": True},
    }
    answer = post_json(infer_url(mixed_server, "churn"), document)
    assert answer.status == 200, answer.body
    outputs = answer.json()["outputs"]
    assert [o["name"] for o in outputs] == ["label"] and outputs[0]["data"][0] == "0"


def test_v2_binary_tensors_in_and_out(numeric_server: ServerProcess) -> None:
    values = np.array([ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    answer = send(
        "POST",
        infer_url(numeric_server),
        header + values.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status == 200, answer.body
    length = int(answer.headers["inference-header-content-length"])
    head = orjson.loads(answer.body[:length])
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "label"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 3 * 8
    assert head["outputs"][1]["data"][0] in NUMERIC_CLASSES  # no binary flag and no default: JSON
    probabilities = np.frombuffer(answer.body[length:], dtype="<f8").reshape(2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)

    # binary_data_output asks for every output in binary: BYTES as 4-byte lengths + UTF-8
    body = json.dumps({**matrix([ROW]), "parameters": {"binary_data_output": True, "labels_only": True}})
    answer = send("POST", infer_url(numeric_server), body.encode())
    length = int(answer.headers["inference-header-content-length"])
    (size,) = struct.unpack_from("<I", answer.body, length)
    assert answer.body[length + 4 : length + 4 + size].decode() in NUMERIC_CLASSES


def test_nan_is_imputed_but_infinity_is_refused(numeric_server: ServerProcess) -> None:
    answer = post_json(infer_url(numeric_server), matrix([[5.1, None, 1.4, 0.2]]))
    assert answer.status == 200  # a missing numeric value: the pipeline imputes it
    values = np.array([[5.1, np.inf, 1.4, 0.2]])
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP64", "shape": [1, 4], "parameters": {"binary_data_size": 32}}
            ]
        }
    )
    answer = send(
        "POST",
        infer_url(numeric_server),
        header + values.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status == 400
    assert answer.json()["error"].startswith("feature 'sepal_width' row 0: infinity is not allowed")


BAD_REQUESTS: list[tuple[str, str, bytes, str]] = [
    ("v2", "numeric", b'{"inputs": [', "malformed JSON in the request body"),
    (
        "v2",
        "numeric",
        json.dumps(matrix([ROW[:3]])).encode(),
        "nested unlike the shape [1, 4]: at depth 1 it has 3 value(s) where the shape needs an array of 4",
    ),
    (
        "v2",
        "numeric",
        json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": ROW[:3]}]}
        ).encode(),
        "input 'x' has shape [1, 3], expected [N, 4]",
    ),
    (
        "v2",
        "numeric",
        json.dumps(
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": ["a"] * 4}]}
        ).encode(),
        "input 'x' has datatype BYTES; expected a numeric one",
    ),
    (
        "v2",
        "numeric",
        json.dumps({"inputs": [{"name": "x", "datatype": "FP33", "shape": [1, 4], "data": ROW}]}).encode(),
        "unknown datatype 'FP33'",
    ),
    ("v2", "numeric", json.dumps(matrix([])).encode(), "the batch is empty"),
    (
        "v2",
        "numeric",
        json.dumps(matrix([ROW] * 51)).encode(),
        "the batch has 51 rows, more than the maximum of 50",
    ),
    (
        "v2",
        "numeric",
        json.dumps({**matrix([ROW]), "outputs": [{"name": "proba"}]}).encode(),
        "unknown output 'proba'",
    ),
    (
        "v2",
        "churn",
        json.dumps(
            {
                "inputs": [
                    {"name": "age", "datatype": "FP64", "shape": [1], "data": [3]},
                    {"name": "plan", "datatype": "BYTES", "shape": [1], "data": ["pro"]},
                ]
            }
        ).encode(),
        "missing feature(s): 'review'",
    ),
    (
        "v2",
        "churn",
        json.dumps(
            {
                "inputs": [
                    {"name": "age", "datatype": "FP64", "shape": [1], "data": [3]},
                    {"name": "plan", "datatype": "BYTES", "shape": [1], "data": ["pro"]},
                    {"name": "review", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
                    {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]},
                ]
            }
        ).encode(),
        "unknown input(s): 'colour'",
    ),
    ("v1", "numeric", b"not json", "malformed JSON in the request body"),
    ("v1", "numeric", b'{"instances": []}', "the batch is empty"),
    ("v1", "numeric", b'{"instances": [[1, 2, 3]]}', "instance 0 has 3 value(s), expected 4"),
    (
        "v1",
        "numeric",
        b'{"instances": [[1, 2, 3, "x"]]}',
        "instance 0: feature 'petal_width' is numeric, got a string",
    ),
    (
        "v1",
        "churn",
        b'{"instances": [{"age": 1, "plan": "pro"}]}',
        "instance 0: missing feature(s): 'review'",
    ),
    (
        "v1",
        "churn",
        b'{"instances": [{"age": 1, "plan": "pro", "review": "", "x": 1}]}',
        "unknown feature(s): 'x'",
    ),
    (
        "v1",
        "churn",
        b'{"instances": [[1, "pro", 3]]}',
        "feature 'review' is text, expected a string, got a number",
    ),
]


@pytest.mark.parametrize(("protocol", "model", "payload", "message"), BAD_REQUESTS)
def test_each_client_mistake_is_a_400_naming_the_problem(
    numeric_server: ServerProcess,
    mixed_server: ServerProcess,
    protocol: str,
    model: str,
    payload: bytes,
    message: str,
) -> None:
    server = numeric_server if model == "numeric" else mixed_server
    path = f"/v2/models/{model}/infer" if protocol == "v2" else f"/v1/models/{model}:predict"
    answer = send("POST", server.url + path, payload)
    assert answer.status == 400, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]


def test_a_client_request_id_is_checked(numeric_server: ServerProcess) -> None:
    answer = post_json(infer_url(numeric_server), matrix([ROW]), {"x-request-id": "r" * 129})
    assert answer.status == 400
    assert "x-request-id header must be 1 to 128 printable characters" in answer.json()["error"]


# ---------------------------------------------------------------- feedback, metrics


def test_feedback_grades_a_logged_prediction(numeric_server: ServerProcess) -> None:
    answer = post_json(
        f"{numeric_server.url}/v1/models/numeric:predict", {"instances": [ROW, ROW]}, {"x-request-id": "fb-1"}
    )
    predicted = answer.json()["predictions"][1]
    url = f"{numeric_server.url}/v1/models/numeric/feedback"
    stored = post_json(url, {"request_id": "fb-1", "label": predicted, "row": 1})
    assert stored.status == 200, stored.body
    assert stored.json()["correct"] is True and stored.json()["version"] == "3"
    again = post_json(
        url, {"request_id": "fb-1", "label": "setosa" if predicted != "setosa" else "virginica", "row": 1}
    )
    assert again.json()["replaced"] == predicted and again.json()["correct"] is False

    unknown = post_json(url, {"request_id": "never-sent", "label": "setosa"})
    assert unknown.status == 404 and "never-sent" in unknown.json()["error"]
    bad = post_json(url, {"request_id": "fb-1", "label": "rose"})
    assert bad.status == 400 and "label 'rose' is not one of the model's classes" in bad.json()["error"]
    assert send("POST", url, b"{").status == 400


def test_metrics_count_requests_by_protocol_and_status(numeric_server: ServerProcess) -> None:
    post_json(infer_url(numeric_server), matrix([ROW]))
    send("POST", infer_url(numeric_server), b"{")
    answer = send("GET", f"{numeric_server.url}/metrics")
    assert answer.status == 200
    text = answer.body.decode()
    assert 'modelyard_requests_total{model="numeric",protocol="v2-rest",status="200",version="3"}' in text
    assert 'modelyard_requests_total{model="numeric",protocol="v2-rest",status="400",version="3"}' in text
    assert 'model="nope"' not in text  # unknown names in URLs never become series
    assert "modelyard_batch_rows_bucket" in text


# ---------------------------------------------------------------- a bad bundle


def test_a_tampered_bundle_leaves_the_server_live_but_not_ready(tampered_server: ServerProcess) -> None:
    url = tampered_server.url
    assert send("GET", f"{url}/v2/health/live").status == 200
    ready = send("GET", f"{url}/v2/health/ready")
    assert ready.status == 503 and ready.json() == {"ready": False}
    metadata = send("GET", f"{url}/v2/models/iris")
    assert metadata.status == 200
    assert metadata.json()["parameters"]["ready"] is False
    assert "model.joblib was altered: expected sha256" in metadata.json()["error"]
    for path in ("/v2/models/iris/ready", "/v1/models/iris"):
        answer = send("GET", url + path)
        assert answer.status == 503 and "model.joblib was altered" in answer.json()["error"]
    answer = post_json(f"{url}/v2/models/iris/infer", matrix([ROW]))
    assert answer.status == 503 and "model 'iris' is not ready: bundle" in answer.json()["error"]
    deadline = time.monotonic() + 10
    while "NOT READY" not in tampered_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "model iris is NOT READY: bundle" in tampered_server.log()


# ---------------------------------------------------------------- shutdown


@pytest.mark.slow
def test_sigterm_writes_every_logged_prediction_before_exiting(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    # A long flush interval: the records are still queued when the signal arrives.
    env = server_env(home, MODELYARD_SERVING__LOG_FLUSH_INTERVAL_S="600")
    server = start_server(bundles["numeric"], home, "--model-name", "iris", env=env)
    try:
        for i in range(3):
            answer = post_json(
                f"{server.url}/v1/models/iris:predict", {"instances": [ROW, ROW]}, {"x-request-id": f"q{i}"}
            )
            assert answer.status == 200
    finally:
        assert server.stop() == 0
    engine = create_engine(f"sqlite:///{home / 'modelyard.db'}")
    with engine.connect() as connection:
        logged = connection.execute(select(PredictionRow.request_id, PredictionRow.rows)).all()
    engine.dispose()
    assert sorted(logged) == [(f"q{i}", 2) for i in range(3)]


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v2/models/numeric/infer", 405, "Method Not Allowed: GET /v2/models/numeric/infer"),
        ("GET", "/v3/anything", 404, "Not Found: GET /v3/anything"),
        ("POST", "/v1/models/numeric:explain", 501, "explanations are not supported"),
        (
            "POST",
            "/v2/repository/models/numeric/unload",
            501,
            "the model repository extension is not supported",
        ),
    ],
)
def test_other_routes_answer_with_an_error_body(
    numeric_server: ServerProcess, method: str, path: str, status: int, message: str
) -> None:
    answer = send(method, numeric_server.url + path, b"{}" if method == "POST" else None)
    assert answer.status == status and message in answer.json()["error"]
    assert send("GET", f"{numeric_server.url}/v2/models/numeric/ready").status == 200  # still served


def test_a_port_in_use_stops_the_server_with_a_clear_error(
    numeric_server: ServerProcess, bundles: dict[str, Path], tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "modelyard.serving", "--model-dir", str(bundles["numeric"]),
        "--host", "127.0.0.1", "--http-port", str(free_ports(1)[0]),
        "--grpc-port", str(numeric_server.grpc_port), "--metrics-port", "0", "--no-prediction-log",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, env=server_env(tmp_path), timeout=120, check=False)
    assert result.returncode == 1
    assert f"error: cannot listen for gRPC on 127.0.0.1:{numeric_server.grpc_port}" in result.stderr.decode()
