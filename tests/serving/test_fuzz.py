"""Property tests: no malformed request ever gets a 5xx (or, over gRPC, INTERNAL/UNKNOWN).

Random bytes, random JSON, and structurally plausible but wrong V1/V2 requests (unknown datatypes,
negative and huge shapes, wrong element types, lying binary sizes, stray parameters) are sent to real
server processes. Every answer must be a client error with an ``{"error": ...}`` body, or a success.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
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
