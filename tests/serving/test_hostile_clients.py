"""What an adversarial client found, each over every transport it applies to (V1, V2 JSON, V2 binary,
gRPC), against real server processes: extreme finite numbers, integer edges, lenient parsing, request
ids reused or given twice, oversized bodies and texts, disconnects mid-body, and idle or half-open
connections."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from sqlalchemy import create_engine, func, select
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from modelyard.registry.packed import logged_columns
from modelyard.registry.tables import Prediction

from .conftest import HttpAnswer, ServerProcess, http_status, post_json, send, start_server

ROW = [5.1, 3.5, 1.4, 0.2]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


# ---------------------------------------------------------------- servers and helpers


@pytest.fixture(scope="module")
def onnx_server(
    bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """iris-like, served by ONNX Runtime, as the adversarial test found it."""
    server = start_server(
        bundles["numeric-onnx"],
        tmp_path_factory.mktemp("onnx-home"),
        "--model-name",
        "iris",
        "--log-flush-interval-s",
        "0.1",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited_server(
    bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The mixed model with small limits, to reach each of them cheaply."""
    server = start_server(
        bundles["mixed"],
        tmp_path_factory.mktemp("limited-home"),
        "--model-name",
        "churn",
        "--max-request-bytes",
        "65536",
        "--max-text-length",
        "100",
        "--body-timeout-s",
        "1",
        "--keep-alive-s",
        "1",
        "--max-connections",
        "8",
    )
    yield server
    server.stop()


def infer_url(server: ServerProcess, model: str = "iris") -> str:
    return f"{server.url}/v2/models/{model}/infer"


def matrix(rows: list[list[float]], datatype: str = "FP64", **fields: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": datatype, "shape": [len(rows), 4], "data": rows}],
        **fields,
    }


