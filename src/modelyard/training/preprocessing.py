"""Turn declared features into a scikit-learn ColumnTransformer.

- numeric: median imputation, then standard scaling (or min-max scaling into [0, 1] for estimators that
  need non-negative input, see ``nonnegative``);
- categorical: values compared as strings (1 and "1" are one category; a column mixing numbers and
  strings, or holding booleans, encodes; but 1.0 is "1.0"), most-frequent imputation, then one-hot
  encoding that ignores categories unseen in training;
- text: one TF-IDF vectoriser per column, a missing text being the empty string.

Every step is a scikit-learn estimator or a numpy/pandas function, never a class or function of
modelyard: a pickled model then needs only scikit-learn, numpy, scipy and pandas to load, so the model
server (which must not import ``modelyard.training``) can unpickle it.

Inputs are normalised before imputing because a model server builds frames from JSON: there a missing
value arrives as ``None`` in an object column, which scikit-learn's imputers do not treat as missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OneHotEncoder, StandardScaler

from modelyard.errors import InvalidInput
from modelyard.spec import FeatureSpec, FeatureType

# TF-IDF vocabulary caps. Sparse-capable estimators take a wide vocabulary; estimators that need dense
# input would otherwise hold rows x vocabulary floats in memory.
SPARSE_TEXT_MAX_FEATURES = 20_000
DENSE_TEXT_MAX_FEATURES = 1_000


def _numeric_pipeline(nonnegative: bool) -> Pipeline:
    scaler = MinMaxScaler(clip=True) if nonnegative else StandardScaler()
    return Pipeline(
        [
            # None / pd.NA -> NaN; a non-numeric string fails here, naming the value
            (
                "as_float",
                FunctionTransformer(pd.DataFrame.to_numpy, kw_args={"dtype": float, "na_value": np.nan}),
            ),
            ("impute", SimpleImputer(strategy="median")),
            ("scale", scaler),
        ]
    )


def _categorical_pipeline(dense: bool) -> Pipeline:
    return Pipeline(
        [
            # Categories compare as strings, so a column mixing 1 and "a", or holding booleans, encodes
            (
                "as_strings",
                FunctionTransformer(pd.DataFrame.map, kw_args={"func": str, "na_action": "ignore"}),
            ),
            (
                "as_objects",
                FunctionTransformer(pd.DataFrame.to_numpy, kw_args={"dtype": object, "na_value": np.nan}),
            ),
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=not dense)),
        ]
    )


def _text_pipeline(dense: bool) -> Pipeline:
    return Pipeline(
        [
            # the column arrives as a Series (selected by name, not by list): TF-IDF wants 1-D documents
            ("as_strings", FunctionTransformer(pd.Series.to_numpy, kw_args={"dtype": str, "na_value": ""})),
            (
                "tfidf",
                TfidfVectorizer(
                    sublinear_tf=True,
                    ngram_range=(1, 2),
                    max_features=DENSE_TEXT_MAX_FEATURES if dense else SPARSE_TEXT_MAX_FEATURES,
                ),
            ),
        ]
    )


def build_preprocessor(
    features: Sequence[FeatureSpec], *, dense: bool = False, nonnegative: bool = False
) -> ColumnTransformer:
    """A ColumnTransformer for ``features``, to be fitted on a DataFrame with those columns.

    ``dense``: always produce a dense array (for estimators that refuse sparse input). Otherwise the
    output is sparse when mostly zeros (one-hot, TF-IDF), scikit-learn's default threshold.
    ``nonnegative``: scale numerics into [0, 1] (clipping values outside the training range) instead of
    standardising, for estimators such as ComplementNB that reject negative input.
    """
    if not features:
        raise InvalidInput("no features to train on: declare at least one feature")
    names = [feature.name for feature in features]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInput(f"features declared more than once: {', '.join(repeated)}")

    numeric = [f.name for f in features if f.type is FeatureType.NUMERIC]
    categorical = [f.name for f in features if f.type is FeatureType.CATEGORICAL]
    text = [f.name for f in features if f.type is FeatureType.TEXT]

    transformers: list[tuple[str, Pipeline, str | list[str]]] = []
    if numeric:
        transformers.append(("numeric", _numeric_pipeline(nonnegative), numeric))
    if categorical:
        transformers.append(("categorical", _categorical_pipeline(dense), categorical))
    transformers.extend((f"text:{name}", _text_pipeline(dense), name) for name in text)
    return ColumnTransformer(
        transformers,
        remainder="drop",
        sparse_threshold=0.0 if dense else 0.3,
        verbose_feature_names_out=True,
    )
