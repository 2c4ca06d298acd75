"""reference_statistics: the drift reference stored in the bundle, as strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelyard.data.profile import QUANTILES, REFERENCE_FORMAT, histogram_counts, reference_statistics
from modelyard.errors import InvalidInput
from modelyard.spec import FeatureSpec, FeatureType

NUMERIC = FeatureSpec(name="length", type=FeatureType.NUMERIC)
CATEGORICAL = FeatureSpec(name="colour", type=FeatureType.CATEGORICAL)
TEXT = FeatureSpec(name="review", type=FeatureType.TEXT)


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    length = rng.normal(10.0, 2.0, 100)
    length[[3, 50]] = np.nan
    return pd.DataFrame(
        {
            "length": length,
            "colour": ["red"] * 50 + ["blue"] * 30 + ["green"] * 15 + [None] * 5,
            "review": ["Great product", "great value for money", "bad", None] * 25,
            "label": ["yes", "no", "no", "no"] * 25,
        }
    )


def test_numeric_profile_matches_the_data() -> None:
    df = frame()
    stats = reference_statistics(df, [NUMERIC])
    length = stats["features"]["length"]
    finite = df["length"].dropna().to_numpy()

    assert stats["format"] == REFERENCE_FORMAT
    assert stats["rows"] == 100
    assert length["type"] == "numeric"
    assert length["count"] == 98
    assert length["null_fraction"] == pytest.approx(0.02)
    assert length["mean"] == pytest.approx(finite.mean())
    assert length["std"] == pytest.approx(finite.std(ddof=1))
    assert (length["min"], length["max"]) == (finite.min(), finite.max())
    assert list(length["quantiles"]) == [f"{q:g}" for q in QUANTILES]
    assert length["quantiles"]["0.5"] == pytest.approx(np.median(finite))


def test_histogram_has_decile_edges_and_counts_every_value() -> None:
    histogram = reference_statistics(frame(), [NUMERIC])["features"]["length"]["histogram"]

    assert len(histogram["edges"]) == 11
    assert len(histogram["counts"]) == 10
    assert sum(histogram["counts"]) == 98
    assert all(9 <= count <= 11 for count in histogram["counts"])  # deciles: about a tenth each


def test_discrete_and_constant_numbers_get_fewer_bins() -> None:
    df = pd.DataFrame({"length": [1, 1, 1, 2, 2, 3] * 5, "flat": [4.0] * 30})
    flat = FeatureSpec(name="flat", type=FeatureType.NUMERIC)

    stats = reference_statistics(df, [NUMERIC, flat])["features"]

    assert stats["length"]["histogram"] == {"edges": [1.0, 2.0, 3.0], "counts": [15, 15]}
    assert stats["flat"]["histogram"] == {"edges": [4.0, 4.0], "counts": [30]}
    assert stats["flat"]["std"] == 0.0


def test_categorical_profile_top_values_and_other() -> None:
    stats = reference_statistics(frame(), [CATEGORICAL], top_k=2)["features"]["colour"]

    assert stats == {
        "type": "categorical",
        "count": 95,
        "null_fraction": 0.05,
        "distinct": 3,
        "frequencies": {"red": 50 / 95, "blue": 30 / 95},
        "other": pytest.approx(15 / 95),
    }


def test_categorical_keys_are_str_of_the_value() -> None:
    df = pd.DataFrame({"colour": [True, False, True, 3, 2.5]}, dtype=object)
    stats = reference_statistics(df, [CATEGORICAL])["features"]["colour"]
    assert stats["frequencies"] == {"True": 0.4, "2.5": 0.2, "3": 0.2, "False": 0.2}


def test_text_profile_lengths_words_and_vocabulary() -> None:
    stats = reference_statistics(frame(), [TEXT], top_k=3)["features"]["review"]

    assert stats["type"] == "text"
    assert (stats["count"], stats["null_fraction"]) == (75, 0.25)
    assert stats["characters"]["min"] == 3.0
    assert stats["characters"]["max"] == float(len("great value for money"))
    assert stats["words"]["mean"] == pytest.approx((2 + 4 + 1) / 3)
    assert stats["vocabulary_size"] == 6  # great, product, value, for, money, bad (lower-cased)
    assert stats["top_words"] == {"great": 2 / 7, "bad": 1 / 7, "for": 1 / 7}


def test_target_classes_when_asked() -> None:
    stats = reference_statistics(frame(), [], target="label")
    assert stats["target"] == {"name": "label", "count": 100, "classes": {"no": 0.75, "yes": 0.25}}
    assert "target" not in reference_statistics(frame(), [])


def test_output_is_strict_json_even_for_degenerate_columns() -> None:
    df = pd.DataFrame({"length": [np.nan, np.nan], "colour": [None, None], "review": [None, "one"]})

    stats = reference_statistics(df, [NUMERIC, CATEGORICAL, TEXT])

    text = json.dumps(stats, allow_nan=False)
    assert json.loads(text) == stats
    assert stats["features"]["length"]["histogram"] is None
    assert stats["features"]["length"]["null_fraction"] == 1.0
    assert stats["features"]["review"]["words"]["std"] is None  # one text: no spread


def test_full_profile_is_json_serialisable() -> None:
    stats = reference_statistics(frame(), [NUMERIC, CATEGORICAL, TEXT], target="label")
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats


def test_histogram_counts_rule_for_live_values() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    # below the first edge -> first bin; an edge opens its bin; the last edge closes the last bin;
    # above the last edge -> last bin; NaN and infinities are not counted
    live = [-5.0, 0.0, 0.5, 1.0, 2.9, 3.0, 99.0, np.nan, np.inf]
    assert histogram_counts(live, edges) == [3, 1, 3]
    assert histogram_counts([1.0, 7.0], [4.0, 4.0]) == [2]


def test_histogram_counts_reuses_the_reference_binning() -> None:
    df = frame()
    histogram = reference_statistics(df, [NUMERIC])["features"]["length"]["histogram"]
    assert histogram_counts(df["length"].to_numpy(), histogram["edges"]) == histogram["counts"]


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(
        InvalidInput, match=r"cannot profile columns that are not in the data: 'nope', 'ghost'"
    ):
        reference_statistics(frame(), [FeatureSpec(name="nope", type=FeatureType.NUMERIC)], target="ghost")
    with pytest.raises(InvalidInput, match=r"bins and top_k must be at least 1, got bins=0, top_k=20"):
        reference_statistics(frame(), [NUMERIC], bins=0)
    with pytest.raises(InvalidInput, match=r"histogram edges must be at least two non-decreasing numbers"):
        histogram_counts([1.0], [2.0, 1.0])
