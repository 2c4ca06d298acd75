from __future__ import annotations

import pandas as pd
import pytest

from modelyard.errors import DataValidationError
from modelyard.spec import FeatureSpec, ModelSpec
from modelyard.training.evaluation import evaluate
from modelyard.training.results import select_best
from modelyard.training.train import train


def _spec(**fields: object) -> ModelSpec:
    raw = {
        "name": "animals",
        "description": "Which animal wrote the note.",
        "data": {"path": "unused.csv"},
        "target": "animal",
        "algorithms": ["logistic_regression", "knn", "naive_bayes"],
        "search": {"strategy": "random", "trials": 3},
        "cv_folds": 3,
        "gate": {"min_score": 0.8},
        **fields,
    }
    return ModelSpec.model_validate(raw)


def test_train_end_to_end_on_iris(iris_frame: pd.DataFrame, iris_features: list[FeatureSpec]) -> None:
    spec = _spec(name="iris", target="species", holdout=0.2)
    steps: list[tuple[str, int, int]] = []
    result = train(
        spec,
        iris_frame,
        iris_features,
        n_jobs=1,
        progress=lambda *step: steps.append(step),
        dataset_fingerprint="f" * 64,
    )

    assert result.spec_name == "iris" and result.target == "species"
    assert result.classes == ["setosa", "versicolor", "virginica"]
    assert (result.train_rows, result.holdout_rows) == (120, 30)
    assert [c.algorithm.value for c in result.candidates] == ["logistic_regression", "knn", "naive_bayes"]
    assert result.winner.summary() == select_best(result.candidates, spec.metric)
    assert result.model is result.winner.model
    # the evaluation is the winner's, on the held-out rows it never trained on
    holdout = result.holdout
    assert len(holdout) == 30 and list(holdout.columns) == [*(f.name for f in iris_features), "species"]
    assert result.evaluation == evaluate(result.model, holdout.drop(columns="species"), holdout["species"])
    assert result.holdout_score == result.evaluation.metrics["f1_macro"] >= 0.9
    # documents
    assert "data:image/png;base64," in result.report_html
    for candidate in result.candidates:
        assert f"<td>{candidate.algorithm.value}</td>" in result.report_html
    assert "f" * 64 in result.model_card_md and "| setosa | 50 |" in result.model_card_md
    # progress: each algorithm's trials, then evaluation and report
    assert {step for step, _, _ in steps} == {
        "tune logistic_regression",
        "tune knn",
        "tune naive_bayes",
        "evaluate",
        "report",
    }
    assert steps[-1] == ("report", 1, 1)
    assert ("tune knn", 3, 3) in steps


def test_train_with_text_and_categories(mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]) -> None:
    spec = _spec(algorithms=["naive_bayes", "svm"], holdout=0.25)
    result = train(spec, mixed_frame, mixed_features, n_jobs=1)

    assert result.classes == ["cat", "dog", "owl"]
    assert result.holdout_rows == 15
    assert result.evaluation.score("f1_macro") > 0.6
    assert "| note | text |" in result.model_card_md
    served = pd.DataFrame({"size": [0.1], "weight": [None], "colour": ["purple"], "note": ["purrs and naps"]})
    assert result.model.predict(served).tolist() == ["cat"]


def test_a_single_class_is_a_clear_error(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    only_cats = mixed_frame[mixed_frame["animal"] == "cat"]
    with pytest.raises(
        DataValidationError, match=r"the target 'animal' needs at least two classes \(found: 'cat'\)"
    ):
        train(_spec(), only_cats, mixed_features, n_jobs=1)


def test_missing_columns_are_named_before_any_work(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    with pytest.raises(DataValidationError) as caught:
        train(_spec(target="species"), mixed_frame.drop(columns=["note"]), mixed_features, n_jobs=1)
    assert caught.value.problems == [
        "the target column 'species' is not in the data",
        "feature column(s) not in the data: note",
    ]
    assert caught.value.status_code == 422


def test_too_few_rows_per_class_after_the_holdout_is_named(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    # 20 rows per class, a 0.5 holdout leaves 10: fewer than 12 folds
    spec = _spec(cv_folds=12, holdout=0.5)
    with pytest.raises(
        DataValidationError, match="every class needs at least cv_folds=12 training rows: 'cat' has 10"
    ):
        train(spec, mixed_frame, mixed_features, n_jobs=1)
