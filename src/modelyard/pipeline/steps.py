"""The training pipeline's steps as plain functions over files: what each KFP component calls.

Each function takes the spec as YAML text and artifact paths, so it runs the same in a KFP pod, in
`kfp.local` and in a unit test. Settings (database, object store, credentials) come from the environment
only: the compiled pipeline injects them from Kubernetes Secrets. The functions a component calls report
themselves in the run's events file (`modelyard.pipeline.events`) when the run has one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelyard.errors import ModelyardError
from modelyard.pipeline.events import task_events
from modelyard.settings import Settings, load_settings
from modelyard.spec import FeatureSpec, ModelSpec, parse_spec

if TYPE_CHECKING:
    import pandas as pd

    from modelyard.gating import GateVerdict
    from modelyard.registry import ModelVersionRecord

# Each step imports what it uses when it runs: every task is a fresh process, and importing scikit-learn,
# matplotlib and the registry for a step that needs none of them was most of a light task's run time.


def spec_from_yaml(spec_yaml: str) -> ModelSpec:
    return parse_spec(yaml.safe_load(spec_yaml), source="spec")


def spec_to_yaml(spec: ModelSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _settings() -> Settings:
    return load_settings()


def write_json(path: str, payload: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, default=str), encoding="utf-8")


def features_to_json(features: list[FeatureSpec]) -> str:
    return json.dumps([feature.model_dump(mode="json") for feature in features])


def features_from_json(text: str) -> list[FeatureSpec]:
    return [FeatureSpec.model_validate(item) for item in json.loads(text)]


# ---------------------------------------------------------------- fingerprint and prepare


@task_events("fingerprint")
def fingerprint_source(spec_yaml: str) -> str:
    """The content fingerprint of the spec's data, read now: the cache key of everything downstream."""
    from modelyard.data.fingerprint import fingerprint_frame
    from modelyard.data.loading import load_frame

    spec = spec_from_yaml(spec_yaml)
    return fingerprint_frame(load_frame(spec.data, _settings()))


@dataclass(frozen=True)
class PreparedData:
    dataset: str  # name@version in the registry
    rows: int
    columns: int
    created: bool  # a new dataset version was registered
    features_json: str
    algorithms: list[str]
    class_counts: dict[str, int]


@task_events("prepare")
def prepare(
    spec_yaml: str, fingerprint: str, dataset_path: str, train_path: str, holdout_path: str
) -> PreparedData:
    """Read the data, check it is what was fingerprinted and fits the spec (every problem in one error),
    snapshot it to ``dataset_path`` (Parquet), register the dataset version, and split it stratified into
    train and holdout (the holdout keeps every column: production may need them)."""
    from modelyard.data.fingerprint import fingerprint_frame
    from modelyard.data.ingest import register_frame
    from modelyard.data.loading import load_frame, parse_dataset_ref
    from modelyard.data.validation import resolve_features, validate_frame
    from modelyard.registry import Registry
    from modelyard.training.evaluation import split_holdout

    spec = spec_from_yaml(spec_yaml)
    settings = _settings()
    frame = load_frame(spec.data, settings)
    found = fingerprint_frame(frame)
    if found != fingerprint:
        raise ModelyardError(
            f"{spec.data.describe()} changed since this run fingerprinted it ({fingerprint[:12]} -> "
            f"{found[:12]}); start the run again"
        )
    features = resolve_features(spec, frame)
    summary = validate_frame(frame, spec, features)
    frame.to_parquet(dataset_path, index=False)
    with Registry(settings.database_url) as registry:
        if spec.data.dataset:
            name, version = parse_dataset_ref(spec.data.dataset)
            record, created = registry.get_dataset(name, version), False
        else:
            record, created = register_frame(
                registry, frame, spec.name, fingerprint=fingerprint, source=spec.data.describe()
            )
    train_part, holdout_part = split_holdout(frame, spec.target, spec.holdout, spec.seed)
    train_part.to_parquet(train_path)
    holdout_part.to_parquet(holdout_path)
    return PreparedData(
        dataset=record.ref,
        rows=len(frame),
        columns=len(frame.columns),
        created=created,
        features_json=features_to_json(features),
        algorithms=[algorithm.value for algorithm in spec.algorithms],
        class_counts={str(k): int(v) for k, v in summary.class_counts.items()},
    )


