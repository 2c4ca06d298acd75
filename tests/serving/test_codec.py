"""Protocol codecs: V2 JSON and binary bodies, tensors -> features, V1 instances, responses."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.bundle import BundleMetadata
from modelyard.errors import InvalidInput
from modelyard.serving import codec
from modelyard.serving.codec import (
    FeatureBatch,
    FeatureSchema,
    decode_raw_tensor,
    decode_v1,
    decode_v2_rest,
    encode_bytes_elements,
    encode_v1,
    encode_v2_rest,
    features_from_instances,
    features_from_tensors,
    output_tensors,
    select_outputs,
)
from modelyard.serving.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Prediction,
    RequestedOutput,
    Tensor,
)
from modelyard.spec import FeatureSpec, FeatureType

NUMERIC = FeatureSchema(
    BundleMetadata(
        name="iris",
        algorithm="logistic_regression",
        target="species",
        features=[FeatureSpec(name=n, type=FeatureType.NUMERIC) for n in ("a", "b", "c")],
        classes=["x", "y"],
        dataset_fingerprint="sha256:t",
    )
)
MIXED = FeatureSchema(
    BundleMetadata(
        name="churn",
        algorithm="logistic_regression",
        target="churned",
        features=[
            FeatureSpec(name="age", type=FeatureType.NUMERIC),
            FeatureSpec(name="plan", type=FeatureType.CATEGORICAL),
            FeatureSpec(name="review", type=FeatureType.TEXT),
            FeatureSpec(name="score", type=FeatureType.NUMERIC),
        ],
        classes=[0, 1],
        dataset_fingerprint="sha256:t",
    )
)


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def decode(document: Any) -> InferenceRequest:
    return decode_v2_rest(body(document), None)


# ---------------------------------------------------------------- V2 JSON


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
        ({"inputs": [tensor("x", "FP32", [2], ["1", "2"])]}, "a FP32 tensor holds numbers, got strings"),
        ({"inputs": [tensor("x", "FP32", [2], [True, False])]}, "holds numbers, got true/false"),
        ({"inputs": [tensor("x", "INT32", [2], [1.5, 2])]}, "a INT32 tensor holds integers, got fractions"),
        ({"inputs": [tensor("x", "INT8", [1], [300])]}, "out of the range of INT8"),
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


def test_malformed_json_is_refused_and_nan_literals_are_not_json() -> None:
    with pytest.raises(InvalidInput, match="malformed JSON in the request body"):
        decode_v2_rest(b'{"inputs": [', None)
    with pytest.raises(InvalidInput, match="NaN and Infinity are not JSON"):
        decode_v2_rest(b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [NaN]}]}', None)


def orjson_only(raw: bytes) -> InferenceRequest:
    """The decode as it is without the simdjson fast path: the reference it must agree with."""
    view = memoryview(raw)
    return codec._request_from_json(codec._json_object(view, "request body"), view, len(raw))


def outcome(decoder: Any, raw: bytes) -> Any:
    try:
        request = decoder(raw)
    except InvalidInput as exc:
        return ("refused", str(exc))
    return (
        "decoded",
        request.id,
        request.parameters,
        request.outputs,
        [(t.name, t.datatype, t.shape, t.data.dtype, t.data.tolist()) for t in request.inputs],
    )


def same_outcome(raw: bytes) -> None:
    fast, reference = outcome(lambda raw: decode_v2_rest(raw, None), raw), outcome(orjson_only, raw)
    # NaN != NaN in the lists: compare their reprs, which show nan alike
    assert repr(fast) == repr(reference)


@pytest.fixture
def fast_parse_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simdjson path for every body, not only those of FAST_PARSE_MIN_BYTES or more."""
    monkeypatch.setattr(codec, "FAST_PARSE_MIN_BYTES", 0)


def data_of(document: Any) -> Any:
    raw = body(document)
    return codec._request_document(raw, len(raw))["inputs"][0]["data"]


