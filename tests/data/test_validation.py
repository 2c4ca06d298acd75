"""Feature inference and validate_frame: each problem is reported with its own clear line, all at once."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.data.validation import (
    ValidationSummary,
    infer_features,
    min_rows_per_class,
    resolve_features,
    validate_frame,
)
from modelyard.errors import DataValidationError
from modelyard.spec import FeatureSpec, FeatureType, ModelSpec, parse_spec

NUMERIC = FeatureType.NUMERIC
CATEGORICAL = FeatureType.CATEGORICAL
TEXT = FeatureType.TEXT


def make_spec(features: list[tuple[str, FeatureType]] | None = None, **fields: Any) -> ModelSpec:
    raw: dict[str, Any] = {"name": "demo", "data": {"path": "demo.csv"}, "target": "label", **fields}
    if features is not None:
        raw["features"] = [{"name": name, "type": kind.value} for name, kind in features]
    return parse_spec(raw)


def good_frame(rows_per_class: int = 10) -> pd.DataFrame:
    labels = ["cat"] * rows_per_class + ["dog"] * rows_per_class
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "weight": rng.normal(5, 1, len(labels)),
            "colour": (["black", "white"] * rows_per_class)[: len(labels)],
            "label": labels,
        }
    )


FEATURES = [FeatureSpec(name="weight", type=NUMERIC), FeatureSpec(name="colour", type=CATEGORICAL)]


def problems_of(df: pd.DataFrame, spec: ModelSpec, features: list[FeatureSpec] = FEATURES) -> list[str]:
    with pytest.raises(DataValidationError) as caught:
        validate_frame(df, spec, features)
    assert str(caught.value).startswith(
        f"data 'demo.csv' for model 'demo' failed validation with {len(caught.value.problems)}"
    )
    return caught.value.problems


# ---------------------------------------------------------------- success


def test_valid_frame_returns_a_summary() -> None:
    summary = validate_frame(good_frame(), make_spec(), FEATURES)

    assert summary == ValidationSummary(
        rows=20, target="label", features=FEATURES, class_counts={"cat": 10, "dog": 10}
    )
    assert summary.describe() == "20 rows, 2 features, 2 classes of 'label' (cat: 10, dog: 10)"
    assert summary.to_dict()["features"][0] == {"name": "weight", "type": "numeric"}


def test_index_does_not_matter_and_numbers_as_text_are_accepted() -> None:
    df = good_frame()
    df["weight"] = df["weight"].map(lambda v: f"{v:.3f}").astype("str")
    df.loc[3, "weight"] = "NA"  # a missing-value token, not a bad number
    df.index = df.index * 10 + 7

    assert validate_frame(df, make_spec(), FEATURES).rows == 20


# ---------------------------------------------------------------- each check, with its message


def test_missing_target_is_reported_with_a_suggestion() -> None:
    df = good_frame().rename(columns={"label": "labels"})
    assert problems_of(df, make_spec()) == ["target column 'label' is missing (did you mean 'labels'?)"]


def test_missing_target_lists_the_columns_when_nothing_is_close() -> None:
    df = good_frame().rename(columns={"label": "zzz"})
    assert problems_of(df, make_spec()) == [
        "target column 'label' is missing; the columns are: 'weight', 'colour', 'zzz'"
    ]


def test_declared_feature_that_does_not_exist() -> None:
    features = [*FEATURES, FeatureSpec(name="wieght_kg", type=NUMERIC)]
    assert problems_of(good_frame(), make_spec(), features) == [
        "feature column 'wieght_kg' does not exist (did you mean 'weight'?)"
    ]


def test_entirely_null_feature() -> None:
    df = good_frame()
    df["colour"] = None
    assert problems_of(df, make_spec()) == ["feature column 'colour' is entirely null"]


def test_entirely_null_target() -> None:
    df = good_frame()
    df["label"] = np.nan
    assert problems_of(df, make_spec()) == ["target column 'label' is entirely null"]


def test_target_with_nulls_reports_count_and_rows() -> None:
    df = good_frame()
    df.loc[[2, 5], "label"] = None
    (problem,) = problems_of(df, make_spec())
    assert re.fullmatch(
        r"target column 'label' has 2 null value\(s\) \(rows 3, 6\); rows without a label cannot be used "
        r"for training: drop or label them",
        problem,
    )


def test_only_one_class() -> None:
    df = good_frame()
    df["label"] = "cat"
    assert problems_of(df, make_spec()) == [
        "target column 'label' has only one class ('cat'); a classifier needs at least two"
    ]


def test_class_smaller_than_cv_folds_after_the_holdout_names_class_and_counts() -> None:
    df = pd.concat([good_frame(), good_frame(3).assign(label="bird")], ignore_index=True)

    (problem,) = problems_of(df, make_spec(cv_folds=5, holdout=0.2))

    assert problem == (
        "class 'bird' of target 'label' has 6 row(s); with holdout 0.2 and cv_folds 5 each class needs "
        "at least 7 rows so that the training part keeps >= 5"
    )


def test_class_rule_accounts_for_the_holdout() -> None:
    # 6 rows would do for 5 folds without a holdout, but a 0.2 holdout leaves only 4 (floor of 4.8).
    assert min_rows_per_class(5, 0.2) == 7
    assert min_rows_per_class(2, 0.5) == 4
    assert min_rows_per_class(3, 0.1) == 4
    spec = make_spec(cv_folds=2, holdout=0.5)
    assert validate_frame(good_frame(4), spec, FEATURES).class_counts == {"cat": 4, "dog": 4}
    assert "has 3 row(s)" in problems_of(good_frame(3), spec)[0]


def test_many_small_classes_are_summarised_after_five_lines() -> None:
    df = pd.DataFrame({"weight": np.arange(8.0), "colour": ["a"] * 8, "label": list("abcdefgh")})

    problems = problems_of(df, make_spec(cv_folds=2, holdout=0.5))

    small = [p for p in problems if p.startswith("class ")]
    assert len(small) == 5
    assert "3 more classes of target 'label' are too small: 'f' (1), 'g' (1), 'h' (1)" in problems


def test_holdout_smaller_than_the_number_of_classes() -> None:
    df = pd.concat([good_frame(7).assign(label=name) for name in "abcdefghijk"], ignore_index=True)
    spec = make_spec(cv_folds=2, holdout=0.01)

    assert problems_of(df, spec) == [
        "the holdout (0.01 of 154 labelled rows = 2) is smaller than the number of classes of 'label' (11); "
        "a stratified holdout needs one row per class"
    ]


def test_continuous_target_is_not_a_classification_target() -> None:
    df = good_frame()
    df["label"] = np.linspace(0.0, 1.0, len(df))
    assert problems_of(df, make_spec()) == [
        "target column 'label' holds non-integer numbers (e.g. 0.05263157894736842 at row 2): "
        "modelyard trains classifiers, so the target must be classes; bin it first"
    ]


def test_non_numbers_in_a_numeric_feature_name_count_and_examples() -> None:
    df = good_frame().astype({"weight": object})
    for row, bad in [(16, "abc"), (3, "12kg"), (9, "?"), (18, "heavy")]:
        df.loc[row, "weight"] = bad

    assert problems_of(df, make_spec()) == [
        "numeric feature 'weight' has 4 value(s) that are not numbers, e.g. '12kg' at row 4, '?' at row 10, "
        "'abc' at row 17"
    ]


def test_infinite_values_in_a_numeric_feature() -> None:
    df = good_frame()
    df.loc[[0, 4], "weight"] = [np.inf, -np.inf]
    assert problems_of(df, make_spec()) == [
        "numeric feature 'weight' has 2 infinite value(s) (rows 1, 5); replace them with a finite number or "
        "leave the cell empty"
    ]


def test_dates_in_a_numeric_feature() -> None:
    df = good_frame()
    df["weight"] = pd.Timestamp("2024-01-01")
    assert problems_of(df, make_spec()) == [
        "numeric feature 'weight' holds dates, not numbers; derive numbers from them first"
    ]


def test_durations_in_a_numeric_feature() -> None:
    df = good_frame()
    df["weight"] = pd.Timedelta("3 days")
    assert problems_of(df, make_spec()) == [
        "numeric feature 'weight' holds durations, not numbers; derive numbers from them first"
    ]


def test_empty_frame() -> None:
    df = good_frame().iloc[0:0]
    assert problems_of(df, make_spec()) == ["the data has no rows"]


def test_repeated_column_names() -> None:
    df = pd.concat([good_frame(), good_frame()[["colour"]]], axis=1)
    assert problems_of(df, make_spec()) == ["column 'colour' appears 2 times; column names must be unique"]


def test_every_problem_is_reported_in_one_error() -> None:
    df = good_frame().astype({"weight": object})
    df.loc[16, "weight"] = "abc"
    df["notes"] = None
    df.loc[0, "label"] = None
    df.loc[1, "label"] = "bird"
    features = [*FEATURES, FeatureSpec(name="notes", type=TEXT), FeatureSpec(name="age", type=NUMERIC)]

    with pytest.raises(DataValidationError) as caught:
        validate_frame(df, make_spec(), features)

    message = str(caught.value)
    assert message.startswith("data 'demo.csv' for model 'demo' failed validation with 5 problem(s):\n")
    for expected in [
        "  - target column 'label' has 1 null value(s) (row 1)",
        "  - class 'bird' of target 'label' has 1 row(s)",
        "  - numeric feature 'weight' has 1 value(s) that are not numbers, e.g. 'abc' at row 17",
        "  - feature column 'notes' is entirely null",
        "  - feature column 'age' does not exist",
    ]:
        assert expected in message
    assert caught.value.status_code == 422


# ---------------------------------------------------------------- inference


def test_infer_features_by_type() -> None:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
    df = pd.DataFrame(
        {
            "customer_id": range(30),
            "age": np.arange(30) % 7 + 20,
            "income": np.linspace(1.0, 2.0, 30),
            "plan": ["basic", "pro", "team"] * 10,
            "churned_before": [True, False] * 15,
            "review": [" ".join(words[i % 5 : i % 5 + 5]) for i in range(30)],
            "signup": pd.date_range("2024-01-01", periods=30),
            "empty": [None] * 30,
            "label": ["yes", "no"] * 15,
        }
    )

    assert infer_features(df, "label") == [
        FeatureSpec(name="age", type=NUMERIC),
        FeatureSpec(name="income", type=NUMERIC),
        FeatureSpec(name="plan", type=CATEGORICAL),
        FeatureSpec(name="churned_before", type=CATEGORICAL),
        FeatureSpec(name="review", type=TEXT),
    ]


def test_infer_short_phrases_with_many_distinct_values_as_text() -> None:
    df = pd.DataFrame({"title": [f"item number {i}" for i in range(40)], "label": [0, 1] * 20})
    assert infer_features(df, "label") == [FeatureSpec(name="title", type=TEXT)]


def test_infer_skips_identifiers_but_keeps_repeated_codes() -> None:
    df = pd.DataFrame(
        {
            "Unnamed: 0": range(25),
            "orderId": [f"o{i}" for i in range(25)],
            "email": [f"user{i}@example.com" for i in range(25)],
            "store_id": [1, 2, 3, 4, 5] * 5,  # repeats: a real grouping, so a feature
            "label": ["a", "b"] * 12 + ["a"],
        }
    )
    assert infer_features(df, "label") == [FeatureSpec(name="store_id", type=NUMERIC)]


def test_infer_object_columns_of_python_values() -> None:
    df = pd.DataFrame(
        {
            "flag": pd.Series([True, None, False], dtype=object),
            "amount": pd.Series([Decimal("1.5"), Decimal("2"), None], dtype=object),
            "size": pd.Categorical(["s", "m", "l"]),
            "label": ["a", "b", "a"],
        }
    )
    assert infer_features(df, "label") == [
        FeatureSpec(name="flag", type=CATEGORICAL),
        FeatureSpec(name="amount", type=NUMERIC),
        FeatureSpec(name="size", type=CATEGORICAL),
    ]


def test_resolve_features_prefers_the_spec() -> None:
    df = good_frame()
    declared = make_spec([("colour", TEXT)])

    assert resolve_features(declared, df) == [FeatureSpec(name="colour", type=TEXT)]
    assert resolve_features(make_spec(), df) == FEATURES
