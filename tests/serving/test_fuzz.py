"""Property tests: no malformed request ever gets a 5xx (or, over gRPC, INTERNAL/UNKNOWN).

Random bytes, random JSON, and structurally plausible but wrong V1/V2 requests (unknown datatypes,
negative and huge shapes, wrong element types, lying binary sizes, stray parameters) are sent to real
server processes. Every answer must be a client error with an ``{"error": ...}`` body, or a success.
The adversarial input classes (extreme finite floats, integers at their datatype's edges, JSON types
mixed in one tensor, data nested unlike its shape) must get exactly the answer the protocol gives them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .conftest import ServerProcess, send

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
NAMES = ["input-0", "sepal_length", "sepal_width", "petal_length", "petal_width", "age", "plan", "review"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
dims = st.integers(min_value=-3, max_value=6) | st.sampled_from([2**31, 2**63 - 1, 10**12, -(2**40)])
shapes = st.lists(dims, max_size=4) | json_values


@st.composite
def v2_tensors(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(NAMES) | st.text(max_size=6) | json_scalars),
        "datatype": draw(st.sampled_from(DATATYPES) | st.text(max_size=5)),
        "shape": draw(shapes),
    }
    if draw(st.booleans()):
        tensor["parameters"] = {
            "binary_data_size": draw(st.integers(min_value=-5, max_value=64) | json_scalars)
        }
    if draw(st.booleans()) or "parameters" not in tensor:
        tensor["data"] = draw(
            st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(), max_size=12)
            | st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5), max_size=4)
            | st.lists(st.text(max_size=4) | st.none(), max_size=8)
            | json_values
        )
    return tensor


@st.composite
def v2_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    document: dict[str, Any] = {"inputs": draw(st.lists(v2_tensors(), max_size=5) | json_values)}
    if draw(st.booleans()):
        document["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["label", "probabilities"]) | st.text(max_size=4)},
                    optional={"parameters": st.fixed_dictionaries({"binary_data": json_scalars})},
                ),
                max_size=3,
            )
            | json_values
        )
    if draw(st.booleans()):
        document["parameters"] = draw(
            st.fixed_dictionaries(
                {}, optional={"labels_only": json_scalars, "binary_data_output": json_scalars}
            )
            | json_values
        )
    if draw(st.booleans()):
        document["id"] = draw(json_scalars)
    header = json.dumps(document).encode()
    tail = draw(st.binary(max_size=64))
    headers = {}
    if tail or draw(st.booleans()):
        length = draw(st.sampled_from([len(header)]) | st.integers(min_value=-10, max_value=len(header) + 80))
        headers["Inference-Header-Content-Length"] = str(length)
    return header + tail, headers


@pytest.fixture(scope="module", params=["numeric", "churn"])
def target(request: pytest.FixtureRequest) -> tuple[ServerProcess, str]:
    if request.param == "numeric":
        return request.getfixturevalue("numeric_server"), "numeric"
    return request.getfixturevalue("mixed_server"), "churn"


def assert_client_error_or_success(answer: Any) -> None:
    assert answer.status < 500, answer.body
    if answer.status >= 400:
        assert isinstance(json.loads(answer.body)["error"], str)


PATHS = ["/v2/models/{m}/infer", "/v1/models/{m}:predict", "/v1/models/{m}/feedback"]


@FUZZ
@given(
    body=st.binary(max_size=200),
    path=st.sampled_from(PATHS),
    header=st.none() | st.from_regex(r"[!-~]{0,6}", fullmatch=True),
)
def test_random_bytes_never_get_a_5xx(
    target: tuple[ServerProcess, str], body: bytes, path: str, header: str | None
) -> None:
    server, model = target
    headers = (
        {} if header is None or not header.isprintable() else {"Inference-Header-Content-Length": header}
    )
    assert_client_error_or_success(send("POST", server.url + path.format(m=model), body, headers))


@FUZZ
@given(document=json_values, path=st.sampled_from(PATHS))
def test_random_json_never_gets_a_5xx(target: tuple[ServerProcess, str], document: Any, path: str) -> None:
    server, model = target
    answer = send("POST", server.url + path.format(m=model), json.dumps(document).encode())
    assert_client_error_or_success(answer)


@FUZZ
@given(request=v2_bodies())
def test_wrong_v2_requests_never_get_a_5xx(
    target: tuple[ServerProcess, str], request: tuple[bytes, dict[str, str]]
) -> None:
    server, model = target
    body, headers = request
    assert_client_error_or_success(send("POST", f"{server.url}/v2/models/{model}/infer", body, headers))


instance_values = json_scalars | st.lists(json_scalars, max_size=3)
instances = st.lists(
    st.lists(instance_values, min_size=2, max_size=5)
    | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), instance_values, max_size=5)
    | json_scalars,
    max_size=6,
)


@FUZZ
@given(rows=instances)
def test_wrong_v1_requests_never_get_a_5xx(target: tuple[ServerProcess, str], rows: list[Any]) -> None:
    server, model = target
    answer = send("POST", f"{server.url}/v1/models/{model}:predict", json.dumps({"instances": rows}).encode())
    assert_client_error_or_success(answer)


@FUZZ
@given(
    feedback=st.fixed_dictionaries(
        {},
        optional={
            "request_id": json_scalars | st.text(min_size=100, max_size=200),
            "label": json_scalars,
            "row": json_scalars,
        },
    )
)
def test_wrong_feedback_never_gets_a_5xx(target: tuple[ServerProcess, str], feedback: dict[str, Any]) -> None:
    server, model = target
    answer = send("POST", f"{server.url}/v1/models/{model}/feedback", json.dumps(feedback).encode())
    assert_client_error_or_success(answer)


# ---------------------------------------------------------------- gRPC


@pytest.fixture(scope="module")
def grpc_stub(numeric_server: ServerProcess) -> Any:
    import tritonclient.grpc as grpcclient

    channel = grpc.insecure_channel(numeric_server.grpc_address)
    yield grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel), grpcclient.service_pb2
    channel.close()


@st.composite
def grpc_requests(draw: st.DrawFn, service_pb2: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name="numeric", id=draw(st.text(max_size=140)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        tensor = request.inputs.add()
        tensor.name = draw(st.sampled_from(NAMES) | st.text(max_size=5))
        tensor.datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=5))
        tensor.shape.extend(draw(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=3)))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            tensor.contents.fp64_contents.extend(
                draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8))
            )
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=6), max_size=3)))
    if draw(st.booleans()):
        request.raw_input_contents.append(draw(st.binary(max_size=16)))  # one too many
    for name in draw(st.lists(st.sampled_from(["label", "probabilities", "other"]), max_size=3)):
        request.outputs.add().name = name
    if draw(st.booleans()):
        request.parameters["labels_only"].string_param = draw(st.text(max_size=4))
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_wrong_grpc_requests_are_never_internal_errors(grpc_stub: Any, data: st.DataObject) -> None:
    stub, service_pb2 = grpc_stub
    request = data.draw(grpc_requests(service_pb2))
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), exc.details()


# ---------------------------------------------------------------- the adversarial input classes
#
# Stronger than "no 5xx": for each class the answer is what the protocol says. Extreme finite floats
# give finite probabilities or a 400 naming the row; integers at their datatype's edges are taken exactly
# when in range and refused naming the range otherwise; JSON types mixed in one tensor, and data nested
# unlike its shape, are 400s.

EXTREME_FLOATS = [1e308, -1e308, sys.float_info.max, -sys.float_info.max, 5e-324, -0.0, 1e200, 3.4e38]
finite_floats = st.sampled_from(EXTREME_FLOATS) | st.floats(allow_nan=False, allow_infinity=False)
INTEGER_EDGES = [
    0, 1, -1, 127, 128, -128, -129, 255, 256, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32,
    2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1,
]  # fmt: skip
INTEGER_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
GRPC_INTEGER_FIELDS = {"INT64": "int64_contents", "UINT64": "uint64_contents"}
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def numeric_url(server: ServerProcess) -> str:
    return f"{server.url}/v2/models/numeric/infer"


def assert_scored_or_unscorable(answer: Any) -> None:
    """200 with finite probabilities, or a 400 naming the row the model cannot score."""
    if answer.status == 200:
        document = json.loads(answer.body)  # strict JSON: a NaN would not parse as a number here
        probabilities = (
            document["probabilities"] if "probabilities" in document else document["outputs"][1]["data"]
        )
        flat = np.asarray(probabilities, dtype=float)
        assert np.isfinite(flat).all(), probabilities
    else:
        assert answer.status == 400, answer.body
        assert "cannot be scored" in json.loads(answer.body)["error"], answer.body


@FUZZ
@given(rows=st.lists(st.lists(finite_floats, min_size=4, max_size=4), min_size=1, max_size=4))
def test_extreme_finite_floats_are_scored_finitely_or_refused_on_every_transport(
    numeric_server: ServerProcess, rows: list[list[float]]
) -> None:
    url = numeric_url(numeric_server)
    document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 4], "data": rows}]}
    assert_scored_or_unscorable(send("POST", url, json.dumps(document).encode()))
    v1 = f"{numeric_server.url}/v1/models/numeric:predict"
    assert_scored_or_unscorable(send("POST", v1, json.dumps({"instances": rows}).encode()))
    raw = np.asarray(rows, dtype="<f8").tobytes()
    header = json.dumps(
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
    ).encode()
    answer = send("POST", url, header + raw, {"Inference-Header-Content-Length": str(len(header))})
    assert_scored_or_unscorable(answer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(finite_floats, min_size=4, max_size=4), min_size=1, max_size=3))
# Overflowing sums whose result depends on the batch's size: the second row is NaN in the pair, finite alone.
@example(rows=[[1e308, 1e308, 1e308, -1e308], [1e308, 1e308, 1.7976931348623157e308, -1e308]])
def test_extreme_finite_floats_over_grpc_are_scored_finitely_or_invalid(
    grpc_stub: Any, rows: list[list[float]]
) -> None:
    stub, service_pb2 = grpc_stub
    request = service_pb2.ModelInferRequest(model_name="numeric")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[len(rows), 4])
    tensor.contents.fp64_contents.extend([value for row in rows for value in row])
    try:
        reply = stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot be scored" in exc.details()
    else:
        probabilities = np.frombuffer(reply.raw_output_contents[1], dtype="<f8")
        assert np.isfinite(probabilities).all()


@FUZZ
@given(
    datatype=st.sampled_from(sorted(INTEGER_RANGES)),
    value=st.sampled_from(INTEGER_EDGES) | st.integers(min_value=-(2**70), max_value=2**70),
)
def test_integer_edges_are_taken_exactly_in_range_and_refused_outside(
    numeric_server: ServerProcess, datatype: str, value: int
) -> None:
    low, high = INTEGER_RANGES[datatype]
    document = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": [1], "data": [value if i == 0 else 1]}
            for i, name in enumerate(FEATURES)
        ]
    }
    answer = send("POST", numeric_url(numeric_server), json.dumps(document).encode())
    if low <= value <= high:
        assert_scored_or_unscorable(answer)
    else:
        assert answer.status == 400, answer.body
        assert f"out of the range of {datatype}" in json.loads(answer.body)["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datatype=st.sampled_from(sorted(GRPC_INTEGER_FIELDS)), value=st.sampled_from(INTEGER_EDGES))
def test_integer_edges_over_grpc_are_taken_exactly_in_range_and_refused_outside(
    grpc_stub: Any, datatype: str, value: int
) -> None:
    stub, service_pb2 = grpc_stub
    low, high = INTEGER_RANGES[datatype]
    field = GRPC_INTEGER_FIELDS[datatype]
    request = service_pb2.ModelInferRequest(model_name="numeric")
    for i, name in enumerate(FEATURES):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[1])
        contents = getattr(tensor.contents, field)
        try:
            contents.append(value if i == 0 else 1)
        except ValueError:  # protobuf refuses a value outside its field's own type: nothing to send
            assert not low <= value <= high
            return
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
        assert "cannot be scored" in exc.details() or not low <= value <= high


mixed_elements = st.lists(
    st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=3),
    min_size=4,
    max_size=4,
)


@FUZZ
@given(rows=st.lists(mixed_elements, min_size=1, max_size=3))
# Missing values beside extreme ones, for a model that imputes: the extreme values are to blame.
@example(rows=[[None, 1e308, None, 1.7976931348623157e308]])
def test_json_types_mixed_in_one_tensor_are_refused_naming_the_element(
    numeric_server: ServerProcess, rows: list[list[Any]]
) -> None:
    document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 4], "data": rows}]}
    answer = send("POST", numeric_url(numeric_server), json.dumps(document).encode())
    values = [value for row in rows for value in row]
    beyond_doubles = [v for v in values if isinstance(v, int) and abs(v) >= 2**1024]  # not JSON numbers
    if any(isinstance(value, bool | str) for value in values) or beyond_doubles:
        assert answer.status == 400, answer.body
        error = json.loads(answer.body)["error"]
        assert "element" in error or (beyond_doubles and "malformed JSON" in error), error
    else:
        assert_scored_or_unscorable(answer)


def nested_like(draw: st.DrawFn, depth: int) -> Any:
    if depth == 0:
        return draw(st.floats(min_value=-10, max_value=10))
    return [nested_like(draw, depth - 1) for _ in range(draw(st.integers(min_value=0, max_value=4)))]


@st.composite
def nested_data(draw: st.DrawFn) -> Any:
    """Arrays nested 1 to 6 deep, each level 0 to 4 long: ragged, regular, or regular but unlike [N, 4]."""
    depth = draw(st.integers(min_value=1, max_value=6))
    return nested_like(draw, depth)


@FUZZ
@given(data=nested_data(), rows=st.integers(min_value=1, max_value=3))
def test_data_nested_unlike_its_shape_is_refused(numeric_server: ServerProcess, data: Any, rows: int) -> None:
    document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, 4], "data": data}]}
    answer = send("POST", numeric_url(numeric_server), json.dumps(document).encode())
    flat_ok = isinstance(data, list) and len(data) == rows * 4 and not any(isinstance(v, list) for v in data)
    nested_ok = (
        isinstance(data, list)
        and len(data) == rows
        and all(
            isinstance(row, list) and len(row) == 4 and not any(isinstance(v, list) for v in row)
            for row in data
        )
    )
    if flat_ok or nested_ok:
        assert_scored_or_unscorable(answer)
    else:
        assert answer.status == 400, answer.body