def test_only_bodies_past_the_break_even_take_the_fast_parse() -> None:
    rows = 1 + codec.FAST_PARSE_MIN_BYTES // 40  # 4 floats of 13 bytes ("0.123456789, ") a row
    small = {"inputs": [tensor("x", "FP64", [1, 4], [0.123456789] * 4)]}
    big = {"inputs": [tensor("x", "FP64", [rows, 4], [0.123456789] * (rows * 4))]}
    assert len(body(small)) < codec.FAST_PARSE_MIN_BYTES <= len(body(big))
    assert isinstance(data_of(small), list)
    assert isinstance(data_of(big), np.ndarray) and data_of(big).shape == (rows * 4,)
    # nested rows of the same size go to orjson before simdjson parses them
    nested = {"inputs": [tensor("x", "FP64", [rows, 4], [[0.123456789] * 4] * rows)]}
    assert len(body(nested)) >= codec.FAST_PARSE_MIN_BYTES
    assert isinstance(data_of(nested), list)


@pytest.mark.usefixtures("fast_parse_always")
def test_flat_float_data_is_read_straight_into_float64_and_anything_else_goes_through_orjson() -> None:
    assert isinstance(data_of({"inputs": [tensor("x", "FP32", [2, 2], [1, 2.5, 3, 4])]}), np.ndarray)
    for document in (
        {"inputs": [tensor("x", "FP32", [2, 2], [[1, 2.5], [3, 4]])]},  # nested
        {"inputs": [tensor("x", "FP64", [2], [[1.0, 2.0], []])]},  # ragged, as many leaves as rows
        {"inputs": [tensor("x", "INT64", [2], [1, 2])]},  # integers keep their exact values
        {"inputs": [tensor("x", "FP64", [2], [1, None])]},  # null is a missing value
        {"inputs": [tensor("x[0]", "FP64", [2], [1, 2])]},  # a "[" in a string: the count is not exact
    ):
        assert isinstance(data_of(document), list)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2], "data": [3, 4]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}], "inputs": []}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [18446744073709551615, -1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1e400]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [100000000000000000000000]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]} trailing',
        b'{"inputs": [{"name": "\xff", "datatype": "FP64", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "\\ud800", "datatype": "FP64", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": null}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": 7}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [0], "data": []}]}',
        b'{"inputs": [null, {"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}',
        b'\xef\xbb\xbf{"inputs": []}',
        # ragged data that simdjson's buffer would flatten into the right number of values
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [[1.0, 2.0], []]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, [2.0]]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [2], "data": [[[1.0, 2.0]], []]}]}',
        # ... and with a "[" spelled as an escape in a string, which the bracket count must not trust
        b'{"id":"\\u005b","inputs":[{"name":"x","datatype":"FP64","shape":[2],"data":[[1.0,2.0],[]]}]}',
        b'{"inputs":[{"name":"x","datatype":"FP64","shape":[2],"data":[1,2],"parameters":{"[":1}}]}',
        # integers past 2**53 in a float32 tensor: rounded once to float32, not via float64 first
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1152921573326323713]}]}',
        b'{"inputs":[{"name":"x","datatype":"FP64","shape":[2],"data":[1152921573326323713, 0.5]}]}',
    ],
)
@pytest.mark.usefixtures("fast_parse_always")
def test_the_fast_parse_agrees_with_orjson_on_edge_cases(raw: bytes) -> None:
    same_outcome(raw)


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_numbers = st.integers(min_value=-(2**70), max_value=2**70) | finite_floats
json_leaves = st.none() | st.booleans() | json_numbers | st.text(max_size=4)
tensor_data = (
    st.lists(json_numbers, max_size=12)
    | st.lists(st.lists(json_numbers, max_size=4), max_size=4)
    | st.lists(json_numbers | st.lists(json_numbers, max_size=2), max_size=6)  # ragged and mixed
    | st.lists(json_leaves, max_size=6)
    | json_leaves
)


