"""Candidate estimators and their hyper-parameter search spaces.

Each algorithm is described once (:func:`candidate_for`): how to build its estimator and a
:class:`SearchSpace` of typed parameters. The three search strategies derive from that one description:

- ``grid``: :meth:`SearchSpace.grid`, a few hand-picked values per parameter (GridSearchCV);
- ``random``: :meth:`SearchSpace.distributions`, scipy distributions over the ranges (RandomizedSearchCV);
- ``bayesian``: :meth:`SearchSpace.suggest`, Optuna ``suggest_*`` calls over the same ranges.

Spaces are deliberately small: every estimator must tune in seconds on a few hundred rows with two cores.
Every estimator provides ``predict_proba``: serving returns probabilities, and roc_auc and log loss need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import ComplementNB, GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from modelyard.errors import InvalidInput
from modelyard.spec import Algorithm, FeatureSpec, FeatureType
from modelyard.training.preprocessing import build_preprocessor

MODEL_STEP = "model"
PREPROCESS_STEP = "preprocess"

# Optuna's categorical choices must be one of these types.
Choice = None | bool | int | float | str


@dataclass(frozen=True)
class FloatParam:
    """A real-valued parameter in [low, high]; ``log`` samples its logarithm uniformly."""

    name: str
    low: float
    high: float
    grid: tuple[Choice, ...]
    log: bool = False

    def distribution(self) -> Any:
        if self.log:
            return stats.loguniform(self.low, self.high)
        return stats.uniform(self.low, self.high - self.low)

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def size(self) -> float:
        return math.inf


@dataclass(frozen=True)
class IntParam:
    """An integer parameter in [low, high], both included."""

    name: str
    low: int
    high: int
    grid: tuple[int, ...]

    def distribution(self) -> Any:
        return stats.randint(self.low, self.high + 1)

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_int(self.name, self.low, self.high)

    def size(self) -> float:
        return float(self.high - self.low + 1)


@dataclass(frozen=True)
class ChoiceParam:
    """One of a few values; the grid tries all of them unless ``grid`` names a subset."""

    name: str
    choices: tuple[Choice, ...]
    grid: tuple[Choice, ...] = ()

    def distribution(self) -> Any:
        return list(self.choices)

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def size(self) -> float:
        return float(len(self.choices))


Param = FloatParam | IntParam | ChoiceParam


@dataclass(frozen=True)
class SearchSpace:
    """Typed parameters of one estimator; ``prefix`` maps a name to its key in the model Pipeline."""

    params: tuple[Param, ...]
    prefix: str = f"{MODEL_STEP}__"

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def grid(self) -> dict[str, list[Any]]:
        """Param grid for GridSearchCV (a few values per parameter)."""
        grid: dict[str, list[Any]] = {}
        for param in self.params:
            values = param.grid or (param.choices if isinstance(param, ChoiceParam) else ())
            grid[self.key(param.name)] = list(values)
        return grid

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())

    def distributions(self) -> dict[str, Any]:
        """Param distributions for RandomizedSearchCV."""
        return {self.key(param.name): param.distribution() for param in self.params}

    def size(self) -> float:
        """How many distinct settings the ranges hold (``math.inf`` when any parameter is real-valued)."""
        return math.prod(param.size() for param in self.params)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial for one setting; returns Pipeline keys."""
        return {self.key(param.name): param.suggest(trial) for param in self.params}

    def short_names(self, pipeline_params: dict[str, Any]) -> dict[str, Any]:
        """Pipeline keys -> the parameter names a person reads (``model__C`` -> ``C``)."""
        return {key.removeprefix(self.prefix): value for key, value in pipeline_params.items()}


@dataclass(frozen=True)
class FitShape:
    """The size of the smallest training fold the estimator will see: some spaces depend on it."""

    rows: int
    smallest_class_rows: int

    @classmethod
    def of_cross_validation(cls, rows: int, smallest_class_rows: int, cv_folds: int) -> FitShape:
        # a k-fold training fold holds about (k-1)/k of the rows; rounding the held-out share up keeps
        # the bound conservative
        def keep(n: int) -> int:
            return n - math.ceil(n / cv_folds)

        return cls(rows=keep(rows), smallest_class_rows=keep(smallest_class_rows))


@dataclass(frozen=True)
class Candidate:
    """One algorithm ready to tune: its estimator factory, space and input requirements."""

    algorithm: Algorithm
    estimator: Callable[[int], ClassifierMixin]
    space: SearchSpace
    dense_input: bool = False
    nonnegative_input: bool = False

    def pipeline(self, features: Sequence[FeatureSpec], seed: int) -> Pipeline:
        """An unfitted Pipeline([("preprocess", ...), ("model", ...)]) with default parameters."""
        preprocessor = build_preprocessor(
            features, dense=self.dense_input, nonnegative=self.nonnegative_input
        )
        return Pipeline([(PREPROCESS_STEP, preprocessor), (MODEL_STEP, self.estimator(seed))])


def _logistic_regression(features: Sequence[FeatureSpec], shape: FitShape) -> Candidate:
    return Candidate(
        Algorithm.LOGISTIC_REGRESSION,
        lambda seed: LogisticRegression(max_iter=2000, random_state=seed),
        SearchSpace(
            (
                FloatParam("C", 1e-3, 1e2, grid=(0.1, 1.0, 10.0), log=True),
                ChoiceParam("class_weight", (None, "balanced")),
            )
        ),
    )


