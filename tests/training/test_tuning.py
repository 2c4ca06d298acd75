from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import DataValidationError, InvalidInput, ModelyardError
from modelyard.spec import Algorithm, FeatureSpec, Metric, SearchSpec, SearchStrategy
from modelyard.training.results import CandidateSummary, select_best
from modelyard.training.tuning import scorer_for, tune


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return frame.drop(columns="animal"), frame["animal"]


@pytest.mark.parametrize("strategy", list(SearchStrategy))
@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_each_algorithm_tunes_with_each_strategy(
    algorithm: Algorithm,
    strategy: SearchStrategy,
    mixed_frame: pd.DataFrame,
    mixed_features: list[FeatureSpec],
) -> None:
    x, y = _xy(mixed_frame)
    progress: list[tuple[int, int]] = []
    result = tune(
        algorithm,
        x,
        y,
        mixed_features,
        SearchSpec(strategy=strategy, trials=3),
        Metric.F1_MACRO,
        cv_folds=3,
        seed=0,
        n_jobs=1,
        on_trial=lambda done, total: progress.append((done, total)),
    )

    assert result.algorithm is algorithm and result.strategy is strategy and result.metric is Metric.F1_MACRO
    assert 0.5 < result.cv_score <= 1.0  # the classes are easy to tell apart
    assert 0.0 <= result.cv_std < 0.5
    assert result.elapsed_seconds > 0
    if strategy is SearchStrategy.GRID:
        assert result.n_trials >= 2  # the whole grid, whatever trials says
    else:
        assert 1 <= result.n_trials <= 3
    assert progress[-1][0] == progress[-1][1]
    # refitted on all rows, parameters set, and the summary is plain JSON
    assert list(result.model.named_steps) == ["preprocess", "model"]
    assert result.model.predict(x.head(3)).shape == (3,)
    params = result.model.get_params()
    for name, value in result.best_params.items():
        key = f"model__{name}" if f"model__{name}" in params else f"model__estimator__{name}"
        assert params[key] == value
    summary = result.summary().to_dict()
    assert CandidateSummary.from_dict(json.loads(json.dumps(summary))) == result.summary()


