"""Feature handling: tensors and V1 instances against a model's schema, and predictions as outputs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from modelyard.errors import InvalidInput
from modelyard.serving.features import (
    NO_TEXT,
    BooleanTokens,
    FeatureBatch,
    features_from_instances,
    features_from_tensors,
    select_outputs,
)
from modelyard.serving.types import Datatype, InferenceRequest, RequestedOutput, Tensor

from .conftest import MIXED, NUMERIC


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


def test_v1_text_features_take_strings_only() -> None:
    with pytest.raises(InvalidInput, match="feature 'review' is text, expected a string, got a number"):
        features_from_instances([[1, "a", 5, 1]], MIXED, 10)
    with pytest.raises(InvalidInput, match="more than the maximum of 1 per request"):
        features_from_instances([[1, 2, 3], [1, 2, 3]], NUMERIC, 1)


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


def test_feature_batches_concatenate_row_wise() -> None:
    first = features_from_instances([[1, "a", "x", 1]], MIXED, 10)
    second = features_from_instances([[2, "b", None, 2], [3, None, "z", 3]], MIXED, 10)
    merged = FeatureBatch.concat([first, second])
    assert merged.n_rows == 3
    assert merged.numeric[:, 0].tolist() == [1, 2, 3]
    assert merged.other["plan"].tolist() == ["a", "b", None]


def test_v1_fast_path_reads_plain_numbers_and_is_skipped_when_booleans_may_hide() -> None:
    no_token = BooleanTokens(b"[[2, 3, 4], [5, 6.5, 1]]")
    fast = features_from_instances([[2, 3, 4], [5, 6.5, 1]], NUMERIC, 10, boolean_tokens=no_token)
    assert fast.numeric.tolist() == [[2, 3, 4], [5, 6.5, 1]]
    for tokens in (BooleanTokens(b"[[1, 2, true]]"), BooleanTokens(None), NO_TEXT):
        with pytest.raises(InvalidInput, match="feature 'c' is numeric, got a boolean"):
            features_from_instances([[1, 2, True]], NUMERIC, 10, boolean_tokens=tokens)
        with pytest.raises(InvalidInput, match="feature 'c' is numeric, got a boolean"):
            features_from_instances([[2.5, 3.5, False]], NUMERIC, 10, boolean_tokens=tokens)


class CountedText(bytes):
    """A body that counts how often it is looked through for a token."""

    looks = 0

    def __contains__(self, token: object) -> bool:
        self.looks += 1
        return super().__contains__(token)  # type: ignore[operator]


def test_json_text_is_looked_through_for_booleans_once_and_only_when_a_value_is_0_or_1() -> None:
    """The look costs a pass over the body; numbers with no 0 or 1 cannot hide a boolean."""
    text = CountedText(b'{"instances": [[2.5, true]]}')
    tokens = BooleanTokens(text)
    assert not tokens.may_hide_boolean(np.array([2.5, -1.0, 7.0]))
    assert text.looks == 0
    assert tokens.may_hide_boolean(np.array([2.5, 1.0]))
    assert tokens.may_hide_boolean(np.array([0, 3]))
    assert text.looks == 1
    assert not BooleanTokens(b'{"instances": [[2.5, 1.0]]}').may_hide_boolean(np.array([2.5, 1.0]))
    assert NO_TEXT.may_hide_boolean(np.array([0.0]))


def test_the_first_missing_value_is_found_in_column_order() -> None:
    complete = features_from_instances([[1, "a", "x", 1]], MIXED, 10)
    assert complete.first_missing(MIXED) is None
    holes = features_from_instances([[1, "a", "x", None], [2, None, "y", 3]], MIXED, 10)
    assert holes.first_missing(MIXED) == ("plan", 1)
    numeric = features_from_instances([[1, 2, 3], [4, None, 6]], NUMERIC, 10)
    assert numeric.first_missing(NUMERIC) == ("b", 1)
