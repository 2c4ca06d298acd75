"""The training pipeline's steps as plain functions over files: what each KFP component calls.

Each function takes the spec as YAML text and artifact paths, so it runs the same in a KFP pod, in
`kfp.local` and in a unit test. Settings (database, object store, credentials) come from the environment
only: the compiled pipeline injects them from Kubernetes Secrets.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from modelyard.errors import ModelyardError
from modelyard.settings import Settings, load_settings
from modelyard.spec import FeatureSpec, ModelSpec, parse_spec

if TYPE_CHECKING:
    from modelyard.gating import GateVerdict
    from modelyard.registry import ModelVersionRecord

# Each step imports what it uses when it runs: every task is a fresh process, and importing scikit-learn,
# matplotlib and the registry for a step that needs none of them was most of a light task's run time.

# A line a failed step prints before it re-raises, so `modelyard train` can show the reason alone.
ERROR_MARKER = "MODELYARD-STEP-ERROR "

T = TypeVar("T")


def reporting_errors(step: Callable[..., T]) -> Callable[..., T]:
    """Print a failed step's ModelyardError on one marked line, then fail the task as usual.

    A step that succeeds inside a KFP task process also arranges for the process to skip the
    interpreter's teardown once KFP's executor has written the task's outputs (see end_task_quickly).
    """

    def run(*args: Any, **kwargs: Any) -> T:
        try:
            result = step(*args, **kwargs)
        except ModelyardError as exc:
            print(ERROR_MARKER + json.dumps({"step": step.__name__, "message": exc.message}), flush=True)
            raise
        end_task_quickly()
        return result

    run.__name__ = step.__name__
    run.__doc__ = step.__doc__
    return run


def end_task_quickly() -> None:
    """In a KFP task process (``_KFP_RUNTIME=true python -m kfp.dsl.executor_main``), exit with
    ``os._exit(0)`` at interpreter exit, once the executor has written its output file.

    Tearing down the modules of scikit-learn, SciPy and matplotlib takes 0.4-0.7 s of a task's run time
    and does nothing a finished task needs: outputs are files the step has closed and the executor has
    written. Exit is left to Python (and its exit code) when the process ends on an uncaught exception or
    the output file was not written after this step finished. Elsewhere (tests, in-process runs) this
    does nothing.
    """
    if os.environ.get("_KFP_RUNTIME") != "true" or "--executor_input" not in sys.argv:
        return
    try:
        executor_input = json.loads(sys.argv[sys.argv.index("--executor_input") + 1])
        output_file = Path(executor_input["outputs"]["outputFile"])
    except (IndexError, KeyError, TypeError, ValueError):
        return
    step_finished = time.time()

    def exit_now_if_outputs_written() -> None:
        if getattr(sys, "last_value", None) is not None:  # an uncaught exception: keep its exit code
            return
        try:
            written = output_file.stat().st_mtime >= step_finished - 1  # mtime granularity
        except OSError:
            return
        if written:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    atexit.register(exit_now_if_outputs_written)


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


# ---------------------------------------------------------------- ingest and validate


@reporting_errors
def fingerprint_source(spec_yaml: str) -> str:
    """The content fingerprint of the spec's data, read now: the cache key of everything downstream."""
    from modelyard.data.fingerprint import fingerprint_frame
    from modelyard.data.loading import load_frame

    spec = spec_from_yaml(spec_yaml)
    return fingerprint_frame(load_frame(spec.data, _settings()))


@dataclass(frozen=True)
class IngestOutcome:
    dataset: str  # name@version in the registry
    rows: int
    columns: int
    created: bool


@reporting_errors
def ingest(spec_yaml: str, fingerprint: str, dataset_path: str) -> IngestOutcome:
    """Snapshot the source to ``dataset_path`` (Parquet) and register it as a dataset version."""
    from modelyard.data.fingerprint import fingerprint_frame
    from modelyard.data.ingest import register_frame
    from modelyard.data.loading import load_frame, parse_dataset_ref
    from modelyard.registry import Registry

    spec = spec_from_yaml(spec_yaml)
    settings = _settings()
    frame = load_frame(spec.data, settings)
    found = fingerprint_frame(frame)
    if found != fingerprint:
        raise ModelyardError(
            f"{spec.data.describe()} changed since this run fingerprinted it ({fingerprint[:12]} -> "
            f"{found[:12]}); start the run again"
        )
    frame.to_parquet(dataset_path, index=False)
    with Registry(settings.database_url) as registry:
        if spec.data.dataset:
            name, version = parse_dataset_ref(spec.data.dataset)
            record, created = registry.get_dataset(name, version), False
        else:
            record, created = register_frame(
                registry, frame, spec.name, fingerprint=fingerprint, source=spec.data.describe()
            )
    return IngestOutcome(record.ref, len(frame), len(frame.columns), created)


@dataclass(frozen=True)
class ValidationOutcome:
    features_json: str
    algorithms: list[str]
    rows: int
    class_counts: dict[str, int]


@reporting_errors
def validate(spec_yaml: str, dataset_path: str) -> ValidationOutcome:
    """Every problem with the data, in one error; else the resolved features and the algorithms to try."""
    import pandas as pd

    from modelyard.data.validation import resolve_features, validate_frame

    spec = spec_from_yaml(spec_yaml)
    frame = pd.read_parquet(dataset_path)
    features = resolve_features(spec, frame)
    summary = validate_frame(frame, spec, features)
    return ValidationOutcome(
        features_to_json(features),
        [algorithm.value for algorithm in spec.algorithms],
        summary.rows,
        {str(k): int(v) for k, v in summary.class_counts.items()},
    )


