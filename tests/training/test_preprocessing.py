from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from modelyard.errors import InvalidInput
from modelyard.spec import FeatureSpec, FeatureType
from modelyard.training.preprocessing import build_preprocessor


def _dense(matrix: object) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)  # type: ignore[union-attr]


def test_mixed_columns_get_one_block_each(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    preprocessor = build_preprocessor(mixed_features).fit(mixed_frame)

    assert [name for name, _, _ in preprocessor.transformers_ if name != "remainder"] == [
        "numeric",
        "categorical",
        "text:note",
    ]
    output = _dense(preprocessor.transform(mixed_frame))
    vocabulary = preprocessor.named_transformers_["text:note"].named_steps["tfidf"].vocabulary_
    # 2 numerics + 3 colours + the TF-IDF vocabulary (unigrams and bigrams)
    assert output.shape == (len(mixed_frame), 2 + 3 + len(vocabulary))
    assert "purrs" in vocabulary and "and more" in vocabulary
    assert not np.isnan(output).any()


def test_numerics_are_median_imputed_then_standardised(mixed_features: list[FeatureSpec]) -> None:
    frame = pd.DataFrame({"size": [1.0, 2.0, 3.0, np.nan], "weight": [1.0, 1.0, 3.0, 3.0]})
    numeric = [f for f in mixed_features if f.type is FeatureType.NUMERIC]
    output = _dense(build_preprocessor(numeric).fit_transform(frame))

    # the NaN became the median (2.0), then the column was standardised: mean 0, std 1
    assert output[3, 0] == pytest.approx(output[1, 0]) == pytest.approx(0.0)
    np.testing.assert_allclose(output.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(output.std(axis=0), 1.0)


def test_unknown_category_and_missing_values_at_predict_time(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    preprocessor = build_preprocessor(mixed_features, dense=True).fit(mixed_frame)
    categories = list(preprocessor.named_transformers_["categorical"].named_steps["one_hot"].categories_[0])
    assert categories == ["brown", "grey", "white"]  # None was imputed, never a category

    # what a model server builds from JSON: None everywhere something is missing, a colour never seen
    served = pd.DataFrame(
        {"size": [None, 1.0], "weight": [None, None], "colour": ["purple", None], "note": [None, 7]}
    )
    output = preprocessor.transform(served)

    assert output.shape[0] == 2 and not np.isnan(output).any()
    one_hot = output[:, 2:5]
    assert one_hot[0].tolist() == [0.0, 0.0, 0.0]  # unknown category: all zeros, no error
    assert one_hot[1].sum() == 1.0  # missing category: imputed with the most frequent one
    assert output[0, 5:].sum() == 0.0  # missing text: the empty document


def test_categories_compare_as_strings_so_mixed_and_boolean_columns_encode() -> None:
    features = [FeatureSpec(name="code", type="categorical"), FeatureSpec(name="flag", type="categorical")]
    frame = pd.DataFrame({"code": [1, "a", np.nan, "a"], "flag": [True, False, True, None]})
    preprocessor = build_preprocessor(features, dense=True).fit(frame)

    categories = preprocessor.named_transformers_["categorical"].named_steps["one_hot"].categories_
    assert [list(c) for c in categories] == [["1", "a"], ["False", "True"]]
    assert preprocessor.transform(pd.DataFrame({"code": [1], "flag": [False]})).tolist() == [[1, 0, 1, 0]]


def test_sparse_by_default_dense_on_request(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    text_only = [f for f in mixed_features if f.type is FeatureType.TEXT]
    assert sp.issparse(build_preprocessor(text_only).fit_transform(mixed_frame))
    assert isinstance(build_preprocessor(text_only, dense=True).fit_transform(mixed_frame), np.ndarray)


def test_nonnegative_scales_numerics_into_unit_range(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    preprocessor = build_preprocessor(mixed_features, nonnegative=True).fit(mixed_frame)
    outside = pd.DataFrame(
        {"size": [-100.0, 100.0], "weight": [0.0, 1e6], "colour": ["grey", "x"], "note": ["a", "b"]}
    )

    assert _dense(preprocessor.transform(mixed_frame)).min() >= 0.0
    # values beyond the training range are clipped: ComplementNB never sees a negative
    assert _dense(preprocessor.transform(outside))[:, :2].tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_one_vectoriser_per_text_column() -> None:
    features = [FeatureSpec(name="title", type="text"), FeatureSpec(name="body", type="text")]
    frame = pd.DataFrame({"title": ["red apple", "green pear"], "body": ["sweet fruit", None]})
    preprocessor = build_preprocessor(features).fit(frame)

    title = preprocessor.named_transformers_["text:title"].named_steps["tfidf"].vocabulary_
    body = preprocessor.named_transformers_["text:body"].named_steps["tfidf"].vocabulary_
    assert set(title) == {"red", "apple", "red apple", "green", "pear", "green pear"}
    assert set(body) == {"sweet", "fruit", "sweet fruit"}


def test_fitted_preprocessor_pickles_without_modelyard_code(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    # the model server must unpickle it without importing modelyard.training
    preprocessor = build_preprocessor(mixed_features).fit(mixed_frame)
    payload = pickle.dumps(preprocessor)

    assert b"modelyard" not in payload
    restored = pickle.loads(payload)
    np.testing.assert_allclose(
        _dense(restored.transform(mixed_frame)), _dense(preprocessor.transform(mixed_frame))
    )


def test_non_numeric_value_in_a_numeric_column_is_named() -> None:
    preprocessor = build_preprocessor([FeatureSpec(name="size", type="numeric")])
    with pytest.raises(ValueError, match="could not convert string to float: 'abc'"):
        preprocessor.fit(pd.DataFrame({"size": [1.0, "abc"]}, dtype=object))


def test_no_features_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="no features to train on"):
        build_preprocessor([])


def test_repeated_feature_is_an_error() -> None:
    twice = [FeatureSpec(name="size", type="numeric"), FeatureSpec(name="size", type="categorical")]
    with pytest.raises(InvalidInput, match="features declared more than once: size"):
        build_preprocessor(twice)
