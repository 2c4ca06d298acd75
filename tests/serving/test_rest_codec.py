"""The REST wire codec: V2 JSON and binary bodies, V1 bodies, feedback, metadata, errors, responses."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from modelyard.errors import InvalidInput
from modelyard.serving.features import features_from_instances, output_tensors, select_outputs
from modelyard.serving.rest.codec import (
    decode_feedback,
    decode_v1,
    decode_v2_rest,
    encode_error,
    encode_feedback,
    encode_model_metadata,
    encode_v1,
    encode_v2_rest,
)
from modelyard.serving.types import (
    Datatype,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResult,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelParameters,
    Prediction,
    RequestedOutput,
    TensorMetadata,
)
from modelyard.serving.wire import decode_raw_tensor, encode_bytes_elements

from .conftest import MIXED, NUMERIC


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def decode(document: Any) -> InferenceRequest:
    return decode_v2_rest(body(document), None)


def test_zeros_and_ones_are_numbers_whether_or_not_the_body_holds_a_boolean_elsewhere() -> None:
    """Numbers with a 0 or 1 beside a boolean token are read element by element, and come out the same."""
    for data in ([2.5, 3.5, -4.0], [0.0, 1.0, 2.5], [0, 1, 2]):
        for outputs in ([], [{"name": "label", "parameters": {"binary_data": False}}]):
            request = decode({"inputs": [tensor("x", "FP64", [3], data)], "outputs": outputs})
            assert request.inputs[0].data.dtype == np.float64
            assert request.inputs[0].data.tolist() == [float(value) for value in data]


def test_json_tensors_decode_into_numpy_of_their_datatype() -> None:
    request = decode(
        {
            "id": "r1",
            "inputs": [
                tensor("m", "FP32", [2, 3], [[1, 2, 3], [4, 5, 6.5]]),
                tensor("i", "INT64", [3], [1, 2, 3]),
                tensor("s", "BYTES", [2], ["red", None]),
                tensor("f", "FP64", [2], [1.5, None]),
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
            "parameters": {"labels_only": True},
        }
    )
    m, i, s, f = request.inputs
    assert m.datatype is Datatype.FP32 and m.shape == (2, 3) and m.data.dtype == np.float32
    assert m.data.tolist() == [1, 2, 3, 4, 5, 6.5]
    assert i.data.dtype == np.int64 and i.data.tolist() == [1, 2, 3]
    assert s.data.dtype == object and s.data.tolist() == ["red", None]
    assert f.data[0] == 1.5 and math.isnan(f.data[1])
    assert request.id == "r1" and request.labels_only
    assert request.outputs == [RequestedOutput("label", True)]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "the request body must be a JSON object, got an array"),
        ({"inputs": []}, "'inputs' must be a non-empty array"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, "needs a non-empty string 'name'"),
        ({"inputs": [tensor("x", "FP128", [1], [1])]}, "unknown datatype 'FP128'"),
        ({"inputs": [tensor("x", "FP32", [-1, 2], [1, 2])]}, r"shape \[-1, 2\] has a negative dimension"),
        ({"inputs": [tensor("x", "FP32", [2, "a"], [1, 2])]}, "'shape' must be an array of integers"),
        (
            {"inputs": [tensor("x", "FP32", [2, 2], [1, 2, 3])]},
            r"shape \[2, 2\] needs 4 value\(s\), but 'data' holds 3",
        ),
        ({"inputs": [tensor("x", "FP32", [10**12, 4], [1])]}, "needs 4000000000000 value"),
        ({"inputs": [tensor("x", "FP32", [2, 2], [[1, 2], [3]])]}, "ragged nested array"),
        ({"inputs": [tensor("x", "FP32", [2], ["1", "2"])]}, "element 0 is a string, expected a number"),
        ({"inputs": [tensor("x", "FP32", [2], [True, False])]}, "element 0 is a boolean, expected a number"),
        (
            {"inputs": [tensor("x", "FP64", [1, 4], [5.1, True, 1.4, 0.2])]},
            "element 1 is a boolean, expected a number",
        ),
        ({"inputs": [tensor("x", "FP64", [2], [2.5, False])]}, "element 1 is a boolean, expected a number"),
        ({"inputs": [tensor("x", "INT64", [2], [3, True])]}, "element 1 is a boolean, expected a number"),
        ({"inputs": [tensor("x", "BOOL", [2], [True, 1])]}, "element 1 is a number; a BOOL tensor holds"),
        ({"inputs": [tensor("x", "INT32", [2], [1.5, 2])]}, r"element 0 \(1.5\) is not an integer"),
        ({"inputs": [tensor("x", "INT32", [2], [1, 2.0])]}, r"element 1 \(2.0\) is not an integer"),
        ({"inputs": [tensor("x", "INT8", [1], [300])]}, r"element 0 \(300\) is out of the range of INT8"),
        ({"inputs": [tensor("x", "UINT8", [2], [1, -1])]}, r"element 1 \(-1\) is out of the range of UINT8"),
        (
            {"inputs": [tensor("x", "INT64", [1], [2**63])]},
            r"element 0 \(9223372036854775808\) is out of the range of INT64",
        ),
        (
            {"inputs": [tensor("x", "INT64", [2], [-1, 2**63])]},
            r"element 1 \(9223372036854775808\) is out of the range of INT64",
        ),
        (
            {"inputs": [tensor("x", "UINT64", [1], [2**64])]},
            r"element 0 \(1.8446744073709552e\+19\) is out of the range of UINT64",
        ),
        ({"inputs": [tensor("x", "FP32", [1], [1e308])]}, "element 0 is out of the range of FP32"),
        (
            {"inputs": [tensor("x", "FP64", [2, 4], [[1, 2], [3, 4], [5, 6], [7, 8]])]},
            r"'data' is nested as \[4, 2\], unlike the shape \[2, 4\]",
        ),
        (
            {"inputs": [tensor("x", "FP64", [2, 4], [[1, 2, 3, 4], [5, 6, 7, [8]]])]},
            r"nested deeper than the shape \[2, 4\]",
        ),
        (
            {"inputs": [tensor("x", "FP64", [2, 4], [[1, 2, 3, 4], [5, 6, 7, None], 5])]},
            "ragged nested array or nested unlike the shape",
        ),
        ({"inputs": [tensor("x", "FP64", [1], 5)]}, "'data' must be an array of the tensor's values"),
        ({"inputs": [tensor("x", "FP64", [1] * 33, [1])]}, "shape has 33 dimensions, more than 32"),
        (
            {"inputs": [tensor("x", "INT64", [2], [1, None])]},
            "element 1 is null; only a floating-point tensor",
        ),
        ({"inputs": [tensor("x", "FP64", [2], [1, {"a": 1}])]}, "element 1 is an object, expected a number"),
        (
            {"inputs": [tensor("x", "BYTES", [2], ["a", 1])]},
            "element 1 is a number; a BYTES tensor holds strings",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "has no 'data'"),
        ({"inputs": [tensor("x", "FP32", [1], [1])], "id": 7}, "'id' must be a string"),
        ({"inputs": [tensor("x", "FP32", [1], [1])], "parameters": []}, "'parameters' must be an object"),
        ({"inputs": [tensor("x", "FP32", [1], [1])], "outputs": [{}]}, "outputs\\[0\\] must be an object"),
        (
            {"inputs": [tensor("x", "FP32", [1], [1])], "input": []},
            "unknown field\\(s\\) in the request: 'input'",
        ),
    ],
)
def test_malformed_v2_json_is_refused_naming_the_problem(document: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode(document)


def deeply_nested(depth: int) -> Any:
    data: Any = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    for _ in range(depth):
        data = [data]
    return data


@pytest.mark.parametrize("depth", [2, 60, 200])
def test_data_nested_deeper_than_its_shape_is_refused(depth: int) -> None:
    with pytest.raises(InvalidInput, match="nested"):
        decode({"inputs": [tensor("x", "FP64", [2, 4], deeply_nested(depth))]})


def test_integer_tensors_keep_every_value_of_their_range_exactly() -> None:
    request = decode(
        {
            "inputs": [
                tensor("u", "UINT64", [2], [0, 2**64 - 1]),
                tensor("i", "INT64", [2], [-(2**63), 2**63 - 1]),
                tensor("t", "BOOL", [2], [True, False]),
            ]
        }
    )
    u, i, t = request.inputs
    assert u.data.dtype == np.uint64 and u.data.tolist() == [0, 2**64 - 1]
    assert i.data.dtype == np.int64 and i.data.tolist() == [-(2**63), 2**63 - 1]
    assert t.data.tolist() == [True, False]


@pytest.mark.parametrize("length", [" +141 ", "14_1", "+141", "1e2", "١٤١", ""])
def test_the_header_length_is_decimal_digits_only(length: str) -> None:
    with pytest.raises(InvalidInput, match="must be a decimal integer"):
        decode_v2_rest(body({"inputs": [tensor("x", "FP64", [1], [1])]}), length)


def test_malformed_json_is_refused_and_nan_literals_are_not_json() -> None:
    with pytest.raises(InvalidInput, match="malformed JSON in the request body"):
        decode_v2_rest(b'{"inputs": [', None)
    with pytest.raises(InvalidInput, match="NaN and Infinity are not JSON"):
        decode_v2_rest(b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [NaN]}]}', None)


def binary_body(header: dict[str, Any], *tensors: bytes) -> tuple[bytes, str]:
    raw = orjson.dumps(header)
    return raw + b"".join(tensors), str(len(raw))


def test_binary_tensors_follow_the_json_header_in_input_order() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = encode_bytes_elements(np.array(["héllo", ""], dtype=object))
    payload, length = binary_body(
        {
            "inputs": [
                {"name": "m", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
                {
                    "name": "w",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(words)},
                },
            ]
        },
        matrix.tobytes(),
        words,
    )
    request = decode_v2_rest(payload, length)
    assert request.inputs[0].data.reshape(2, 3).tolist() == matrix.tolist()
    assert request.inputs[1].data.tolist() == ["héllo", ""]


@pytest.mark.parametrize(
    ("size", "extra", "length", "message"),
    [
        (8, b"\0" * 8, None, r"shape \[3\] of FP32 needs 12 byte\(s\), got 8"),
        (12, b"\0" * 4, None, "goes past the end of the body"),
        (12, b"\0" * 16, None, "4 byte\\(s\\) after the last binary tensor"),
        (12, b"\0" * 12, "abc", r"must be a decimal integer \(digits only\), got 'abc'"),
        (12, b"\0" * 12, "99999", "the body has"),
    ],
)
def test_binary_sizes_that_do_not_add_up_are_refused(
    size: int, extra: bytes, length: str | None, message: str
) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": size}}
            ]
        }
    )
    with pytest.raises(InvalidInput, match=message):
        decode_v2_rest(header + extra, length or str(len(header)))


def test_bytes_elements_are_length_prefixed_and_must_be_utf8() -> None:
    raw = struct.pack("<I", 2) + b"\xff\xfe"
    with pytest.raises(InvalidInput, match="element 0 is not valid UTF-8"):
        decode_raw_tensor(Datatype.BYTES, (1,), raw, "input 'w'")
    with pytest.raises(InvalidInput, match="claims 9 byte"):
        decode_raw_tensor(Datatype.BYTES, (1,), struct.pack("<I", 9) + b"ab", "input 'w'")
    with pytest.raises(InvalidInput, match="ends before element 1 of 2"):
        decode_raw_tensor(Datatype.BYTES, (2,), struct.pack("<I", 1) + b"a" + b"xyz", "input 'w'")


def test_a_huge_claimed_bytes_shape_is_refused_before_anything_is_allocated() -> None:
    # 2**40 elements would take 8 TiB as an object array: the 4-byte minimum per element says no first.
    with pytest.raises(InvalidInput, match=r"needs 1099511627776 BYTES element\(s\), at least"):
        decode_raw_tensor(Datatype.BYTES, (2**20, 2**20), struct.pack("<I", 1) + b"a", "input 'w'")


def test_v1_instances_as_lists_or_objects() -> None:
    instances = decode_v1(b'{"instances": [[1, 2, 3], {"c": 6, "b": null, "a": 4}]}')
    batch = features_from_instances(instances, NUMERIC, 10)
    assert batch.numeric[0].tolist() == [1, 2, 3]
    assert batch.numeric[1, 0] == 4 and math.isnan(batch.numeric[1, 1]) and batch.numeric[1, 2] == 6
    mixed = features_from_instances(
        [[30, "pro", "fine", 1], {"age": None, "plan": 3, "review": None, "score": 2.5}], MIXED, 10
    )
    assert mixed.other["plan"].tolist() == ["pro", "3"] and mixed.other["review"].tolist() == ["fine", None]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"instances": [[1, 2]]}', r"instance 0 has 2 value\(s\), expected 3"),
        (b'{"instances": [[1, 2, 3], [1, "x", 3]]}', "instance 1: feature 'b' is numeric, got a string 'x'"),
        (b'{"instances": [[1, 2, true]]}', "feature 'c' is numeric, got a boolean"),
        (b'{"instances": [{"a": 1, "b": 2}]}', r"instance 0: missing feature\(s\): 'c'"),
        (b'{"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}', r"unknown feature\(s\): 'd'"),
        (b'{"instances": [5]}', "instance 0 is a number: each instance is an array"),
        (b'{"instances": []}', "the batch is empty"),
        (b'{"instances": {"a": 1}}', "'instances' must be an array of rows, got an object"),
        (b'{"inputs": [[1, 2, 3]]}', "a V1 request needs 'instances'"),
        (b"[1, 2", "malformed JSON"),
        (b'{"instances": [[1, 2, 1e400]]}', "malformed JSON"),
    ],
)
def test_bad_v1_requests_are_refused_naming_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        features_from_instances(decode_v1(raw), NUMERIC, 10)


PREDICTION = Prediction.of(["x", "y"], np.array([[0.75, 0.25], [0.1, 0.9]]))


def test_json_and_binary_responses() -> None:
    outputs = select_outputs(InferenceRequest(inputs=[]))
    tensors = output_tensors(PREDICTION, NUMERIC, outputs)
    content, length = encode_v2_rest(InferenceResponse("iris", "3", "r1", tensors, [False, False]))
    assert length is None
    document = orjson.loads(content)
    assert document["model_version"] == "3" and document["id"] == "r1"
    assert document["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]}
    assert document["outputs"][1]["shape"] == [2, 2] and document["outputs"][1]["data"] == [
        0.75,
        0.25,
        0.1,
        0.9,
    ]

    content, length = encode_v2_rest(InferenceResponse("iris", "", "r1", tensors, [True, True]))
    assert length is not None
    header = orjson.loads(content[:length])
    assert "model_version" not in header
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    labels_raw = content[length : length + sizes[0]]
    assert decode_raw_tensor(Datatype.BYTES, (2,), labels_raw, "label").tolist() == ["x", "y"]
    proba = np.frombuffer(content[length + sizes[0] :], dtype="<f8").reshape(2, 2)
    assert proba.tolist() == PREDICTION.probabilities.tolist()


def test_v1_answers_labels_and_probabilities() -> None:
    document = orjson.loads(encode_v1(Prediction.of([0, 1], np.array([[0.6, 0.4], [0.2, 0.8]]))))
    assert document == {"predictions": [0, 1], "probabilities": [[0.6, 0.4], [0.2, 0.8]]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "the request body must be a JSON object, got an array"),
        (b"{", "malformed JSON in the request body"),
        (b'{"label": "setosa"}', "feedback needs 'request_id'"),
        (b'{"request_id": "r"}', "feedback needs 'label'"),
        (b'{"request_id": "r", "label": true}', "'label' must be a string or an integer"),
        (b'{"request_id": "r", "label": "setosa", "row": -1}', "'row' must be a non-negative integer"),
        (b'{"request_id": "r", "label": "setosa", "truth": 1}', r"unknown field\(s\) in the feedback: truth"),
        (b'{"request_id": "' + b"x" * 200 + b'", "label": "s"}', "request_id must be 1 to 128 printable"),
    ],
)
def test_bad_feedback_is_refused_naming_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_feedback(raw)


def test_feedback_decodes_and_its_result_encodes() -> None:
    assert decode_feedback(b'{"request_id": "r", "label": 1, "row": 2}') == FeedbackRequest("r", 1, 2)
    assert decode_feedback(b'{"request_id": "r", "label": "a"}') == FeedbackRequest("r", "a", 0)
    stored = FeedbackResult("iris", "3", "r", 0, "a", "b", False, None, datetime(2026, 1, 2, tzinfo=UTC))
    document = orjson.loads(encode_feedback(stored))
    assert document["correct"] is False and document["created_at"] == "2026-01-02T00:00:00+00:00"


def test_errors_carry_the_request_id_only_when_given() -> None:
    assert orjson.loads(encode_error(ErrorResponse("bad"))) == {"error": "bad"}
    assert orjson.loads(encode_error(ErrorResponse("internal error", "r-1"))) == {
        "error": "internal error",
        "request_id": "r-1",
    }


def test_model_metadata_is_the_protocols_with_our_parameters() -> None:
    inputs = [TensorMetadata("a", Datatype.FP64, [-1])]
    parameters = ModelParameters(
        ["x"], [("a", "numeric")], "rf", "onnx", 10, TensorMetadata("input-0", Datatype.FP64, [-1, 1])
    )
    document = orjson.loads(
        encode_model_metadata(ModelMetadata("iris", ["3"], "onnx", inputs, [], True, parameters))
    )
    assert document["inputs"] == [{"name": "a", "datatype": "FP64", "shape": [-1]}]
    assert document["parameters"]["features"] == [{"name": "a", "type": "numeric"}]
    assert document["parameters"]["tensor_input"] == {"datatype": "FP64", "shape": [-1, 1]}
    broken = orjson.loads(encode_model_metadata(ModelMetadata("iris", [], "", [], [], False, error="bad")))
    assert broken["parameters"] == {"ready": False} and broken["error"] == "bad"
