"""Train a spec end to end: split, tune each algorithm, select, evaluate, write report and card.

Each step is a function of its own (:func:`split_holdout`, :func:`tune`, :func:`select_best`,
:func:`evaluate`, :func:`render_report_html`), so a KFP pipeline can run them as separate tasks;
:func:`train` is the same sequence in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sklearn.pipeline import Pipeline

from modelyard.errors import DataValidationError
from modelyard.spec import FeatureSpec, Metric, ModelSpec
from modelyard.training.evaluation import evaluate, split_holdout
from modelyard.training.report import ReportContext, render_model_card, render_report_html
from modelyard.training.results import CandidateSummary, Evaluation, select_best
from modelyard.training.tuning import TuningResult, tune

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: ``tune <algorithm>`` (trials), then ``evaluate`` and ``report``."""


@dataclass
class TrainingResult:
    """Everything a training run produced; ``model`` is the winning, fitted Pipeline."""

    spec_name: str
    target: str
    metric: Metric
    features: list[FeatureSpec]
    classes: list[Any]
    candidates: list[CandidateSummary]
    winner: TuningResult
    evaluation: Evaluation
    report_html: str = field(repr=False)
    model_card_md: str = field(repr=False)
    train_rows: int
    holdout_rows: int
    holdout: pd.DataFrame = field(repr=False)  # features + target: scores a production model on the same rows
    dataset_fingerprint: str | None = None

    @property
    def model(self) -> Pipeline:
        return self.winner.model

    @property
    def holdout_score(self) -> float:
        return self.evaluation.score(self.metric)


def _check_columns(frame: pd.DataFrame, target: str, features: Sequence[FeatureSpec]) -> None:
    problems = []
    if target not in frame.columns:
        problems.append(f"the target column {target!r} is not in the data")
    missing = [f.name for f in features if f.name not in frame.columns]
    if missing:
        problems.append(f"feature column(s) not in the data: {', '.join(missing)}")
    if target in {f.name for f in features}:
        problems.append(f"the target {target!r} cannot also be a feature")
    if not features:
        problems.append("no features to train on")
    if problems:
        raise DataValidationError(problems, source="training data")


def train(
    spec: ModelSpec,
    frame: pd.DataFrame,
    features: list[FeatureSpec],
    *,
    n_jobs: int = -1,
    progress: Progress | None = None,
    dataset_fingerprint: str | None = None,
) -> TrainingResult:
    """Tune every algorithm of ``spec`` on ``frame``, keep the best by CV score and evaluate it on a holdout.

    ``features`` are already resolved (declared in the spec or inferred from the data).
    ``dataset_fingerprint`` is recorded in the report and model card.
    """
    _check_columns(frame, spec.target, features)
    names = [f.name for f in features]
    train_part, holdout_part = split_holdout(
        frame[[*names, spec.target]], spec.target, spec.holdout, spec.seed
    )
    x_train, y_train = train_part[names], train_part[spec.target]

    results: list[TuningResult] = []
    for algorithm in spec.algorithms:
        step = f"tune {algorithm.value}"

        def on_trial(done: int, total: int, step: str = step) -> None:
            if progress:
                progress(step, done, total)

        results.append(
            tune(
                algorithm,
                x_train,
                y_train,
                features,
                spec.search,
                spec.metric,
                spec.cv_folds,
                spec.seed,
                n_jobs=n_jobs,
                on_trial=on_trial,
            )
        )
    winner = select_best(results, spec.metric)

    if progress:
        progress("evaluate", 0, 1)
    evaluation = evaluate(winner.model, holdout_part[names], holdout_part[spec.target])
    if progress:
        progress("evaluate", 1, 1)
        progress("report", 0, 1)
    result = assemble_result(
        spec,
        features,
        [r.summary() for r in results],
        winner,
        evaluation,
        train_rows=len(train_part),
        holdout=holdout_part,
        class_counts=frame[spec.target].value_counts(),
        dataset_fingerprint=dataset_fingerprint,
    )
    if progress:
        progress("report", 1, 1)
    return result


def assemble_result(
    spec: ModelSpec,
    features: list[FeatureSpec],
    candidates: list[CandidateSummary],
    winner: TuningResult,
    evaluation: Evaluation,
    *,
    train_rows: int,
    holdout: pd.DataFrame,
    class_counts: pd.Series,
    dataset_fingerprint: str | None,
) -> TrainingResult:
    """Write the report and model card of a finished run and gather everything into a TrainingResult.

    ``train`` calls it in one process; the KFP pipeline calls it in its publish step, from the outputs of
    the tune, select and evaluate tasks.
    """
    context = ReportContext(
        name=spec.name,
        description=spec.description,
        target=spec.target,
        metric=spec.metric,
        features=features,
        classes=list(evaluation.classes),
        candidates=candidates,
        winner=winner.summary(),
        evaluation=evaluation,
        train_rows=train_rows,
        holdout_rows=len(holdout),
        class_counts={str(label): int(class_counts[label]) for label in winner.model.classes_},
        dataset_fingerprint=dataset_fingerprint,
        gate_min_score=spec.gate.min_score,
    )
    return TrainingResult(
        spec_name=spec.name,
        target=spec.target,
        metric=spec.metric,
        features=list(features),
        classes=list(evaluation.classes),
        candidates=list(candidates),
        winner=winner,
        evaluation=evaluation,
        report_html=render_report_html(context),
        model_card_md=render_model_card(context),
        train_rows=train_rows,
        holdout_rows=len(holdout),
        holdout=holdout,
        dataset_fingerprint=dataset_fingerprint,
    )
