"""Small, fast data for the training tests: a mixed numeric/categorical/text frame and iris."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.spec import FeatureSpec, FeatureType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MIXED_FEATURES = [
    FeatureSpec(name="size", type=FeatureType.NUMERIC),
    FeatureSpec(name="weight", type=FeatureType.NUMERIC),
    FeatureSpec(name="colour", type=FeatureType.CATEGORICAL),
    FeatureSpec(name="note", type=FeatureType.TEXT),
]

_WORDS = {
    "cat": ["purrs", "whiskers", "naps", "mice"],
    "dog": ["barks", "fetches", "leash", "bones"],
    "owl": ["hoots", "night", "feathers", "branch"],
}
_COLOURS = {"cat": "grey", "dog": "brown", "owl": "white"}


def make_mixed_frame(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    """Three classes told apart by a numeric, a category and words; with NaNs/None sprinkled in."""
    rng = np.random.default_rng(seed)
    labels = np.array(["cat", "dog", "owl"])[np.arange(rows) % 3]
    centre = {"cat": 0.0, "dog": 2.0, "owl": 4.0}
    size = np.array([centre[label] for label in labels]) + rng.normal(0, 0.7, rows)
    weight = rng.normal(10, 3, rows)
    colour = [
        _COLOURS[label] if rng.random() < 0.8 else str(rng.choice(["grey", "brown", "white"]))
        for label in labels
    ]
    note = [" ".join(rng.choice(_WORDS[label], size=3)) + " and more" for label in labels]
    frame = pd.DataFrame(
        {"size": size, "weight": weight, "colour": colour, "note": note, "animal": labels}
    ).astype({"colour": object, "note": object})
    frame.loc[frame.index % 7 == 1, "weight"] = np.nan
    frame.loc[frame.index % 11 == 2, "colour"] = None
    frame.loc[frame.index % 13 == 3, "note"] = None
    return frame


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    return make_mixed_frame()


@pytest.fixture
def mixed_features() -> list[FeatureSpec]:
    return list(MIXED_FEATURES)


@pytest.fixture(scope="session")
def iris_frame() -> pd.DataFrame:
    return pd.read_csv(EXAMPLES / "data" / "iris.csv")


@pytest.fixture
def iris_features() -> list[FeatureSpec]:
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    return [FeatureSpec(name=name, type=FeatureType.NUMERIC) for name in names]
