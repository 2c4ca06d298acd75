"""What training produces, as plain JSON-able records: candidate summaries, the rule that selects among
them, and holdout evaluations.

Light on purpose (no scikit-learn, no pandas): the pipeline's select and gate tasks import only this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from modelyard.errors import InvalidInput, ModelyardError
from modelyard.spec import Algorithm, Metric, SearchStrategy

Label = str | int | float | bool


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve: ``positive_class`` against the rest."""

    positive_class: Label
    fpr: list[float]
    tpr: list[float]
    auc: float
    # The score at which each point starts; the first is +inf in scikit-learn, kept finite for JSON.
    thresholds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall, F1 and support (rows in the holdout) of one class."""

    label: Label
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    """Holdout measurements of one model.

    ``metrics`` is keyed by :class:`~modelyard.spec.Metric` names (``f1_macro``, ``roc_auc``,
    ``neg_log_loss`` ...) plus ``log_loss``, ``precision_weighted`` and ``recall_weighted``. A metric
    that cannot be computed on this holdout (roc_auc when the holdout holds one class) is absent.
    ``confusion_matrix[i][j]`` counts rows of class ``classes[i]`` predicted as ``classes[j]``.
    ``roc_curves``: binary: one curve, for ``classes[1]`` (scikit-learn's positive class); multiclass:
    one per class, one-vs-rest.
    """

    classes: list[Label]
    rows: int
    metrics: dict[str, float]
    confusion_matrix: list[list[int]]
    roc_curves: list[RocCurve]
    per_class: list[ClassReport] = field(default_factory=list)

    def score(self, metric: Metric | str) -> float:
        """The holdout value of a selection metric (higher is better)."""
        try:
            name = Metric(metric).value
        except ValueError:
            raise InvalidInput(f"unknown metric {metric!r}") from None
        if name not in self.metrics:
            raise InvalidInput(f"metric {name} could not be computed on this holdout of {self.rows} rows")
        return self.metrics[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: for bundle metadata and KFP artifacts."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """The inverse of :meth:`to_dict` (a pipeline step reads back what another wrote)."""
        return cls(
            classes=list(data["classes"]),
            rows=int(data["rows"]),
            metrics={name: float(value) for name, value in data["metrics"].items()},
            confusion_matrix=[[int(v) for v in row] for row in data["confusion_matrix"]],
            roc_curves=[RocCurve(**curve) for curve in data["roc_curves"]],
            per_class=[ClassReport(**report) for report in data["per_class"]],
        )


def parse_metric(metric: Metric | str) -> Metric:
    """``metric`` as a Metric, or InvalidInput naming it and the known metrics."""
    try:
        return Metric(metric)
    except ValueError:
        names = ", ".join(m.value for m in Metric)
        raise InvalidInput(f"unknown metric {metric!r}; expected one of: {names}") from None


@dataclass(frozen=True)
class CandidateSummary:
    """What a tuning run found, without the model: small and JSON-able (a KFP output, a report row)."""

    algorithm: Algorithm
    strategy: SearchStrategy
    metric: Metric
    cv_score: float
    cv_std: float
    n_trials: int
    best_params: dict[str, Any]
    elapsed_seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(algorithm=self.algorithm.value, strategy=self.strategy.value, metric=self.metric.value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateSummary:
        return cls(
            algorithm=Algorithm(data["algorithm"]),
            strategy=SearchStrategy(data["strategy"]),
            metric=Metric(data["metric"]),
            cv_score=float(data["cv_score"]),
            cv_std=float(data["cv_std"]),
            n_trials=int(data["n_trials"]),
            best_params=dict(data["best_params"]),
            elapsed_seconds=float(data["elapsed_seconds"]),
        )


class _Scored(Protocol):
    @property
    def algorithm(self) -> Algorithm: ...
    @property
    def metric(self) -> Metric: ...
    @property
    def cv_score(self) -> float: ...
    @property
    def cv_std(self) -> float: ...


ScoredT = TypeVar("ScoredT", bound=_Scored)


def select_best(results: Sequence[ScoredT], metric: Metric | str) -> ScoredT:
    """The result with the highest mean CV score on ``metric``.

    Ties (equal to 1e-12) go to the lower CV standard deviation, then to the algorithm listed first in
    :class:`~modelyard.spec.Algorithm`, so the choice never depends on the order results arrive in.
    Works on TuningResult and on CandidateSummary alike.
    """
    known = parse_metric(metric)
    if not results:
        raise InvalidInput("no tuning results to select from")
    other = sorted({r.metric.value for r in results if r.metric is not known})
    if other:
        raise InvalidInput(
            f"cannot select on {known.value}: results were scored on a different metric ({', '.join(other)})"
        )
    scored = [r for r in results if math.isfinite(r.cv_score)]
    if not scored:
        raise ModelyardError(f"no candidate has a finite {known.value} score to select on")
    order = list(Algorithm)

    def rank(result: ScoredT) -> tuple[float, float, int]:
        return (-round(result.cv_score, 12), round(result.cv_std, 12), order.index(result.algorithm))

    return min(scored, key=rank)