@pytest.mark.parametrize("strategy", list(SearchStrategy))
def test_a_fixed_seed_reproduces_the_model(
    strategy: SearchStrategy, mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    x, y = _xy(mixed_frame)
    search = SearchSpec(strategy=strategy, trials=3)
    first, again = (
        tune(Algorithm.RANDOM_FOREST, x, y, mixed_features, search, "f1_macro", 3, seed=7, n_jobs=1)
        for _ in range(2)
    )
    assert first.best_params == again.best_params
    assert first.cv_score == again.cv_score
    np.testing.assert_array_equal(first.model.predict_proba(x), again.model.predict_proba(x))


def test_parallel_folds_give_the_same_model(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    x, y = _xy(mixed_frame)
    search = SearchSpec(strategy=SearchStrategy.BAYESIAN, trials=3)
    serial = tune(Algorithm.RANDOM_FOREST, x, y, mixed_features, search, "accuracy", 3, seed=3, n_jobs=1)
    parallel = tune(Algorithm.RANDOM_FOREST, x, y, mixed_features, search, "accuracy", 3, seed=3, n_jobs=2)
    assert serial.best_params == parallel.best_params
    assert serial.cv_score == parallel.cv_score
    np.testing.assert_array_equal(serial.model.predict_proba(x), parallel.model.predict_proba(x))


def test_another_seed_samples_other_settings(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    x, y = _xy(mixed_frame)
    search = SearchSpec(strategy=SearchStrategy.RANDOM, trials=2)
    one = tune(Algorithm.LOGISTIC_REGRESSION, x, y, mixed_features, search, "accuracy", 3, seed=1, n_jobs=1)
    two = tune(Algorithm.LOGISTIC_REGRESSION, x, y, mixed_features, search, "accuracy", 3, seed=2, n_jobs=1)
    assert one.best_params != two.best_params


@pytest.fixture
def six_rows() -> tuple[pd.DataFrame, pd.Series, list[FeatureSpec]]:
    """Two classes of three rows: 3-fold training folds hold 4 rows, so KNN's space is 4 x 2 x 2 = 16."""
    frame = pd.DataFrame({"size": [0.0, 0.2, 0.1, 2.0, 2.1, 1.9], "label": ["a"] * 3 + ["b"] * 3})
    return frame[["size"]], frame["label"], [FeatureSpec(name="size", type="numeric")]


def test_random_search_never_asks_for_more_settings_than_the_space_holds(
    six_rows: tuple[pd.DataFrame, pd.Series, list[FeatureSpec]],
) -> None:
    x, y, features = six_rows
    search = SearchSpec(strategy=SearchStrategy.RANDOM, trials=50)
    result = tune(Algorithm.KNN, x, y, features, search, "accuracy", cv_folds=3, seed=0, n_jobs=1)
    assert result.n_trials == 16


def test_bayesian_stops_once_a_finite_space_is_exhausted(
    six_rows: tuple[pd.DataFrame, pd.Series, list[FeatureSpec]],
) -> None:
    x, y, features = six_rows
    progress: list[tuple[int, int]] = []
    result = tune(
        Algorithm.KNN,
        x,
        y,
        features,
        SearchSpec(strategy=SearchStrategy.BAYESIAN, trials=500),
        "accuracy",
        cv_folds=3,
        seed=0,
        n_jobs=1,
        on_trial=lambda done, total: progress.append((done, total)),
    )
    assert result.n_trials == 16  # every distinct setting scored once, then the study stopped
    assert progress[0] == (1, 500)
    assert 16 <= len(progress) < 500


@pytest.mark.parametrize(
    ("metric", "classes", "expected"),
    [
        ("roc_auc", 2, "roc_auc"),
        ("roc_auc", 3, "roc_auc_ovr"),
        ("neg_log_loss", 3, "neg_log_loss"),
        ("accuracy", 2, "accuracy"),
        ("balanced_accuracy", 5, "balanced_accuracy"),
    ],
)
def test_metric_maps_to_a_scikit_learn_scorer(metric: str, classes: int, expected: str) -> None:
    assert scorer_for(metric, classes) == expected


@pytest.mark.parametrize("metric", [Metric.ROC_AUC, Metric.NEG_LOG_LOSS, Metric.PRECISION_MACRO])
def test_probability_metrics_tune_on_binary_string_labels(
    metric: Metric, mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    binary = mixed_frame[mixed_frame["animal"] != "owl"]
    x, y = _xy(binary)
    search = SearchSpec(strategy=SearchStrategy.GRID)
    result = tune(Algorithm.SVM, x, y, mixed_features, search, metric, cv_folds=3, seed=0, n_jobs=1)
    assert np.isfinite(result.cv_score)


def test_unknown_metric_is_named(mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]) -> None:
    x, y = _xy(mixed_frame)
    with pytest.raises(InvalidInput, match="unknown metric 'auc'; expected one of: f1_macro, f1_weighted"):
        tune(Algorithm.KNN, x, y, mixed_features, SearchSpec(), "auc", cv_folds=3, seed=0)


def test_a_single_class_is_a_clear_error(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    cats = mixed_frame[mixed_frame["animal"] == "cat"]
    with pytest.raises(
        DataValidationError, match=r"at least two classes to train a classifier \(found: 'cat'\)"
    ):
        tune(Algorithm.KNN, *_xy(cats), mixed_features, SearchSpec(), "accuracy", cv_folds=3, seed=0)


def test_too_few_rows_in_a_class_for_the_folds_is_named(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    few_owls = pd.concat(
        [mixed_frame[mixed_frame["animal"] != "owl"], mixed_frame[mixed_frame["animal"] == "owl"].head(2)]
    )
    with pytest.raises(DataValidationError, match=r"at least cv_folds=3 training rows: 'owl' has 2"):
        tune(Algorithm.KNN, *_xy(few_owls), mixed_features, SearchSpec(), "accuracy", cv_folds=3, seed=0)


def test_missing_feature_columns_and_null_targets_are_all_reported(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    x, y = _xy(mixed_frame)
    y = y.copy()
    y.iloc[:2] = None
    with pytest.raises(DataValidationError) as caught:
        tune(
            Algorithm.KNN, x.drop(columns=["note", "size"]), y, mixed_features, SearchSpec(), "accuracy", 3, 0
        )
    assert caught.value.problems == [
        "feature column(s) not in the data: size, note",
        "the target has 2 null value(s)",
    ]


def test_a_failing_fit_names_the_algorithm_and_the_cause(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    x, y = _xy(mixed_frame)
    x = x.astype({"size": object})
    x.loc[5, "size"] = "abc"
    with pytest.raises(ModelyardError, match="tuning knn failed: could not convert string to float: 'abc'"):
        tune(
            Algorithm.KNN, x, y, mixed_features, SearchSpec(strategy="grid"), "accuracy", 3, seed=0, n_jobs=1
        )


def _summary(
    algorithm: Algorithm, score: float, std: float, metric: Metric = Metric.F1_MACRO
) -> CandidateSummary:
    return CandidateSummary(algorithm, SearchStrategy.RANDOM, metric, score, std, 5, {}, 1.0)


def test_select_best_takes_the_highest_cv_score() -> None:
    results = [
        _summary(Algorithm.KNN, 0.90, 0.01),
        _summary(Algorithm.SVM, 0.95, 0.05),
        _summary(Algorithm.RANDOM_FOREST, float("nan"), 0.0),
    ]
    assert select_best(results, "f1_macro").algorithm is Algorithm.SVM


def test_select_best_breaks_ties_by_std_then_algorithm_order_whatever_the_input_order() -> None:
    tied = [
        _summary(Algorithm.KNN, 0.9, 0.02),
        _summary(Algorithm.SVM, 0.9, 0.02),
        _summary(Algorithm.NAIVE_BAYES, 0.9, 0.01),
    ]
    assert select_best(tied, Metric.F1_MACRO).algorithm is Algorithm.NAIVE_BAYES  # steadier
    same = tied[:2]
    assert select_best(same, Metric.F1_MACRO).algorithm is Algorithm.SVM  # svm is listed before knn
    assert select_best(same[::-1], Metric.F1_MACRO).algorithm is Algorithm.SVM
    # float noise below 1e-12 is a tie, not a win
    noisy = [_summary(Algorithm.KNN, 0.9 + 1e-15, 0.02), _summary(Algorithm.SVM, 0.9, 0.02)]
    assert select_best(noisy, Metric.F1_MACRO).algorithm is Algorithm.SVM


def test_select_best_refuses_mixed_metrics_and_empty_input() -> None:
    mixed = [_summary(Algorithm.KNN, 0.9, 0.0), _summary(Algorithm.SVM, 0.8, 0.0, Metric.ACCURACY)]
    with pytest.raises(
        InvalidInput,
        match=r"cannot select on f1_macro: results were scored on a different metric \(accuracy\)",
    ):
        select_best(mixed, "f1_macro")
    with pytest.raises(InvalidInput, match="no tuning results to select from"):
        select_best([], "f1_macro")
    with pytest.raises(ModelyardError, match="no candidate has a finite f1_macro score"):
        select_best([_summary(Algorithm.KNN, float("nan"), 0.0)], "f1_macro")


def test_arrays_instead_of_frames_are_refused(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    x, y = _xy(mixed_frame)
    with pytest.raises(InvalidInput, match=r"as a pandas DataFrame .* got ndarray and Series"):
        tune(Algorithm.KNN, x.to_numpy(), y, mixed_features, SearchSpec(), "accuracy", cv_folds=3, seed=0)
