"""The gate: does a candidate's holdout score earn publication, against the minimum and production?

Kept apart from the workflow so the pipeline's gate task imports only this, the registry and the spec;
scoring production (bundle, scikit-learn) is imported only when there is a production version to score.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.errors import DataValidationError
from modelyard.settings import Settings
from modelyard.spec import Metric, ModelSpec

if TYPE_CHECKING:
    import pandas as pd

    from modelyard.registry import ModelVersionRecord


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    score: float
    production_score: float | None = None
    production_version: int | None = None


def score_on_holdout(
    model_uri: str, holdout: pd.DataFrame, target: str, metric: Metric, settings: Settings
) -> float:
    """Score a published model on the given holdout rows with the given metric."""
    from modelyard.bundle import fetch_bundle, load_bundle
    from modelyard.training.evaluation import evaluate

    with tempfile.TemporaryDirectory(prefix="modelyard-production-") as scratch:
        local = fetch_bundle(model_uri, Path(scratch) / "bundle", s3=settings.s3)
        bundle = load_bundle(local)
        names = bundle.metadata.feature_names
        missing = [name for name in names if name not in holdout.columns]
        if missing:
            raise DataValidationError(
                [f"column(s) the model needs are not in the data: {', '.join(missing)}"], source=model_uri
            )
        return evaluate(bundle.model, holdout[names], holdout[target]).score(metric)


def judge(
    spec: ModelSpec,
    score: float,
    production: ModelVersionRecord | None,
    production_score: float | None,
) -> GateVerdict:
    """Pass when the score reaches the spec's minimum and is no worse than production on the same rows."""
    metric = spec.metric.value
    if score < spec.gate.min_score:
        return GateVerdict(
            False, f"holdout {metric} {score:.4f} is below the minimum {spec.gate.min_score:.4f}", score
        )
    if production is not None and production_score is not None and spec.gate.compare_to_production:
        if score < production_score:
            return GateVerdict(
                False,
                f"holdout {metric} {score:.4f} is worse than production {production.ref} "
                f"({production_score:.4f} on the same holdout)",
                score,
                production_score,
                production.version,
            )
        return GateVerdict(
            True,
            f"holdout {metric} {score:.4f} reaches {spec.gate.min_score:.4f} and is no worse than "
            f"production {production.ref} ({production_score:.4f})",
            score,
            production_score,
            production.version,
        )
    return GateVerdict(
        True, f"holdout {metric} {score:.4f} reaches the minimum {spec.gate.min_score:.4f}", score
    )
