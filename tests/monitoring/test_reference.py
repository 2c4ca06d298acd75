"""The drift reference: bins of the training data, holdout outputs and the confidence calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import InvalidInput
from modelyard.monitoring.reference import (
    DRIFT_FORMAT,
    MISSING_BIN,
    OTHER_BIN,
    Binning,
    drift_reference,
)
from modelyard.spec import FeatureSpec, FeatureType

FEATURES = [
    FeatureSpec(name="x", type=FeatureType.NUMERIC),
    FeatureSpec(name="colour", type=FeatureType.CATEGORICAL),
    FeatureSpec(name="note", type=FeatureType.TEXT),
]


def frame(rows: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    x[:10] = np.nan
    colour = rng.choice(["red", "blue", "green"], size=rows, p=[0.5, 0.3, 0.2]).astype(object)
    colour[10:20] = None
    words = np.array(["good", "bad", "fine", "ok"])
    note = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 8, size=rows)]
    return pd.DataFrame({"x": x, "colour": colour, "note": note})


def test_numeric_bins_have_tails_and_a_missing_bin_and_shares_sum_to_one() -> None:
    reference = drift_reference(frame(), FEATURES)
    assert reference["format"] == DRIFT_FORMAT
    x = reference["features"]["x"]
    assert len(x["edges"]) == 11  # deciles 0..1 of continuous values
    assert x["bins"][0].startswith("<") and x["bins"][-2].startswith(">") and x["bins"][-1] == MISSING_BIN
    assert len(x["shares"]) == len(x["bins"]) == len(x["edges"]) + 2
    assert sum(x["shares"]) == pytest.approx(1.0)
    assert x["shares"][0] == 0.0 and x["shares"][-2] == 0.0  # nothing below the min or above the max
    assert x["shares"][-1] == pytest.approx(0.01)
    interior = x["shares"][1:-2]
    assert all(share == pytest.approx(0.099, abs=0.01) for share in interior)


def test_categorical_keeps_top_k_then_other_and_missing() -> None:
    reference = drift_reference(frame(), FEATURES, top_k=2)
    colour = reference["features"]["colour"]
    assert colour["values"] == ["red", "blue"]
    assert colour["bins"] == ["red", "blue", OTHER_BIN, MISSING_BIN]
    assert colour["shares"][-1] == pytest.approx(0.01)
    assert sum(colour["shares"]) == pytest.approx(1.0)


def test_text_bins_token_counts_and_keeps_a_vocabulary_with_its_oov_rate() -> None:
    reference = drift_reference(frame(), FEATURES, vocabulary_size=3)
    note = reference["features"]["note"]
    assert note["type"] == "text"
    assert note["edges"][0] >= 1 and note["edges"][-1] <= 7
    assert len(note["vocabulary"]) == 3
    assert 0.15 < note["oov_rate"] < 0.35  # one word of four left out


def test_outputs_and_calibration_come_from_the_holdout() -> None:
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.55, 0.45]] * 20)
    labels = ["a", "a", "b", "a", "b"] * 20
    reference = drift_reference(
        frame(), FEATURES, holdout_probabilities=probabilities, holdout_labels=labels, classes=["a", "b"]
    )
    assert reference["holdout_rows"] == 100
    mix = reference["outputs"]["class"]
    assert mix["bins"][:2] == ["a", "b"] and mix["shares"][:2] == pytest.approx([0.6, 0.4])
    calibration = reference["calibration"]
    assert calibration["holdout_accuracy"] == pytest.approx(0.6)
    assert len(calibration["accuracy"]) == len(reference["outputs"]["confidence"]["bins"])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(InvalidInput, match="bins, top_k and vocabulary_size must be at least 1"):
        drift_reference(frame(), FEATURES, bins=0)
    with pytest.raises(InvalidInput, match="not in the data: 'y'"):
        drift_reference(frame(), [FeatureSpec(name="y", type=FeatureType.NUMERIC)])
    with pytest.raises(InvalidInput, match=r"holdout probabilities must be \[rows, classes\] = \[2, 2\]"):
        drift_reference(
            frame(),
            FEATURES,
            holdout_probabilities=np.ones((3, 2)),
            holdout_labels=["a", "b"],
            classes=["a", "b"],
        )


def test_binning_counts_tails_missing_and_unknown_categories() -> None:
    reference = drift_reference(frame(), FEATURES)
    binning = Binning(reference, ["x"])
    numeric = np.array([[-100.0], [100.0], [np.nan], [0.0]])
    other = {
        "colour": np.array(["red", "purple", None, "blue"], dtype=object),
        "note": np.array(["good zebra", None, "ok", "fine fine fine"], dtype=object),
    }
    counts = binning.count(numeric, other)
    x = counts[binning.slices["x"]]
    assert x[0] == 1 and x[-2] == 1 and x[-1] == 1 and x.sum() == 4
    colour = dict(zip(binning.bin_labels["colour"], counts[binning.slices["colour"]], strict=True))
    assert colour == {"red": 1, "blue": 1, "green": 0, OTHER_BIN: 1, MISSING_BIN: 1}
    assert binning.token_counts(counts, "note") == (6, 1)  # "zebra" is out of vocabulary
    assert counts[binning.slices["note"]][-1] == 1


def test_a_constant_feature_has_one_interior_bin() -> None:
    constant = pd.DataFrame({"x": [2.0] * 50})
    reference = drift_reference(constant, [FeatureSpec(name="x", type=FeatureType.NUMERIC)])
    binning = Binning(reference, ["x"])
    counts = binning.count(np.array([[1.0], [2.0], [3.0]]), {})
    assert list(counts) == [1, 1, 1, 0]