def binary(rows: list[list[float]], headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    raw = np.asarray(rows, dtype="<f8").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP64",
                    "shape": [len(rows), 4],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return header + raw, {"Inference-Header-Content-Length": str(len(header)), **(headers or {})}


def grpc_call(server: ServerProcess, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    with grpc.insecure_channel(server.grpc_address) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30, metadata=metadata)


def grpc_error(server: ServerProcess, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_call(server, request)
    return caught.value


def grpc_matrix(rows: list[list[float]], model: str = "iris", request_id: str = "") -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[len(rows), 4])
    tensor.contents.fp64_contents.extend(np.asarray(rows, dtype=float).reshape(-1).tolist())
    return pb.ModelInferRequest(model_name=model, id=request_id, inputs=[tensor])


def logged(server: ServerProcess, request_id: str, expected: int = 1, timeout_s: float = 20.0) -> list[Any]:
    """The logged requests of ``request_id`` once there are ``expected`` of them (or at the deadline)."""
    engine = create_engine(f"sqlite:///{server.home / 'modelyard.db'}")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with engine.connect() as connection:
                rows = connection.execute(
                    select(Prediction.__table__).where(Prediction.request_id == request_id)
                ).all()
            if len(rows) >= expected or time.monotonic() > deadline:
                return list(rows)
            time.sleep(0.1)
    finally:
        engine.dispose()


def stored_rows(server: ServerProcess) -> int:
    engine = create_engine(f"sqlite:///{server.home / 'modelyard.db'}")
    try:
        with engine.connect() as connection:
            counted = connection.execute(select(func.count()).select_from(Prediction.__table__))
            return int(counted.scalar_one())
    finally:
        engine.dispose()


def metric(server: ServerProcess, needle: str) -> float:
    """The value of the first line of the probe port's /metrics that starts with ``needle``."""
    text = send("GET", f"{server.probe_url}/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def raw_answer(connection: socket.socket) -> str:
    """One whole HTTP answer read off a raw connection: its head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


def error_of(answer: HttpAnswer) -> str:
    message = answer.json()["error"]
    assert isinstance(message, str)
    return message


# ---------------------------------------------------------------- 1: rows the model cannot score


@pytest.mark.parametrize("extreme", [1e308, -1e308])
def test_extreme_finite_values_are_a_400_naming_row_and_feature_on_every_transport(
    onnx_server: ServerProcess, extreme: float
) -> None:
    rows = [ROW, [extreme] * 4]
    expected = "row 1 cannot be scored: feature '"
    v1 = post_json(f"{onnx_server.url}/v1/models/iris:predict", {"instances": rows}, {"x-request-id": "x-v1"})
    v2 = post_json(infer_url(onnx_server), matrix(rows, id="x-v2"))
    body, headers = binary(rows, {"x-request-id": "x-bin"})
    v2_binary = send("POST", infer_url(onnx_server), body, headers)
    for answer in (v1, v2, v2_binary):
        assert answer.status == 400, answer.body
        assert error_of(answer).startswith(expected) and "beyond what this model can compute" in error_of(
            answer
        )
    error = grpc_error(onnx_server, grpc_matrix(rows, request_id="x-grpc"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in (error.details() or "")
    # Nothing unscorable reaches the log; a good request after them does.
    good = f"x-good-{extreme:+g}"  # one id per case: both cases share the server and its log
    assert post_json(infer_url(onnx_server), matrix([ROW], id=good)).status == 200
    assert len(logged(onnx_server, good)) == 1
    for request_id in ("x-v1", "x-v2", "x-bin", "x-grpc"):
        assert logged(onnx_server, request_id, timeout_s=0) == []


# ---------------------------------------------------------------- 2: integer edges


def per_feature(datatype: str, first: list[int], request_id: str) -> dict[str, Any]:
    """One input per feature, ``first`` the first feature's values, the others small numbers."""
    columns = [first] + [[value] * len(first) for value in (3, 1, 0)]
    return {
        "id": request_id,
        "inputs": [
            {"name": name, "datatype": datatype, "shape": [len(first)], "data": column}
            for name, column in zip(FEATURES, columns, strict=True)
        ],
    }


def grpc_per_feature(datatype: str, field: str, first: list[int], request_id: str) -> Any:
    request = pb.ModelInferRequest(model_name="iris", id=request_id)
    columns = [first] + [[value] * len(first) for value in (3, 1, 0)]
    for name, column in zip(FEATURES, columns, strict=True):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[len(first)])
        getattr(tensor.contents, field).extend(column)
    return request


def test_integers_are_range_checked_exactly_and_uint64_keeps_its_value(onnx_server: ServerProcess) -> None:
    too_big = post_json(infer_url(onnx_server), per_feature("INT64", [2**63], "int-big"))
    assert too_big.status == 400
    assert error_of(too_big) == (
        "input 'sepal_length': element 0 (9223372036854775808) is out of the range of INT64 "
        "(-9223372036854775808 to 9223372036854775807)"
    )
    # one tensor holding -1 and 2**63: numpy reads the pair as float64, where 2**63 passes a float check
    wraps = post_json(infer_url(onnx_server), matrix([[-1, 3, 1, 0], [2**63, 3, 1, 0]], datatype="INT64"))
    assert wraps.status == 400
    assert error_of(wraps).startswith(
        "input 'x': element 4 (9223372036854775808) is out of the range of INT64"
    )
    largest = 2**64 - 1
    assert post_json(infer_url(onnx_server), per_feature("UINT64", [largest, 5], "uint-json")).status == 200
    reply = grpc_call(onnx_server, grpc_per_feature("UINT64", "uint64_contents", [largest, 5], "uint-grpc"))
    assert reply.id == "uint-grpc"
    for request_id in ("uint-json", "uint-grpc"):
        [request] = logged(onnx_server, request_id)
        # the largest UINT64 keeps its value (as a float64 feature), neither 0 nor wrapped
        features = logged_columns(request.features, request.packed_features)
        assert features["sepal_length"] == [float(largest), 5.0]
    error = grpc_error(onnx_server, grpc_per_feature("UINT8", "uint_contents", [256], "uint8"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 0 (256) is out of the range of UINT8" in (error.details() or "")


# ---------------------------------------------------------------- 3: feedback's row


def test_a_feedback_row_beyond_any_request_is_a_400_naming_row(onnx_server: ServerProcess) -> None:
    url = f"{onnx_server.url}/v1/models/iris/feedback"
    for row in (2**63, 10_000, 2**31):
        answer = post_json(url, {"request_id": "x", "label": "setosa", "row": row})
        assert answer.status == 400, answer.body
        assert error_of(answer).startswith(f"'row' is {row}, but a request carries at most 10000 rows")
        assert "Error" not in error_of(answer)


# ---------------------------------------------------------------- 4 and 5: request ids


def test_the_body_id_is_the_one_id_of_answer_log_and_feedback(onnx_server: ServerProcess) -> None:
    answer = post_json(infer_url(onnx_server), matrix([ROW], id="B-rest"), {"x-request-id": "H-rest"})
    assert answer.json()["id"] == "B-rest" and answer.headers["x-request-id"] == "B-rest"
    reply = grpc_call(onnx_server, grpc_matrix([ROW], request_id="B-grpc"), (("x-request-id", "H-grpc"),))
    assert reply.id == "B-grpc"
    header_only = post_json(infer_url(onnx_server), matrix([ROW]), {"x-request-id": "H-only"})
    assert header_only.json()["id"] == "H-only" and header_only.headers["x-request-id"] == "H-only"
    minted = post_json(infer_url(onnx_server), matrix([ROW]))
    assert minted.json()["id"] == minted.headers["x-request-id"] and len(minted.json()["id"]) == 32
    url = f"{onnx_server.url}/v1/models/iris/feedback"
    for request_id in ("B-rest", "B-grpc", "H-only", minted.json()["id"]):
        assert len(logged(onnx_server, request_id)) == 1
        assert post_json(url, {"request_id": request_id, "label": "setosa"}).status == 200
    for request_id in ("H-rest", "H-grpc"):
        assert logged(onnx_server, request_id, timeout_s=0) == []


def test_a_reused_request_id_is_logged_twice_and_feedback_on_it_is_a_409(onnx_server: ServerProcess) -> None:
    first = post_json(infer_url(onnx_server), matrix([ROW], id="dup-1"))
    second = post_json(infer_url(onnx_server), matrix([[6.7, 3.0, 5.2, 2.3]]), {"x-request-id": "dup-1"})
    grpc_call(onnx_server, grpc_matrix([ROW], request_id="dup-2"))
    grpc_call(onnx_server, grpc_matrix([ROW], request_id="dup-2"))
    assert first.status == second.status == 200
    assert len(logged(onnx_server, "dup-1", expected=2)) == 2
    assert len(logged(onnx_server, "dup-2", expected=2)) == 2
    # Every stored row is counted as written, the reused ids' too (the writer process reports its counts
    # a moment after it writes).
    deadline = time.monotonic() + 10
    while metric(onnx_server, "modelyard_prediction_log_written_total") != stored_rows(onnx_server):
        assert time.monotonic() < deadline, "the log's written count never reached the rows stored"
        time.sleep(0.05)
    url = f"{onnx_server.url}/v1/models/iris/feedback"
    for request_id in ("dup-1", "dup-2"):
        answer = post_json(url, {"request_id": request_id, "label": "setosa"})
        assert answer.status == 409
        assert f"request id {request_id!r} of model 'iris' names more than one logged" in error_of(answer)


# ---------------------------------------------------------------- 6: a client gone mid-body


def test_a_client_that_disconnects_mid_body_is_a_499_logged_at_info(onnx_server: ServerProcess) -> None:
    counted = 'modelyard_requests_total{model="iris",protocol="v2-rest",status="499"'
    before = metric(onnx_server, counted)
    with socket.create_connection(("127.0.0.1", onnx_server.http_port)) as connection:
        connection.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b'{"inputs"'
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while metric(onnx_server, counted) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(onnx_server, counted) == before + 1
    log = onnx_server.log()
    assert "the client disconnected after 9 byte(s) of the body" in log
    line = next(line for line in log.splitlines() if "the client disconnected" in line)
    assert " INFO " in line
    assert "Traceback" not in log and "ClientDisconnect" not in log
    assert 'status="500"' not in send("GET", f"{onnx_server.probe_url}/metrics").body.decode()


# ---------------------------------------------------------------- 7: sizes


def test_a_declared_oversized_body_is_a_413_before_it_is_sent(limited_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited_server.http_port), timeout=10) as connection:
        connection.sendall(
            b"POST /v2/models/churn/infer HTTP/1.1\r\nHost: x\r\nx-request-id: big-1\r\n"
            b"Content-Length: 52428800\r\n\r\n"
        )
        answer = raw_answer(connection)
    # answered from the headers alone: not one byte of the 50 MB was sent; the client's id comes back
    assert answer.startswith("HTTP/1.1 413 ")
    assert "x-request-id: big-1" in answer.lower()
    assert "the request body is 52428800 bytes, more than the limit of 65536" in answer
    assert "MODELYARD_SERVING__MAX_REQUEST_BYTES" in answer
    assert http_status(f"{limited_server.probe_url}/v2/health/live") == 200


def test_an_oversized_chunked_body_is_a_413_once_it_passes_the_limit(limited_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):  # 80 KiB, over the 64 KiB limit
            yield b"x" * 4096

    for path in ("/v2/models/churn/infer", "/v1/models/churn:predict", "/v1/models/churn/feedback"):
        answer = send("POST", limited_server.url + path, chunks())
        assert answer.status == 413, (path, answer.body)
        assert error_of(answer) == (
            "the request body is more than the limit of 65536 bytes (MODELYARD_SERVING__MAX_REQUEST_BYTES)"
        )


def test_a_grpc_message_over_the_limit_is_resource_exhausted(limited_server: ServerProcess) -> None:
    request = pb.ModelInferRequest(model_name="churn")
    tensor = request.inputs.add(name="review", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"x" * 70_000)
    error = grpc_error(limited_server, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def mixed_inputs(review: str) -> list[dict[str, Any]]:
    return [
        {"name": "age", "datatype": "FP64", "shape": [1], "data": [40.0]},
        {"name": "plan", "datatype": "BYTES", "shape": [1], "data": ["pro"]},
        {"name": "review", "datatype": "BYTES", "shape": [1], "data": [review]},
    ]


def test_a_text_over_the_limit_is_a_400_naming_the_feature_on_every_transport(
    limited_server: ServerProcess,
) -> None:
    long = "great " * 20  # 120 characters
    expected = (
        "feature 'review' row 0 is 120 characters long, more than the limit of 100 "
        "(MODELYARD_SERVING__MAX_TEXT_LENGTH)"
    )
    v1 = post_json(
        f"{limited_server.url}/v1/models/churn:predict",
        {"instances": [{"age": 40, "plan": "pro", "review": long}]},
    )
    v2 = post_json(infer_url(limited_server, "churn"), {"inputs": mixed_inputs(long)})
    raw = struct.pack("<I", len(long)) + long.encode()
    inputs = mixed_inputs(long)
    del inputs[2]["data"]
    inputs[2]["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps({"inputs": inputs})
    v2_binary = send(
        "POST",
        infer_url(limited_server, "churn"),
        header + raw,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    for answer in (v1, v2, v2_binary):
        assert answer.status == 400 and error_of(answer) == expected, answer.body
    request = pb.ModelInferRequest(model_name="churn")
    request.inputs.add(name="age", datatype="FP64", shape=[1]).contents.fp64_contents.append(40.0)
    request.inputs.add(name="plan", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"pro")
    request.inputs.add(name="review", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        long.encode()
    )
    error = grpc_error(limited_server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == expected
    assert post_json(infer_url(limited_server, "churn"), {"inputs": mixed_inputs("great")}).status == 200


# ---------------------------------------------------------------- 8: strict parsing


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (matrix([[5.1, True, 1.4, 0.2]]), "input 'x': element 1 is a boolean, expected a number"),
        (
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": [[1, 2]] * 4}]},
            "input 'x': 'data' is nested as [4, 2], unlike the shape [2, 4]",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": [[[[1.0] * 4] * 2]]}]},
            "input 'x': 'data' is nested",
        ),
        (matrix([ROW], datatype="INT64"), "input 'x': element 0 (5.1) is not an integer"),
    ],
)
def test_lenient_json_is_a_400_naming_the_problem(
    onnx_server: ServerProcess, document: dict[str, Any], message: str
) -> None:
    answer = post_json(infer_url(onnx_server), document)
    assert answer.status == 400 and error_of(answer).startswith(message), answer.body


@pytest.mark.parametrize("length", [" +141 ", "14_1", "+141"])
def test_a_binary_header_length_that_is_not_plain_digits_is_a_400(
    onnx_server: ServerProcess, length: str
) -> None:
    body, headers = binary([ROW])
    answer = send(
        "POST", infer_url(onnx_server), body, {**headers, "Inference-Header-Content-Length": length}
    )
    assert answer.status == 400
    assert error_of(answer).startswith("the Inference-Header-Content-Length header must be a decimal integer")


def test_grpc_typed_contents_of_the_wrong_field_are_refused(onnx_server: ServerProcess) -> None:
    request = grpc_matrix([ROW])
    request.inputs[0].datatype = "INT64"  # values sit in fp64_contents, not int64_contents
    error = grpc_error(onnx_server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 4 value(s), got 0" in (error.details() or "")


# ---------------------------------------------------------------- 9: idle and half-open connections


def test_an_idle_keep_alive_connection_is_closed(limited_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited_server.http_port), timeout=10) as connection:
        connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw_answer(connection).startswith("HTTP/1.1 200 ")
        # closed by the server after keep_alive_s (1 s), long before the socket's own 10 s timeout
        assert connection.recv(4096) == b""


def test_half_open_connections_are_bounded_and_the_probes_stay_up(limited_server: ServerProcess) -> None:
    idle = []
    try:
        for _ in range(8):  # --max-connections 8: slow clients that never finish their headers
            connection = socket.create_connection(("127.0.0.1", limited_server.http_port), timeout=10)
            connection.sendall(b"POST /v2/models/churn/infer HTTP/1.1\r\nHost: x\r\n")
            idle.append(connection)
        # uvicorn's limit_concurrency: refused, not queued forever (once it has counted the idle ones)
        deadline = time.monotonic() + 30
        while (refused := send("GET", f"{limited_server.url}/v2/health/ready")).status != 503:
            assert time.monotonic() < deadline, f"never refused: {refused.status}"
            time.sleep(0.1)
        assert http_status(f"{limited_server.probe_url}/v2/health/ready") == 200
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 10
    while http_status(f"{limited_server.url}/v2/health/ready") != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_body_slower_than_the_timeout_is_a_408(limited_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited_server.http_port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/models/churn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = raw_answer(connection)
    assert answer.startswith("HTTP/1.1 408 ")
    assert "the request body did not arrive within 1 s (MODELYARD_SERVING__BODY_TIMEOUT_S)" in answer