# ---------------------------------------------------------------- tune, then decide


@task_events("tune", item="algorithm")
def tune_one(spec_yaml: str, features_json: str, train_path: str, model_path: str, *, algorithm: str) -> str:
    """Tune one algorithm with CV within the spec's budget; save its refitted Pipeline to ``model_path``."""
    import joblib
    import pandas as pd

    from modelyard.training.tuning import tune

    spec = spec_from_yaml(spec_yaml)
    features = features_from_json(features_json)
    train_part = pd.read_parquet(train_path)
    names = [f.name for f in features]
    result = tune(
        algorithm,
        train_part[names],
        train_part[spec.target],
        features,
        spec.search,
        spec.metric,
        spec.cv_folds,
        spec.seed,
        n_jobs=_settings().pipeline.tune_n_jobs,
    )
    joblib.dump(result.model, model_path)
    return json.dumps(result.summary().to_dict())


@dataclass(frozen=True)
class Decision:
    winner_json: str  # the best candidate's summary
    evaluation_json: str  # its holdout metrics, confusion matrix and ROC curves
    verdict: GateVerdict


@task_events("decide")
def decide(
    spec_yaml: str,
    features_json: str,
    summaries_json: list[str],
    model_paths: list[str],
    winner_path: str,
    holdout_path: str,
) -> Decision:
    """Keep the best candidate by the spec's CV metric (copied to ``winner_path``), evaluate it on the
    holdout, and gate it: it passes when its score reaches the minimum and is no worse than production's
    on the same holdout rows."""
    import joblib
    import pandas as pd

    from modelyard.training.evaluation import evaluate
    from modelyard.training.results import CandidateSummary, select_best

    if len(summaries_json) != len(model_paths):
        raise ModelyardError(f"decide got {len(summaries_json)} candidates but {len(model_paths)} models")
    spec = spec_from_yaml(spec_yaml)
    summaries = [CandidateSummary.from_dict(json.loads(text)) for text in summaries_json]
    best = select_best(summaries, spec.metric)
    Path(winner_path).write_bytes(Path(model_paths[summaries.index(best)]).read_bytes())
    names = [f.name for f in features_from_json(features_json)]
    holdout = pd.read_parquet(holdout_path)
    evaluation = evaluate(joblib.load(winner_path), holdout[names], holdout[spec.target])
    verdict = gate(spec, evaluation.score(spec.metric), holdout)
    return Decision(json.dumps(best.to_dict()), json.dumps(evaluation.to_dict()), verdict)


def gate(spec: ModelSpec, score: float, holdout: pd.DataFrame) -> GateVerdict:
    """Pass when the holdout score reaches the minimum and is no worse than production on the same rows."""
    from modelyard.gating import GateVerdict, judge, score_on_holdout
    from modelyard.registry import Registry

    settings = _settings()
    with Registry(settings.database_url) as registry:
        production = registry.production(spec.name) if registry.list_versions(spec.name) else None
    if production is None or not spec.gate.compare_to_production:
        return judge(spec, score, None, None)
    try:
        production_score = score_on_holdout(
            production.storage_uri, holdout, spec.target, spec.metric, settings
        )
    except ModelyardError as exc:
        reason = f"cannot score production {production.ref} on this holdout: {exc.message}"
        return GateVerdict(False, reason, score, None, production.version)
    return judge(spec, score, production, production_score)


# ---------------------------------------------------------------- publish or reject, deploy


def verdict_to_json(verdict: GateVerdict) -> str:
    return json.dumps(asdict(verdict))


