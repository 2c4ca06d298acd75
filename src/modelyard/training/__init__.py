"""Training: preprocessing, candidate estimators and search spaces, tuning, evaluation, report.

Pure functions over DataFrames: no pipeline, database or object store here (import-linter enforces it).
"""

from modelyard.training.candidates import Candidate, SearchSpace, candidate_for
from modelyard.training.evaluation import Evaluation, evaluate, evaluate_predictions, split_holdout
from modelyard.training.preprocessing import build_preprocessor
from modelyard.training.report import ReportContext, render_model_card, render_report_html
from modelyard.training.train import TrainingResult, assemble_result, train
from modelyard.training.tuning import (
    CandidateSummary,
    TuningResult,
    parse_metric,
    scorer_for,
    select_best,
    tune,
)

__all__ = [
    "Candidate",
    "CandidateSummary",
    "Evaluation",
    "ReportContext",
    "SearchSpace",
    "TrainingResult",
    "TuningResult",
    "assemble_result",
    "build_preprocessor",
    "candidate_for",
    "evaluate",
    "evaluate_predictions",
    "parse_metric",
    "render_model_card",
    "render_report_html",
    "scorer_for",
    "select_best",
    "split_holdout",
    "train",
    "tune",
]
