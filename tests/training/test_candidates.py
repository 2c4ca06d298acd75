from __future__ import annotations

import math
import pickle

import optuna
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid, ParameterSampler

from modelyard.errors import InvalidInput
from modelyard.spec import Algorithm, FeatureSpec, FeatureType
from modelyard.training.candidates import (
    ChoiceParam,
    FitShape,
    FloatParam,
    IntParam,
    SearchSpace,
    candidate_for,
)

SPACE = SearchSpace(
    (
        FloatParam("C", 0.01, 100.0, grid=(0.1, 1.0), log=True),
        IntParam("depth", 2, 5, grid=(3,)),
        ChoiceParam("kind", ("a", "b", None)),
    )
)


def test_one_space_gives_a_grid_distributions_and_optuna_suggestions() -> None:
    assert SPACE.grid() == {"model__C": [0.1, 1.0], "model__depth": [3], "model__kind": ["a", "b", None]}
    assert SPACE.grid_size() == 6
    assert math.isinf(SPACE.size())

    for setting in ParameterSampler(SPACE.distributions(), n_iter=50, random_state=0):
        assert 0.01 <= setting["model__C"] <= 100.0
        assert setting["model__depth"] in {2, 3, 4, 5}
        assert setting["model__kind"] in {"a", "b", None}

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggested = SPACE.suggest(trial)
    assert set(suggested) == {"model__C", "model__depth", "model__kind"}
    assert trial.distributions["C"] == optuna.distributions.FloatDistribution(0.01, 100.0, log=True)
    assert trial.distributions["depth"] == optuna.distributions.IntDistribution(2, 5)
    assert trial.distributions["kind"] == optuna.distributions.CategoricalDistribution(["a", "b", None])


def test_finite_spaces_know_their_size() -> None:
    space = SearchSpace((IntParam("k", 1, 4, grid=(2,)), ChoiceParam("w", ("u", "d"))))
    assert space.size() == 8


def test_short_names_strip_the_pipeline_prefix() -> None:
    svm = candidate_for(Algorithm.SVM, [FeatureSpec(name="x", type="numeric")])
    assert svm.space.short_names({"model__estimator__C": 1.0}) == {"C": 1.0}


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_grid_setting_is_a_valid_parameter_of_its_pipeline(
    algorithm: Algorithm, mixed_features: list[FeatureSpec]
) -> None:
    candidate = candidate_for(algorithm, mixed_features)
    pipeline = candidate.pipeline(mixed_features, seed=0)
    for setting in ParameterGrid(candidate.space.grid()):
        clone(pipeline).set_params(**setting)  # an unknown key raises here
    for setting in ParameterSampler(candidate.space.distributions(), n_iter=3, random_state=0):
        clone(pipeline).set_params(**setting)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_estimator_gives_probabilities_and_pickles_without_modelyard(
    algorithm: Algorithm, mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    # roc_auc and log loss need predict_proba; the model server unpickles without modelyard.training
    pipeline = candidate_for(algorithm, mixed_features).pipeline(mixed_features, seed=0)
    pipeline.fit(mixed_frame, mixed_frame["animal"])

    probabilities = pipeline.predict_proba(mixed_frame.head(5))
    assert probabilities.shape == (5, 3)
    assert probabilities.sum(axis=1) == pytest.approx([1.0] * 5)
    assert b"modelyard" not in pickle.dumps(pipeline)


def test_svm_labels_agree_with_its_probabilities(
    mixed_frame: pd.DataFrame, mixed_features: list[FeatureSpec]
) -> None:
    pipeline = candidate_for(Algorithm.SVM, mixed_features).pipeline(mixed_features, seed=0)
    pipeline.fit(mixed_frame, mixed_frame["animal"])
    most_probable = pipeline.classes_[pipeline.predict_proba(mixed_frame).argmax(axis=1)]
    assert (pipeline.predict(mixed_frame) == most_probable).all()


def test_naive_bayes_variant_follows_the_inputs(mixed_features: list[FeatureSpec]) -> None:
    with_text = candidate_for(Algorithm.NAIVE_BAYES, mixed_features)
    without_text = candidate_for(
        Algorithm.NAIVE_BAYES, [f for f in mixed_features if f.type is not FeatureType.TEXT]
    )

    assert type(with_text.estimator(0)).__name__ == "ComplementNB"
    assert with_text.nonnegative_input and not with_text.dense_input
    assert type(without_text.estimator(0)).__name__ == "GaussianNB"
    assert without_text.dense_input


def test_knn_never_asks_for_more_neighbours_than_rows(mixed_features: list[FeatureSpec]) -> None:
    space = candidate_for(Algorithm.KNN, mixed_features, FitShape(rows=4, smallest_class_rows=1)).space
    neighbours = next(p for p in space.params if p.name == "n_neighbors")
    assert isinstance(neighbours, IntParam)
    assert neighbours.high == 4
    assert space.grid()["model__n_neighbors"] == [3]


def test_fit_shape_of_cross_validation_is_the_smallest_training_fold() -> None:
    assert FitShape.of_cross_validation(rows=10, smallest_class_rows=5, cv_folds=5) == FitShape(8, 4)
    assert FitShape.of_cross_validation(rows=11, smallest_class_rows=3, cv_folds=3) == FitShape(7, 2)


def test_unknown_algorithm_is_named() -> None:
    with pytest.raises(
        InvalidInput, match="unknown algorithm 'xgboost'; expected one of: logistic_regression"
    ):
        candidate_for("xgboost", [FeatureSpec(name="x", type="numeric")])