@reporting_errors
def split(spec_yaml: str, dataset_path: str, train_path: str, holdout_path: str) -> None:
    """Stratified train/holdout split; the holdout keeps every column (production may need them)."""
    import pandas as pd

    from modelyard.training.evaluation import split_holdout

    spec = spec_from_yaml(spec_yaml)
    frame = pd.read_parquet(dataset_path)
    train_part, holdout_part = split_holdout(frame, spec.target, spec.holdout, spec.seed)
    train_part.to_parquet(train_path)
    holdout_part.to_parquet(holdout_path)


# ---------------------------------------------------------------- tune, select, evaluate


@reporting_errors
def tune_one(spec_yaml: str, features_json: str, algorithm: str, train_path: str, model_path: str) -> str:
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
        n_jobs=_settings().pipeline.tune_jobs or -1,
    )
    joblib.dump(result.model, model_path)
    return json.dumps(result.summary().to_dict())


@reporting_errors
def select(spec_yaml: str, summaries_json: list[str], model_paths: list[str], winner_path: str) -> str:
    """Keep the best candidate by the spec's metric (CV score); copy its model to ``winner_path``."""
    from modelyard.training.results import CandidateSummary, select_best

    spec = spec_from_yaml(spec_yaml)
    summaries = [CandidateSummary.from_dict(json.loads(text)) for text in summaries_json]
    if len(summaries) != len(model_paths):
        raise ModelyardError(f"select got {len(summaries)} candidates but {len(model_paths)} models")
    best = select_best(summaries, spec.metric)
    best_path = model_paths[summaries.index(best)]
    Path(winner_path).write_bytes(Path(best_path).read_bytes())
    return json.dumps(best.to_dict())


@reporting_errors
def evaluate_winner(spec_yaml: str, features_json: str, winner_path: str, holdout_path: str) -> str:
    """Holdout metrics, confusion matrix and ROC curves of the winner, as JSON."""
    import joblib
    import pandas as pd

    from modelyard.training.evaluation import evaluate

    spec = spec_from_yaml(spec_yaml)
    names = [f.name for f in features_from_json(features_json)]
    holdout = pd.read_parquet(holdout_path)
    evaluation = evaluate(joblib.load(winner_path), holdout[names], holdout[spec.target])
    return json.dumps(evaluation.to_dict())


# ---------------------------------------------------------------- gate, publish, deploy


@reporting_errors
def gate(spec_yaml: str, evaluation_json: str, holdout_path: str) -> GateVerdict:
    """Pass when the holdout score reaches the minimum and is no worse than production on the same rows."""
    from modelyard.gating import GateVerdict, judge, score_on_holdout
    from modelyard.registry import Registry
    from modelyard.training.results import Evaluation

    spec = spec_from_yaml(spec_yaml)
    score = Evaluation.from_dict(json.loads(evaluation_json)).score(spec.metric)
    settings = _settings()
    with Registry(settings.database_url) as registry:
        production = registry.production(spec.name) if registry.list_versions(spec.name) else None
    if production is None or not spec.gate.compare_to_production:
        return judge(spec, score, None, None)
    import pandas as pd  # only to score production: a first version's gate never reads the holdout

    holdout = pd.read_parquet(holdout_path)
    try:
        production_score = score_on_holdout(
            production.storage_uri, holdout, spec.target, spec.metric, settings
        )
    except ModelyardError as exc:
        reason = f"cannot score production {production.ref} on this holdout: {exc.message}"
        return GateVerdict(False, reason, score, None, production.version)
    return judge(spec, score, production, production_score)


def verdict_to_json(verdict: GateVerdict) -> str:
    return json.dumps(asdict(verdict))


@reporting_errors
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
) -> ModelVersionRecord:
    """Write the bundle, publish it (files first, verified, registry row last) in stage staging."""
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
    name, version = parse_dataset_ref(dataset)
    with Registry(settings.database_url) as registry, tempfile.TemporaryDirectory() as scratch:
        dataset_record = registry.get_dataset(name, version)
        bundle_dir = Path(scratch) / "bundle"
        write_training_bundle(result, bundle_dir, reference_frame=train_part, dataset=dataset_record.ref)
        return publish_version(settings, bundle_dir, dataset_id=dataset_record.id, registry=registry)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


@reporting_errors
def deploy(name: str, version: int, inference_service: str, namespace: str) -> str:
    """Promote the version to production; in a cluster, also point the InferenceService at its bundle.

    Patching ``spec.predictor.model.storageUri`` makes KServe's controller roll out a new revision; the
    registry's production stage follows only once the patch is accepted.
    """
    from modelyard.registry import Registry

    settings = _settings()
    with Registry(settings.database_url) as registry:
        record = registry.get_version(name, version)
        if in_cluster():
            from modelyard.pipeline.deploy import patch_inference_service

            patch_inference_service(inference_service or name, namespace, record.storage_uri)
        registry.promote(name, version)
    target = f"InferenceService {namespace}/{inference_service or name}" if in_cluster() else "the registry"
    return f"{name}@{version} is in production ({target})"


def fail_reason(lines: list[str]) -> list[dict[str, str]]:
    """The marked error lines of a run's log, as {step, message}."""
    found = []
    for line in lines:
        marker = line.find(ERROR_MARKER)
        if marker >= 0:
            try:
                found.append(json.loads(line[marker + len(ERROR_MARKER) :]))
            except json.JSONDecodeError:
                continue
    return found


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