def _random_forest(features: Sequence[FeatureSpec], shape: FitShape) -> Candidate:
    return Candidate(
        Algorithm.RANDOM_FOREST,
        # one core per forest: the cross-validation folds already run in parallel
        lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1),
        SearchSpace(
            (
                IntParam("n_estimators", 25, 100, grid=(100,)),
                ChoiceParam("max_depth", (None, 4, 8, 16), grid=(None, 8)),
                IntParam("min_samples_leaf", 1, 8, grid=(1, 3)),
                ChoiceParam("max_features", ("sqrt", "log2"), grid=("sqrt",)),
            )
        ),
    )


def _hist_gradient_boosting(features: Sequence[FeatureSpec], shape: FitShape) -> Candidate:
    # a leaf needs that many rows: beyond a fifth of the rows, trees cannot split at all
    largest_leaf = max(2, min(40, shape.rows // 5))
    return Candidate(
        Algorithm.HIST_GRADIENT_BOOSTING,
        lambda seed: HistGradientBoostingClassifier(random_state=seed),
        SearchSpace(
            (
                FloatParam("learning_rate", 0.02, 0.3, grid=(0.05, 0.1), log=True),
                IntParam("max_iter", 30, 150, grid=(100,)),
                IntParam("max_leaf_nodes", 8, 48, grid=(15, 31)),
                IntParam(
                    "min_samples_leaf", min(5, largest_leaf), largest_leaf, grid=(min(20, largest_leaf),)
                ),
                FloatParam("l2_regularization", 0.0, 1.0, grid=(0.0,)),
            )
        ),
        dense_input=True,  # it rejects sparse matrices
    )


def _svm(features: Sequence[FeatureSpec], shape: FitShape) -> Candidate:
    # Probabilities by Platt scaling. SVC(probability=True) runs its own hidden 5-fold CV and may then
    # predict a class that is not the most probable one. CalibratedClassifierCV with ensemble=False fits
    # the sigmoid on 3-fold out-of-fold decisions (cheaper) and keeps one SVC; predict() is the argmax of
    # predict_proba, so the label and the probabilities served always agree.
    calibration_folds = max(2, min(3, shape.smallest_class_rows))
    return Candidate(
        Algorithm.SVM,
        lambda seed: CalibratedClassifierCV(
            SVC(kernel="rbf", random_state=seed), method="sigmoid", cv=calibration_folds, ensemble=False
        ),
        SearchSpace(
            (
                FloatParam("C", 1e-2, 1e2, grid=(0.1, 1.0, 10.0), log=True),
                ChoiceParam("kernel", ("rbf", "linear")),
                FloatParam("gamma", 1e-3, 1e1, grid=("scale",), log=True),
            ),
            prefix=f"{MODEL_STEP}__estimator__",
        ),
    )


def _knn(features: Sequence[FeatureSpec], shape: FitShape) -> Candidate:
    # more neighbours than training rows is an error, so the range stops at the smallest training fold
    most_neighbours = max(1, min(30, shape.rows))
    grid = tuple(k for k in (3, 5, 9, 15) if k <= most_neighbours) or (most_neighbours,)
    return Candidate(
        Algorithm.KNN,
        lambda seed: KNeighborsClassifier(n_jobs=1),
        SearchSpace(
            (
                IntParam("n_neighbors", 1, most_neighbours, grid=grid),
                ChoiceParam("weights", ("uniform", "distance")),
                ChoiceParam("p", (1, 2), grid=(2,)),
            )
        ),
    )


def _naive_bayes(features: Sequence[FeatureSpec], shape: FitShape) -> Candidate:
    if any(feature.type is FeatureType.TEXT for feature in features):
        # TF-IDF is sparse, wide and non-negative: ComplementNB is the naive Bayes made for text
        # (Rennie et al. 2003, robust to unbalanced classes) and keeps the input sparse. It rejects
        # negative values, so numerics are min-max scaled into [0, 1] instead of standardised.
        return Candidate(
            Algorithm.NAIVE_BAYES,
            lambda seed: ComplementNB(),
            SearchSpace((FloatParam("alpha", 1e-3, 1e1, grid=(0.01, 0.1, 1.0), log=True),)),
            nonnegative_input=True,
        )
    # Without text, the inputs are a few standardised numerics (negative values) and one-hot columns:
    # GaussianNB models each per class as a normal distribution; it needs dense input.
    return Candidate(
        Algorithm.NAIVE_BAYES,
        lambda seed: GaussianNB(),
        SearchSpace((FloatParam("var_smoothing", 1e-12, 1e-1, grid=(1e-9, 1e-6, 1e-3), log=True),)),
        dense_input=True,
    )


_DESCRIPTIONS: dict[Algorithm, Callable[[Sequence[FeatureSpec], FitShape], Candidate]] = {
    Algorithm.LOGISTIC_REGRESSION: _logistic_regression,
    Algorithm.RANDOM_FOREST: _random_forest,
    Algorithm.HIST_GRADIENT_BOOSTING: _hist_gradient_boosting,
    Algorithm.SVM: _svm,
    Algorithm.KNN: _knn,
    Algorithm.NAIVE_BAYES: _naive_bayes,
}


def candidate_for(
    algorithm: Algorithm | str, features: Sequence[FeatureSpec], shape: FitShape | None = None
) -> Candidate:
    """The estimator and search space for ``algorithm`` on these features.

    ``shape`` bounds data-dependent ranges (neighbours, calibration folds); None assumes ample data.
    """
    try:
        known = Algorithm(algorithm)
    except ValueError:
        names = ", ".join(a.value for a in Algorithm)
        raise InvalidInput(f"unknown algorithm {algorithm!r}; expected one of: {names}") from None
    return _DESCRIPTIONS[known](features, shape or FitShape(rows=10_000, smallest_class_rows=1_000))