FUZZED_DATATYPES = ["FP16", "FP32", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES"]


@st.composite
def v2_documents(draw: st.DrawFn) -> Any:
    inputs = []
    for index in range(draw(st.integers(min_value=1, max_value=3))):
        item: dict[str, Any] = {
            "name": draw(st.sampled_from(["x", f"in{index}"]) | json_leaves),
            "datatype": draw(st.sampled_from(FUZZED_DATATYPES)),
            "shape": draw(st.lists(st.integers(min_value=-1, max_value=12), max_size=3) | json_leaves),
        }
        if draw(st.integers(min_value=0, max_value=9)):
            item["data"] = draw(tensor_data)
        inputs.append(item)
    document: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        document["id"] = draw(json_leaves)
    if draw(st.booleans()):
        document["parameters"] = draw(st.dictionaries(st.text(max_size=3), json_leaves, max_size=2))
    return document


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(v2_documents())
@pytest.mark.usefixtures("fast_parse_always")  # the same for every example: no state between them
def test_the_fast_parse_agrees_with_orjson_on_random_requests(document: Any) -> None:
    same_outcome(body(document))


# ---------------------------------------------------------------- V2 binary extension


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
        (12, b"\0" * 12, "abc", "must be an integer, got 'abc'"),
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


# ---------------------------------------------------------------- tensors -> features


def t(name: str, datatype: Datatype, shape: tuple[int, ...], values: Any) -> Tensor:
    return Tensor(name, datatype, shape, np.asarray(values, dtype=datatype.numpy_dtype).reshape(-1))


def test_one_numeric_matrix_feeds_a_numeric_model_in_feature_order() -> None:
    batch = features_from_tensors(
        [t("input-0", Datatype.INT32, (2, 3), [[1, 2, 3], [4, 5, 6]])], NUMERIC, 100
    )
    assert batch.n_rows == 2 and batch.numeric.dtype == np.float64
    frame = batch.to_frame(NUMERIC)
    assert list(frame.columns) == ["a", "b", "c"] and frame["c"].tolist() == [3.0, 6.0]


def test_one_input_per_feature_with_shape_n_or_n_by_1() -> None:
    inputs = [
        t("review", Datatype.BYTES, (2,), ["good", None]),
        t("age", Datatype.FP32, (2, 1), [30, np.nan]),
        t("plan", Datatype.INT64, (2,), [1, 2]),
        t("score", Datatype.UINT8, (2,), [7, 8]),
    ]
    batch = features_from_tensors(inputs, MIXED, 100)
    frame = batch.to_frame(MIXED)
    assert list(frame.columns) == ["age", "plan", "review", "score"]
    assert frame["age"].iloc[0] == 30.0 and math.isnan(frame["age"].iloc[1])  # NaN: imputed by the model
    assert frame["plan"].tolist() == ["1", "2"]  # categories compare as strings, as in training
    assert frame["review"].tolist() == ["good", None]
    assert batch.row(MIXED, 1) == {"age": None, "plan": "2", "review": None, "score": 8.0}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([t("input-0", Datatype.FP64, (1, 4), [[1, 2, 3, 4]])], r"shape \[1, 4\], expected \[N, 3\]"),
        ([t("input-0", Datatype.FP64, (3,), [1, 2, 3])], r"shape \[3\], expected \[N, 3\]"),
        ([t("input-0", Datatype.BYTES, (1, 3), ["1", "2", "3"])], "datatype BYTES; expected a numeric one"),
        ([t("input-0", Datatype.FP64, (0, 3), [])], "the batch is empty"),
        (
            [t("input-0", Datatype.FP64, (101, 3), np.zeros((101, 3)))],
            "101 rows, more than the maximum of 100",
        ),
        ([t("input-0", Datatype.FP64, (2, 3), [[1, 2, 3], [1, np.inf, 3]])], "feature 'b' row 1: infinity"),
        ([t("a", Datatype.FP64, (1,), [1]), t("b", Datatype.FP64, (1,), [1])], "missing feature\\(s\\): 'c'"),
        (
            [
                t("a", Datatype.FP64, (1,), [1]),
                t("b", Datatype.FP64, (1,), [1]),
                t("z", Datatype.FP64, (1,), [1]),
            ],
            "missing feature\\(s\\): 'c'; unknown input\\(s\\): 'z'",
        ),
        (
            [
                t("a", Datatype.FP64, (1,), [1]),
                t("b", Datatype.FP64, (2,), [1, 2]),
                t("c", Datatype.FP64, (1,), [1]),
            ],
            "input 'b' has 2 rows but 'a' has 1",
        ),
        (
            [
                t("a", Datatype.FP64, (1, 2), [1, 2]),
                t("b", Datatype.FP64, (1,), [1]),
                t("c", Datatype.FP64, (1,), [1]),
            ],
            r"input 'a' has shape \[1, 2\]: a per-feature input has shape \[N\] or \[N, 1\]",
        ),
        (
            [
                t("a", Datatype.BYTES, (1,), ["1"]),
                t("b", Datatype.FP64, (1,), [1]),
                t("c", Datatype.FP64, (1,), [1]),
            ],
            "input 'a' has datatype BYTES, but feature 'a' is numeric",
        ),
        (
            [t("a", Datatype.FP64, (1,), [1]), t("a", Datatype.FP64, (1,), [1])],
            "input 'a' is given more than once",
        ),
    ],
)
def test_tensors_that_do_not_fit_the_numeric_schema_are_refused(inputs: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        features_from_tensors(inputs, NUMERIC, 100)


def test_a_mixed_model_takes_one_input_per_feature_not_a_matrix() -> None:
    with pytest.raises(
        InvalidInput, match="non-numeric features \\('plan', 'review'\\), so it takes one input per"
    ):
        features_from_tensors([t("input-0", Datatype.FP64, (1, 4), [1, 2, 3, 4])], MIXED, 10)
    inputs = [
        t("age", Datatype.FP64, (1,), [1]),
        t("plan", Datatype.BYTES, (1,), ["a"]),
        t("review", Datatype.INT32, (1,), [5]),
        t("score", Datatype.FP64, (1,), [1]),
    ]
    with pytest.raises(InvalidInput, match="input 'review' has datatype INT32, but feature 'review' is text"):
        features_from_tensors(inputs, MIXED, 10)


# ---------------------------------------------------------------- V1


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


def test_v1_text_features_take_strings_only() -> None:
    with pytest.raises(InvalidInput, match="feature 'review' is text, expected a string, got a number"):
        features_from_instances([[1, "a", 5, 1]], MIXED, 10)
    with pytest.raises(InvalidInput, match="more than the maximum of 1 per request"):
        features_from_instances([[1, 2, 3], [1, 2, 3]], NUMERIC, 1)


# ---------------------------------------------------------------- outputs


PREDICTION = Prediction.of(["x", "y"], np.array([[0.75, 0.25], [0.1, 0.9]]))


def test_outputs_default_to_label_and_probabilities_or_label_alone() -> None:
    assert [o.name for o in select_outputs(InferenceRequest(inputs=[]))] == ["label", "probabilities"]
    labels_only = InferenceRequest(inputs=[], parameters={"labels_only": True})
    assert [o.name for o in select_outputs(labels_only)] == ["label"]
    explicit = InferenceRequest(
        inputs=[], outputs=[RequestedOutput("probabilities"), RequestedOutput("label")]
    )
    assert [o.name for o in select_outputs(explicit)] == ["probabilities", "label"]
    with pytest.raises(InvalidInput, match="unknown output 'proba': this model has 'label', 'probabilities'"):
        select_outputs(InferenceRequest(inputs=[], outputs=[RequestedOutput("proba")]))
    with pytest.raises(InvalidInput, match="output 'label' is requested more than once"):
        select_outputs(InferenceRequest(inputs=[], outputs=[RequestedOutput("label")] * 2))
    with pytest.raises(InvalidInput, match="labels_only must be true or false"):
        select_outputs(InferenceRequest(inputs=[], parameters={"labels_only": "yes"}))


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


def test_feature_batches_concatenate_row_wise() -> None:
    first = features_from_instances([[1, "a", "x", 1]], MIXED, 10)
    second = features_from_instances([[2, "b", None, 2], [3, None, "z", 3]], MIXED, 10)
    merged = FeatureBatch.concat([first, second])
    assert merged.n_rows == 3
    assert merged.numeric[:, 0].tolist() == [1, 2, 3]
    assert merged.other["plan"].tolist() == ["a", "b", None]


def test_v1_fast_path_reads_plain_numbers_and_is_skipped_when_booleans_may_hide() -> None:
    fast = features_from_instances([[1, 2, 3], [4, 5.5, None]], NUMERIC, 10, may_hold_booleans=False)
    assert fast.numeric[0].tolist() == [1, 2, 3] and math.isnan(fast.numeric[1, 2])
    with pytest.raises(InvalidInput, match="feature 'c' is numeric, got a boolean"):
        features_from_instances([[1, 2, True]], NUMERIC, 10, may_hold_booleans=True)
