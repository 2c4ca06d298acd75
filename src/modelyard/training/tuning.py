"""Tune one algorithm by stratified k-fold cross-validation, and pick the best of several.

:func:`tune` handles ONE algorithm, so a pipeline can run one task per algorithm in parallel;
:func:`select_best` compares their (JSON-able) summaries. A fixed seed reproduces the same model:
the folds, the random and Bayesian samplers and every seeded estimator take it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, make_scorer, precision_score, recall_score
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from modelyard.errors import DataValidationError, InvalidInput, ModelyardError
from modelyard.spec import Algorithm, FeatureSpec, Metric, SearchSpec, SearchStrategy
from modelyard.training.candidates import Candidate, FitShape, candidate_for
from modelyard.training.results import CandidateSummary, parse_metric

TrialCallback = Callable[[int, int], None]

# Precision, recall and F1 are 0 (not a warning) for a class a fold never predicts. pos_label=None as in
# scikit-learn's own averaged scorers: otherwise the default pos_label=1 is checked against string labels.
_ZERO_DIVISION_SCORERS: dict[Metric, Any] = {
    Metric.F1_MACRO: make_scorer(f1_score, average="macro", zero_division=0, pos_label=None),
    Metric.F1_WEIGHTED: make_scorer(f1_score, average="weighted", zero_division=0, pos_label=None),
    Metric.PRECISION_MACRO: make_scorer(precision_score, average="macro", zero_division=0, pos_label=None),
    Metric.RECALL_MACRO: make_scorer(recall_score, average="macro", zero_division=0, pos_label=None),
}


def scorer_for(metric: Metric | str, n_classes: int) -> Any:
    """The scikit-learn scorer for a selection metric (all of them: higher is better)."""
    known = parse_metric(metric)
    if known in _ZERO_DIVISION_SCORERS:
        return _ZERO_DIVISION_SCORERS[known]
    if known is Metric.ROC_AUC:
        # binary: AUC of the positive class; multiclass: one-vs-rest, macro-averaged
        return "roc_auc" if n_classes == 2 else "roc_auc_ovr"
    return known.value  # accuracy, balanced_accuracy, neg_log_loss are scikit-learn's own names


@dataclass
class TuningResult:
    """The best setting of one algorithm, and its Pipeline refitted on all the training rows."""

    algorithm: Algorithm
    strategy: SearchStrategy
    metric: Metric
    cv_score: float  # mean over the folds
    cv_std: float
    n_trials: int  # distinct settings cross-validated
    best_params: dict[str, Any]
    elapsed_seconds: float
    model: Pipeline = field(repr=False)

    def summary(self) -> CandidateSummary:
        return CandidateSummary(
            algorithm=self.algorithm,
            strategy=self.strategy,
            metric=self.metric,
            cv_score=self.cv_score,
            cv_std=self.cv_std,
            n_trials=self.n_trials,
            best_params=dict(self.best_params),
            elapsed_seconds=self.elapsed_seconds,
        )


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so parameters serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


def check_training_data(
    X: pd.DataFrame,  # noqa: N803 (scikit-learn's name for the feature matrix)
    y: pd.Series,
    features: Sequence[FeatureSpec],
    cv_folds: int,
) -> dict[Any, int]:
    """Fail clearly on data that cannot be cross-validated; returns the row count per class."""
    if not isinstance(X, pd.DataFrame) or not isinstance(y, pd.Series):
        raise InvalidInput(
            "tune() takes the features as a pandas DataFrame (columns by name) and the target as a Series, "
            f"got {type(X).__name__} and {type(y).__name__}"
        )
    problems: list[str] = []
    missing = [f.name for f in features if f.name not in X.columns]
    if missing:
        problems.append(f"feature column(s) not in the data: {', '.join(missing)}")
    if len(X) != len(y):
        problems.append(f"features have {len(X)} rows but the target has {len(y)}")
    nulls = int(y.isna().sum())
    if nulls:
        problems.append(f"the target has {nulls} null value(s)")
    counts = {_plain(label): int(n) for label, n in y.value_counts(dropna=True).sort_index().items()}
    if len(counts) < 2:
        found = ", ".join(repr(label) for label in counts) or "none"
        problems.append(f"the target needs at least two classes to train a classifier (found: {found})")
    small = {label: n for label, n in counts.items() if n < cv_folds}
    if small and len(counts) >= 2:
        listed = ", ".join(f"{label!r} has {n}" for label, n in small.items())
        problems.append(f"every class needs at least cv_folds={cv_folds} training rows: {listed}")
    if problems:
        raise DataValidationError(problems, source="training data")
    return counts


def tune(
    algorithm: Algorithm | str,
    X: pd.DataFrame,  # noqa: N803 (scikit-learn's name for the feature matrix)
    y: pd.Series,
    features: Sequence[FeatureSpec],
    search: SearchSpec,
    metric: Metric | str,
    cv_folds: int,
    seed: int,
    n_jobs: int = -1,
    on_trial: TrialCallback | None = None,
) -> TuningResult:
    """Search ``algorithm``'s space by stratified, shuffled k-fold CV; refit the best on all of X.

    ``grid`` tries the whole grid (``search.trials`` is ignored); ``random`` samples
    ``min(search.trials, space size)`` settings; ``bayesian`` runs ``search.trials`` Optuna TPE trials.
    ``on_trial(done, total)`` reports progress (per trial for bayesian; at start and end otherwise).
    """
    known_metric = parse_metric(metric)
    counts = check_training_data(X, y, features, cv_folds)
    shape = FitShape.of_cross_validation(len(X), min(counts.values()), cv_folds)
    candidate = candidate_for(algorithm, features, shape)
    scorer = scorer_for(known_metric, n_classes=len(counts))
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    X = X[[f.name for f in features]]  # noqa: N806

    started = time.perf_counter()
    try:
        # Parallelism is across folds and settings (processes). Native thread pools (OpenMP in
        # HistGradientBoosting, BLAS) in this process would compete with them for the same cores: on a
        # busy machine a small HistGradientBoosting fit ran 30x slower with them.
        with threadpool_limits(limits=1):
            if search.strategy is SearchStrategy.BAYESIAN:
                found = _bayesian(
                    candidate, X, y, features, search.trials, scorer, folds, seed, n_jobs, on_trial
                )
            else:
                found = _sklearn_search(
                    candidate, X, y, features, search, scorer, folds, seed, n_jobs, on_trial
                )
    except ValueError as exc:
        raise ModelyardError(f"tuning {candidate.algorithm.value} failed: {exc}") from exc
    params, score, std, n_trials, model = found
    return TuningResult(
        algorithm=candidate.algorithm,
        strategy=search.strategy,
        metric=known_metric,
        cv_score=score,
        cv_std=std,
        n_trials=n_trials,
        best_params={name: _plain(value) for name, value in candidate.space.short_names(params).items()},
        elapsed_seconds=time.perf_counter() - started,
        model=model,
    )


_Found = tuple[dict[str, Any], float, float, int, Pipeline]


def _sklearn_search(
    candidate: Candidate,
    X: pd.DataFrame,  # noqa: N803 (scikit-learn's name for the feature matrix)
    y: pd.Series,
    features: Sequence[FeatureSpec],
    search: SearchSpec,
    scorer: Any,
    folds: StratifiedKFold,
    seed: int,
    n_jobs: int,
    on_trial: TrialCallback | None,
) -> _Found:
    pipeline = candidate.pipeline(features, seed)
    searcher: GridSearchCV | RandomizedSearchCV
    if search.strategy is SearchStrategy.GRID:
        total = candidate.space.grid_size()
        searcher = GridSearchCV(
            pipeline, candidate.space.grid(), scoring=scorer, cv=folds, n_jobs=n_jobs, error_score="raise"
        )
    else:
        size = candidate.space.size()
        total = search.trials if math.isinf(size) else min(search.trials, int(size))
        searcher = RandomizedSearchCV(
            pipeline,
            candidate.space.distributions(),
            n_iter=total,
            scoring=scorer,
            cv=folds,
            n_jobs=n_jobs,
            random_state=seed,
            error_score="raise",
        )
    if on_trial:
        on_trial(0, total)
    searcher.fit(X, y)
    if on_trial:
        on_trial(total, total)
    best = searcher.best_index_
    score = float(searcher.cv_results_["mean_test_score"][best])
    std = float(searcher.cv_results_["std_test_score"][best])
    return (
        dict(searcher.best_params_),
        score,
        std,
        len(searcher.cv_results_["params"]),
        searcher.best_estimator_,
    )


def _bayesian(
    candidate: Candidate,
    X: pd.DataFrame,  # noqa: N803 (scikit-learn's name for the feature matrix)
    y: pd.Series,
    features: Sequence[FeatureSpec],
    trials: int,
    scorer: Any,
    folds: StratifiedKFold,
    seed: int,
    n_jobs: int,
    on_trial: TrialCallback | None,
) -> _Found:
    import optuna  # only the bayesian strategy needs it; a tune task of another strategy skips the import

    # TPE may propose a setting twice in a small discrete space: score each setting once
    scored: dict[tuple[tuple[str, Any], ...], tuple[float, float]] = {}
    space_size = candidate.space.size()

    def objective(trial: optuna.Trial) -> float:
        params = candidate.space.suggest(trial)
        key = tuple(sorted(params.items()))
        if key not in scored:
            pipeline = candidate.pipeline(features, seed).set_params(**params)
            scores = cross_val_score(
                pipeline, X, y, scoring=scorer, cv=folds, n_jobs=n_jobs, error_score="raise"
            )
            scored[key] = (float(np.mean(scores)), float(np.std(scores)))
        return scored[key][0]

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial:
            on_trial(trial.number + 1, trials)
        if len(scored) >= space_size:  # a finite space fully explored: more trials add nothing
            study.stop()

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no log line per trial
    try:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=trials, callbacks=[report], catch=())
    finally:
        optuna.logging.set_verbosity(verbosity)

    best_params = candidate.space.suggest(optuna.trial.FixedTrial(study.best_params))
    score, std = scored[tuple(sorted(best_params.items()))]
    model = candidate.pipeline(features, seed).set_params(**best_params).fit(X, y)
    return best_params, score, std, len(scored), model
