"""Open Inference Protocol compliance, checked with a client nobody here wrote: NVIDIA's tritonclient.

http with JSON tensors, http with binary tensors, and grpc; metadata, readiness, output selection,
``labels_only``, request ids, and errors (HTTP 400 / gRPC INVALID_ARGUMENT, NOT_FOUND).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import MIXED_CLASSES, NUMERIC_CLASSES, ServerProcess

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])


@pytest.fixture(scope="module")
def http_client(numeric_server: ServerProcess) -> Any:
    client = httpclient.InferenceServerClient(numeric_server.http_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(numeric_server: ServerProcess) -> Any:
    client = grpcclient.InferenceServerClient(numeric_server.grpc_address)
    yield client
    client.close()


def expected_probabilities(http_client: Any) -> np.ndarray:
    """The reference answer, over plain JSON."""
    tensor = httpclient.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    return np.asarray(http_client.infer("numeric", [tensor], outputs=outputs).as_numpy("probabilities"))


def test_http_health_and_metadata(http_client: Any) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("numeric") and http_client.is_model_ready("numeric", "3")
    assert "binary_tensor_data" in http_client.get_server_metadata()["extensions"]
    metadata = http_client.get_model_metadata("numeric")
    assert metadata["versions"] == ["3"] and len(metadata["inputs"]) == 4
    with pytest.raises(InferenceServerException) as caught:
        http_client.get_model_metadata("nope")
    assert caught.value.status() == "404" and "not served here" in caught.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64"])
def test_http_matrix_input_json_and_binary(http_client: Any, binary: bool, datatype: str) -> None:
    values = ROWS.astype(
        np.int64 if datatype == "INT64" else np.float32 if datatype == "FP32" else np.float64
    )
    tensor = httpclient.InferInput("input-0", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = http_client.infer("numeric", [tensor], outputs=outputs, request_id=f"{datatype}-{binary}")
    labels = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")
    assert result.get_response()["id"] == f"{datatype}-{binary}"
    assert labels.shape == (3,) and all(
        (label.decode() if isinstance(label, bytes) else label) in NUMERIC_CLASSES for label in labels
    )
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float64
    if datatype != "INT64":
        assert np.allclose(probabilities, expected_probabilities(http_client), atol=1e-6)


def test_http_per_feature_inputs_and_labels_only(http_client: Any) -> None:
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    inputs = []
    for column, name in enumerate(names):
        tensor = httpclient.InferInput(name, [3, 1], "FP64")
        tensor.set_data_from_numpy(ROWS[:, column : column + 1], binary_data=column % 2 == 0)
        inputs.append(tensor)
    result = http_client.infer("numeric", inputs, parameters={"labels_only": True})
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    reference = expected_probabilities(http_client).argmax(axis=1)
    assert [label.decode() for label in result.as_numpy("label")] == [NUMERIC_CLASSES[i] for i in reference]


def test_http_mixed_model_with_bytes_inputs(mixed_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(mixed_server.http_address)
    age = httpclient.InferInput("age", [2], "FP32")
    age.set_data_from_numpy(np.array([30, 55], dtype=np.float32))
    plan = httpclient.InferInput("plan", [2], "BYTES")
    plan.set_data_from_numpy(np.array([b"free", b"pro"], dtype=object), binary_data=True)
    review = httpclient.InferInput("review", [2], "BYTES")
    review.set_data_from_numpy(np.array(["awful broken", "great lovely"], dtype=object), binary_data=False)
    result = client.infer("churn", [age, plan, review])
    client.close()
    assert [int(label) for label in result.as_numpy("label")] == [0, 1]
    assert result.as_numpy("probabilities").shape == (2, len(MIXED_CLASSES))


def test_http_errors_come_back_as_400_with_the_message(http_client: Any) -> None:
    tensor = httpclient.InferInput("input-0", [3, 3], "FP64")
    tensor.set_data_from_numpy(ROWS[:, :3])
    with pytest.raises(InferenceServerException) as caught:
        http_client.infer("numeric", [tensor])
    assert caught.value.status() == "400"
    assert "input 'input-0' has shape [3, 3], expected [N, 4]" in caught.value.message()


# ---------------------------------------------------------------- gRPC


def test_grpc_health_and_metadata(grpc_client: Any) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("numeric")
    server = grpc_client.get_server_metadata(as_json=True)
    assert server["name"] == "modelyard" and "binary_tensor_data" in server["extensions"]
    metadata = grpc_client.get_model_metadata("numeric", as_json=True)
    assert metadata["versions"] == ["3"] and metadata["platform"] == "sklearn"
    assert metadata["outputs"][1] == {"name": "probabilities", "datatype": "FP64", "shape": ["-1", "3"]}


def test_grpc_infer_with_selected_outputs_and_request_id(grpc_client: Any, http_client: Any) -> None:
    tensor = grpcclient.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    result = grpc_client.infer("numeric", [tensor], request_id="grpc-1")
    assert result.get_response().id == "grpc-1"
    assert np.allclose(result.as_numpy("probabilities"), expected_probabilities(http_client), atol=1e-9)
    only_probabilities = grpc_client.infer(
        "numeric", [tensor], outputs=[grpcclient.InferRequestedOutput("probabilities")]
    )
    assert (
        only_probabilities.as_numpy("label") is None
        and only_probabilities.as_numpy("probabilities") is not None
    )
    labels_only = grpc_client.infer("numeric", [tensor], parameters={"labels_only": True})
    assert labels_only.as_numpy("probabilities") is None
    assert labels_only.as_numpy("label").tolist() == result.as_numpy("label").tolist()


def test_grpc_mixed_model(mixed_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(mixed_server.grpc_address)
    age = grpcclient.InferInput("age", [2, 1], "INT32")
    age.set_data_from_numpy(np.array([[30], [55]], dtype=np.int32))
    plan = grpcclient.InferInput("plan", [2], "BYTES")
    plan.set_data_from_numpy(np.array([b"free", b"pro"], dtype=object))
    review = grpcclient.InferInput("review", [2], "BYTES")
    review.set_data_from_numpy(np.array([b"awful broken", b"great lovely"], dtype=object))
    result = client.infer("churn", [age, plan, review])
    client.close()
    assert [int(label) for label in result.as_numpy("label")] == [0, 1]


@pytest.mark.parametrize(
    ("model", "shape", "code", "message"),
    [
        (
            "numeric",
            [3, 3],
            "StatusCode.INVALID_ARGUMENT",
            "input 'input-0' has shape [3, 3], expected [N, 4]",
        ),
        ("numeric", [0, 4], "StatusCode.INVALID_ARGUMENT", "the batch is empty"),
        ("nope", [3, 4], "StatusCode.NOT_FOUND", "model 'nope' is not served here"),
    ],
)
def test_grpc_errors_carry_their_status_and_message(
    grpc_client: Any, model: str, shape: list[int], code: str, message: str
) -> None:
    tensor = grpcclient.InferInput("input-0", shape, "FP64")
    tensor.set_data_from_numpy(np.zeros(shape))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer(model, [tensor])
    assert caught.value.status() == code
    assert message in caught.value.message()


def test_grpc_infinity_is_invalid_argument(grpc_client: Any) -> None:
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([[1.0, 2.0, -np.inf, 4.0]]))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("numeric", [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "feature 'petal_length' row 0: infinity is not allowed" in caught.value.message()


def test_grpc_not_ready_is_unavailable_with_the_reason(tampered_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(tampered_server.grpc_address)
    assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("iris")
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(ROWS[:1])
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [tensor])
    client.close()
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "model.joblib was altered" in caught.value.message()


def test_request_ids_from_headers_are_honoured(http_client: Any, grpc_client: Any) -> None:
    http_tensor = httpclient.InferInput("input-0", list(ROWS.shape), "FP64")
    http_tensor.set_data_from_numpy(ROWS)
    result = http_client.infer("numeric", [http_tensor], headers={"x-request-id": "from-http-header"})
    assert result.get_response()["id"] == "from-http-header"
    grpc_tensor = grpcclient.InferInput("input-0", list(ROWS.shape), "FP64")
    grpc_tensor.set_data_from_numpy(ROWS)
    reply = grpc_client.infer("numeric", [grpc_tensor], headers={"x-request-id": "from-grpc-metadata"})
    assert reply.get_response().id == "from-grpc-metadata"