@task_events("publish")
def publish(
    spec_yaml: str,
    features_json: str,
    candidates_json: list[str],
    winner_json: str,
    winner_path: str,
    evaluation_json: str,
    train_path: str,
    holdout_path: str,
    fingerprint: str,
    dataset: str,
    report_path: str,
    card_path: str,
    *,
    run_id: str = "",
) -> ModelVersionRecord:
    """Write the bundle, publish it (files first, verified, registry row last) in stage staging; ``run_id``
    (else MODELYARD_PIPELINE__RUN_ID) is recorded with the version."""
    import joblib
    import pandas as pd

    from modelyard.data.loading import parse_dataset_ref
    from modelyard.publishing import publish_version, write_training_bundle
    from modelyard.registry import Registry
    from modelyard.training.results import CandidateSummary, Evaluation
    from modelyard.training.train import assemble_result
    from modelyard.training.tuning import TuningResult

    spec = spec_from_yaml(spec_yaml)
    features = features_from_json(features_json)
    winner_summary = CandidateSummary.from_dict(json.loads(winner_json))
    winner = TuningResult(**vars(winner_summary), model=joblib.load(winner_path))
    train_part = pd.read_parquet(train_path)
    holdout = pd.read_parquet(holdout_path)
    result = assemble_result(
        spec,
        features,
        [CandidateSummary.from_dict(json.loads(text)) for text in candidates_json],
        winner,
        Evaluation.from_dict(json.loads(evaluation_json)),
        train_rows=len(train_part),
        holdout=holdout,
        class_counts=pd.concat([train_part, holdout])[spec.target].value_counts(),
        dataset_fingerprint=fingerprint,
    )
    Path(report_path).write_text(result.report_html, encoding="utf-8")
    Path(card_path).write_text(result.model_card_md, encoding="utf-8")
    settings = _settings()
    if run_id:
        settings = settings.model_copy(
            update={"pipeline": settings.pipeline.model_copy(update={"run_id": run_id})}
        )
    name, version = parse_dataset_ref(dataset)
    with Registry(settings.database_url) as registry, tempfile.TemporaryDirectory() as scratch:
        dataset_record = registry.get_dataset(name, version)
        bundle_dir = Path(scratch) / "bundle"
        write_training_bundle(result, bundle_dir, reference_frame=train_part, dataset=dataset_record.ref)
        return publish_version(settings, bundle_dir, dataset_id=dataset_record.id, registry=registry)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


@task_events("deploy")
def deploy(name: str, version: int, inference_service: str, namespace: str) -> str:
    """Promote the version to production; in a cluster, also point the InferenceService at its bundle.

    Patching ``spec.predictor.model.storageUri`` makes KServe's controller roll out a new revision; the
    registry's production stage follows only once the patch is accepted.
    """
    from modelyard.registry import ModelRef, Registry

    settings = _settings()
    if in_cluster():
        from modelyard.deploy.kube import deploy as deploy_to_cluster

        deployed = deploy_to_cluster(
            settings,
            ModelRef(name, version=version),
            namespace=namespace,
            inference_service=inference_service,
        )
        return (
            f"{name}@{version} is in production (InferenceService {namespace}/{deployed.inference_service})"
        )
    with Registry(settings.database_url) as registry:
        registry.promote(name, version)
    return f"{name}@{version} is in production (the registry)"


def run_summary(
    candidates_json: list[str],
    winner_json: str,
    evaluation_json: str,
    verdict_json: str,
    record: ModelVersionRecord | None,
) -> str:
    """The run's outcome, the pipeline's output: candidates, winner, holdout metrics, gate, published."""
    return json.dumps(
        {
            "candidates": [json.loads(text) for text in candidates_json],
            "winner": json.loads(winner_json),
            "holdout": json.loads(evaluation_json)["metrics"],
            "gate": json.loads(verdict_json),
            "published": None if record is None else record.to_dict(),
        },
        default=str,
    )


@task_events("reject")
def reject(candidates_json: list[str], winner_json: str, evaluation_json: str, verdict_json: str) -> str:
    """The gate said no: nothing is published; the run's summary says why."""
    return run_summary(candidates_json, winner_json, evaluation_json, verdict_json, None)
