"""The example specs load, their data is what make_data.py writes, and they train to their targets."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import yaml

from modelyard.spec import (
    Algorithm,
    FeatureSpec,
    FeatureType,
    ModelSpec,
    SearchSpec,
    SearchStrategy,
    load_spec,
)
from modelyard.training.train import TrainingResult, train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# model specs only: iris-model.yaml is the same spec as a Model resource (the operator's), tested there
SPECS = sorted(
    path.name for path in EXAMPLES.glob("*.yaml") if yaml.safe_load(path.read_text()).get("kind") != "Model"
)


def _make_data() -> ModuleType:
    loader = importlib.util.spec_from_file_location("examples_make_data", EXAMPLES / "make_data.py")
    assert loader and loader.loader
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _load(name: str) -> tuple[ModelSpec, pd.DataFrame, list[FeatureSpec]]:
    spec = load_spec(EXAMPLES / name)
    assert spec.data.path is not None
    frame = pd.read_csv(spec.data.path)
    # specs without features rely on inference; their data is all numeric, which is what it infers
    features = spec.features or [
        FeatureSpec(name=column, type=FeatureType.NUMERIC)
        for column in frame.columns
        if column != spec.target
    ]
    return spec, frame, features


def _train_quickly(name: str) -> TrainingResult:
    spec, frame, features = _load(name)
    reduced = spec.model_copy(
        update={"search": SearchSpec(strategy=spec.search.strategy, trials=2), "cv_folds": 3}
    )
    return train(reduced, frame, features)


def test_the_four_examples_exist() -> None:
    assert SPECS == ["breast_cancer.yaml", "digits.yaml", "iris.yaml", "sentiment.yaml"]


@pytest.mark.parametrize("name", SPECS)
def test_example_spec_loads_and_matches_its_data(name: str) -> None:
    spec, frame, features = _load(name)

    assert Path(spec.data.path or "").is_file()
    assert Path(spec.data.path or "").parent == EXAMPLES / "data"  # relative to the spec file
    assert spec.target in frame.columns
    assert {f.name for f in features} <= set(frame.columns)
    assert frame[spec.target].nunique() >= 2
    assert frame.notna().all().all()
    assert spec.gate.min_score > 0.5


def test_iris_compares_all_six_algorithms_by_random_search() -> None:
    spec = load_spec(EXAMPLES / "iris.yaml")
    assert spec.algorithms == list(Algorithm)
    assert spec.search.strategy is SearchStrategy.RANDOM and spec.metric.value == "f1_macro"
    assert spec.gate.min_score == 0.9


def test_class_labels_are_readable_strings() -> None:
    expected = {
        "iris.yaml": {"setosa", "versicolor", "virginica"},
        "breast_cancer.yaml": {"malignant", "benign"},
        "digits.yaml": {str(d) for d in range(10)},
        "sentiment.yaml": {"positive", "negative"},
    }
    for name, labels in expected.items():
        spec, frame, _ = _load(name)
        assert set(frame[spec.target].astype(str)) == labels, name


def test_make_data_reproduces_the_committed_files() -> None:
    make_data = _make_data()
    for name in ("iris", "breast_cancer", "digits", "sentiment"):
        buffer = io.StringIO()
        getattr(make_data, name)().to_csv(buffer, index=False, lineterminator="\n")
        assert buffer.getvalue() == (EXAMPLES / "data" / f"{name}.csv").read_text(encoding="utf-8"), name


def test_sentiment_data_is_varied_and_balanced() -> None:
    frame = pd.read_csv(EXAMPLES / "data" / "sentiment.csv")
    assert 200 <= len(frame) <= 400
    assert frame["sentiment"].value_counts().to_dict() == {"negative": 160, "positive": 160}
    assert frame["review"].nunique() > 0.95 * len(frame)
    assert set(frame["channel"]) == {"web", "mobile_app", "store"}


def test_iris_trains_with_a_reduced_budget() -> None:
    result = _train_quickly("iris.yaml")
    assert len(result.candidates) == 6
    assert result.evaluation.score("f1_macro") >= 0.85


def test_sentiment_trains_through_tfidf_with_a_reduced_budget() -> None:
    result = _train_quickly("sentiment.yaml")
    assert result.evaluation.score("f1_macro") >= 0.85
    verdicts = result.model.predict(
        pd.DataFrame(
            {
                "review": ["Works perfectly, highly recommend.", "Arrived broken. I want a refund."],
                "channel": ["web", "kiosk"],  # a channel never seen in training
            }
        )
    )
    assert verdicts.tolist() == ["positive", "negative"]


@pytest.mark.slow
def test_iris_full_example_reaches_its_gate() -> None:
    spec, frame, features = _load("iris.yaml")
    result = train(spec, frame, features)
    assert result.evaluation.score("f1_macro") >= 0.9
    assert result.holdout_score >= spec.gate.min_score
    assert all(
        candidate.n_trials == 20 for candidate in result.candidates if candidate.algorithm != "naive_bayes"
    )


@pytest.mark.slow
def test_breast_cancer_full_example_reaches_roc_auc_097() -> None:
    spec, frame, features = _load("breast_cancer.yaml")
    result = train(spec, frame, features)
    assert result.classes == ["benign", "malignant"]
    assert result.evaluation.roc_curves[0].positive_class == "malignant"
    assert result.evaluation.score("roc_auc") >= 0.97


@pytest.mark.slow
def test_digits_full_example_reaches_its_gate() -> None:
    spec, frame, features = _load("digits.yaml")
    result = train(spec, frame, features)
    assert len(result.evaluation.roc_curves) == 10
    assert result.holdout_score >= spec.gate.min_score
