"""KFP v2 lightweight components: each is a thin wrapper over one function of `modelyard.pipeline.steps`.

The bodies are shipped as source by KFP, so they import what they use. Every component runs in the
project's own image (MODELYARD_PIPELINE__IMAGE), which has modelyard and kfp installed: nothing is
pip-installed at run time (install_kfp_package=False).
"""

from typing import List, NamedTuple  # KFP reads typing.List in Input[List[Model]]

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from modelyard.settings import load_settings

IMAGE = load_settings().pipeline.image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fingerprint(spec_yaml: str) -> str:
    """Read the spec's data and return its content fingerprint (never cached)."""
    from modelyard.pipeline import steps

    return steps.fingerprint_source(spec_yaml)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(
    spec_yaml: str,
    fingerprint: str,
    dataset: Output[Dataset],
    train: Output[Dataset],
    holdout: Output[Dataset],
) -> NamedTuple("PreparedOutputs", [("dataset_ref", str), ("features_json", str), ("algorithms", list)]):
    """Validate the data (every problem at once), snapshot and register it, split it train/holdout."""
    from collections import namedtuple

    from modelyard.pipeline import steps

    prepared = steps.prepare(spec_yaml, fingerprint, dataset.path, train.path, holdout.path)
    dataset.metadata.update(
        {
            "fingerprint": fingerprint,
            "rows": prepared.rows,
            "columns": prepared.columns,
            "registry": prepared.dataset,
            "class_counts": prepared.class_counts,
        }
    )
    return namedtuple("PreparedOutputs", ["dataset_ref", "features_json", "algorithms"])(
        prepared.dataset, prepared.features_json, prepared.algorithms
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune(
    spec_yaml: str,
    features_json: str,
    algorithm: str,
    train: Input[Dataset],
    model: Output[Model],
    cv_metrics: Output[Metrics],
) -> str:
    """Tune one algorithm with stratified CV within the spec's budget."""
    import json

    from modelyard.pipeline import steps

    summary = steps.tune_one(spec_yaml, features_json, train.path, model.path, algorithm=algorithm)
    found = json.loads(summary)
    model.metadata.update(
        {"algorithm": algorithm, "cv_score": found["cv_score"], "params": found["best_params"]}
    )
    cv_metrics.log_metric(f"cv_{found['metric']}", found["cv_score"])
    cv_metrics.log_metric("cv_std", found["cv_std"])
    cv_metrics.log_metric("trials", found["n_trials"])
    # KFP keeps metrics in metadata; a file at the path lets kfp.local's cache find the artifact again.
    steps.write_json(cv_metrics.path, cv_metrics.metadata)
    return summary


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def decide(
    spec_yaml: str,
    features_json: str,
    summaries: list,
    models: Input[List[Model]],
    holdout: Input[Dataset],
    winner: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
) -> NamedTuple(
    "DecideOutputs",
    [
        ("passed", bool),
        ("verdict_json", str),
        ("winner_json", str),
        ("evaluation_json", str),
        ("candidates_json", str),
    ],
):
    """Keep the best candidate by CV score, evaluate it on the holdout (metrics, confusion matrix, ROC
    curve), and gate it: at least the minimum score, and no worse than production on the same rows."""
    import json
    from collections import namedtuple

    from modelyard.pipeline import steps

    decision = steps.decide(
        spec_yaml, features_json, summaries, [m.path for m in models], winner.path, holdout.path
    )
    best = json.loads(decision.winner_json)
    winner.metadata.update({"algorithm": best["algorithm"], "cv_score": best["cv_score"]})
    found = json.loads(decision.evaluation_json)
    for name, value in found["metrics"].items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix([str(c) for c in found["classes"]], found["confusion_matrix"])
    if len(found["roc_curves"]) == 1:  # KFP shows one curve: the binary case
        curve = found["roc_curves"][0]
        classification.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
    steps.write_json(metrics.path, metrics.metadata)
    steps.write_json(classification.path, classification.metadata)
    return namedtuple(
        "DecideOutputs", ["passed", "verdict_json", "winner_json", "evaluation_json", "candidates_json"]
    )(
        decision.verdict.passed,
        steps.verdict_to_json(decision.verdict),
        decision.winner_json,
        decision.evaluation_json,
        json.dumps(list(summaries)),
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish(
    spec_yaml: str,
    features_json: str,
    candidates_json: str,
    winner_json: str,
    winner: Input[Model],
    evaluation_json: str,
    verdict_json: str,
    train: Input[Dataset],
    holdout: Input[Dataset],
    fingerprint: str,
    dataset_ref: str,
    report: Output[HTML],
    model_card: Output[Markdown],
    run_id: str = "",
) -> NamedTuple("PublishOutputs", [("name", str), ("version", int), ("summary", str)]):
    """Write the bundle, publish it to the object store, record it in the registry (stage staging), under
    ``run_id`` when one is given (the operator's name for the run)."""
    import json
    from collections import namedtuple

    from modelyard.pipeline import steps

    candidates = json.loads(candidates_json)
    record = steps.publish(
        spec_yaml,
        features_json,
        candidates,
        winner_json,
        winner.path,
        evaluation_json,
        train.path,
        holdout.path,
        fingerprint,
        dataset_ref,
        report.path,
        model_card.path,
        run_id=run_id,
    )
    report.metadata.update({"model": record.ref, "storage_uri": record.storage_uri})
    model_card.metadata.update({"model": record.ref})
    summary = steps.run_summary(candidates, winner_json, evaluation_json, verdict_json, record)
    return namedtuple("PublishOutputs", ["name", "version", "summary"])(record.name, record.version, summary)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def reject(candidates_json: str, winner_json: str, evaluation_json: str, verdict_json: str) -> str:
    """The gate said no: nothing is published; the summary says why."""
    import json

    from modelyard.pipeline import steps

    return steps.reject(json.loads(candidates_json), winner_json, evaluation_json, verdict_json)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(name: str, version: int, inference_service: str, namespace: str) -> str:
    """Promote to production; in a cluster, patch the InferenceService's storage URI."""
    from modelyard.pipeline import steps

    return steps.deploy(name, version, inference_service, namespace)
