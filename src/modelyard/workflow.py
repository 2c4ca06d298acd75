"""The training run as plain functions: load, validate, train, gate, publish.

`modelyard train` runs them in one process; the KFP pipeline wraps the same functions as components.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelyard.data.fingerprint import fingerprint_frame
from modelyard.data.loading import load_frame, parse_dataset_ref
from modelyard.data.validation import resolve_features, validate_frame
from modelyard.errors import ModelyardError
from modelyard.gating import GateVerdict, judge, score_on_holdout
from modelyard.publishing import publish_version, write_training_bundle
from modelyard.registry import DatasetRecord, ModelVersionRecord, Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import ModelSpec
from modelyard.training.train import Progress, TrainingResult, train


@dataclass
class RunOutcome:
    result: TrainingResult
    verdict: GateVerdict
    published: ModelVersionRecord | None


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
    result = train(
        spec,
        frame,
        features,
        n_jobs=settings.pipeline.tune_n_jobs,
        progress=progress,
        dataset_fingerprint=fingerprint_frame(frame),
    )
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
