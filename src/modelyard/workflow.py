"""The training run as plain functions: load, validate, train, gate, publish.

`modelyard train` runs them in one process; the KFP pipeline wraps the same functions as components.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from modelyard.bundle import fetch_bundle, load_bundle
from modelyard.data import fingerprint_frame, load_frame, resolve_features, validate_frame
from modelyard.data.loading import parse_dataset_ref
from modelyard.errors import DataValidationError, ModelyardError
from modelyard.publishing import publish_version, write_training_bundle
from modelyard.registry import DatasetRecord, ModelVersionRecord, Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import Metric, ModelSpec
from modelyard.training.evaluation import evaluate
from modelyard.training.train import Progress, TrainingResult, train


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    score: float
    production_score: float | None = None
    production_version: int | None = None


@dataclass
class RunOutcome:
    result: TrainingResult
    verdict: GateVerdict
    published: ModelVersionRecord | None


def score_on_holdout(
    model_uri: str, holdout: pd.DataFrame, target: str, metric: Metric, settings: Settings
) -> float:
    """Score a published model on the given holdout rows with the given metric."""
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


def run_training(
    settings: Settings,
    spec: ModelSpec,
    *,
    progress: Progress | None = None,
    stage: Stage = Stage.STAGING,
) -> RunOutcome:
    """Load and validate the data, train, gate, and publish when the gate passes."""
    frame = load_frame(spec.data, settings)
    features = resolve_features(spec, frame)
    validate_frame(frame, spec, features)
    result = train(spec, frame, features, progress=progress, dataset_fingerprint=fingerprint_frame(frame))
    with Registry(settings.database_url) as registry:
        production = _production_or_none(registry, spec.name)
        if production is not None and spec.gate.compare_to_production:
            # The same holdout rows, with every column: production may use features this run does not.
            holdout_rows = frame.loc[result.holdout.index]
            try:
                production_score = score_on_holdout(
                    production.storage_uri, holdout_rows, spec.target, spec.metric, settings
                )
            except ModelyardError as exc:
                reason = f"cannot score production {production.ref} on this holdout: {exc.message}"
                verdict = GateVerdict(False, reason, result.holdout_score, None, production.version)
                return RunOutcome(result, verdict, None)
        else:
            production_score = None
        verdict = judge(spec, result.holdout_score, production, production_score)
        if not verdict.passed:
            return RunOutcome(result, verdict, None)
        dataset = _registered_dataset(registry, spec)
        with tempfile.TemporaryDirectory(prefix="modelyard-bundle-") as scratch:
            bundle_dir = Path(scratch) / "bundle"
            write_training_bundle(
                result, bundle_dir, reference_frame=frame, dataset=dataset.ref if dataset else None
            )
            record = publish_version(
                settings,
                bundle_dir,
                stage=stage,
                dataset_id=dataset.id if dataset else None,
                registry=registry,
            )
    return RunOutcome(result, verdict, record)


def outcome_summary(outcome: RunOutcome) -> dict[str, Any]:
    """The same summary the pipeline returns: candidates, winner, holdout metrics, gate, published."""
    result = outcome.result
    return {
        "candidates": [candidate.to_dict() for candidate in result.candidates],
        "winner": result.winner.summary().to_dict(),
        "holdout": dict(result.evaluation.metrics),
        "gate": asdict(outcome.verdict),
        "published": None if outcome.published is None else outcome.published.to_dict(),
    }


def _production_or_none(registry: Registry, name: str) -> ModelVersionRecord | None:
    if not any(True for _ in registry.list_versions(name)):
        return None
    return registry.production(name)


def _registered_dataset(registry: Registry, spec: ModelSpec) -> DatasetRecord | None:
    if not spec.data.dataset:
        return None
    name, version = parse_dataset_ref(spec.data.dataset)
    return registry.get_dataset(name, version)
