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
def fingerprint_source(spec_yaml: str) -> str:
    """Read the spec's data and return its content fingerprint (never cached)."""
    from modelyard.pipeline import steps

    return steps.fingerprint_source(spec_yaml)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(spec_yaml: str, fingerprint: str, dataset: Output[Dataset]) -> str:
    """Snapshot the source into a Dataset artifact and register the dataset version."""
    from modelyard.pipeline import steps

    outcome = steps.ingest(spec_yaml, fingerprint, dataset.path)
    dataset.metadata.update(
        {
            "fingerprint": fingerprint,
            "rows": outcome.rows,
            "columns": outcome.columns,
            "registry": outcome.dataset,
        }
    )
    return outcome.dataset


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(spec_yaml: str, dataset: Input[Dataset]) -> NamedTuple(
    "ValidationOutputs", [("features_json", str), ("algorithms", list)]
):
    """Fail fast with every problem in the data; else pass on the features and algorithms."""
    from collections import namedtuple

    from modelyard.pipeline import steps

    outcome = steps.validate(spec_yaml, dataset.path)
    dataset.metadata["class_counts"] = outcome.class_counts
    return namedtuple("ValidationOutputs", ["features_json", "algorithms"])(
        outcome.features_json, outcome.algorithms
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split(spec_yaml: str, dataset: Input[Dataset], train: Output[Dataset], holdout: Output[Dataset]) -> None:
    """Stratified train/holdout split."""
    from modelyard.pipeline import steps

    steps.split(spec_yaml, dataset.path, train.path, holdout.path)


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

    summary = steps.tune_one(spec_yaml, features_json, algorithm, train.path, model.path)
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
def select(
    spec_yaml: str,
    summaries: list,
    models: Input[List[Model]],
    winner: Output[Model],
) -> NamedTuple("SelectOutputs", [("winner_json", str), ("candidates_json", str)]):
    """Keep the best candidate by the spec's metric; pass on every candidate's summary too."""
    import json
    from collections import namedtuple

    from modelyard.pipeline import steps

    best = steps.select(spec_yaml, summaries, [m.path for m in models], winner.path)
    winner.metadata.update(
        {"algorithm": json.loads(best)["algorithm"], "cv_score": json.loads(best)["cv_score"]}
    )
    return namedtuple("SelectOutputs", ["winner_json", "candidates_json"])(best, json.dumps(list(summaries)))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    spec_yaml: str,
    features_json: str,
    winner: Input[Model],
    holdout: Input[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
) -> str:
    """Holdout metrics, confusion matrix and ROC curve of the winner."""
    import json

    from modelyard.pipeline import steps

    evaluation = steps.evaluate_winner(spec_yaml, features_json, winner.path, holdout.path)
    found = json.loads(evaluation)
    for name, value in found["metrics"].items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix([str(c) for c in found["classes"]], found["confusion_matrix"])
    if len(found["roc_curves"]) == 1:  # KFP shows one curve: the binary case
        curve = found["roc_curves"][0]
        classification.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
    steps.write_json(metrics.path, metrics.metadata)
    steps.write_json(classification.path, classification.metadata)
    return evaluation


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(spec_yaml: str, evaluation_json: str, holdout: Input[Dataset]) -> NamedTuple(
    "GateOutputs", [("passed", bool), ("verdict_json", str)]
):
    """Pass when the score reaches the minimum and is no worse than production on the same holdout."""
    from collections import namedtuple

    from modelyard.pipeline import steps

    verdict = steps.gate(spec_yaml, evaluation_json, holdout.path)
    return namedtuple("GateOutputs", ["passed", "verdict_json"])(
        verdict.passed, steps.verdict_to_json(verdict)
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
    dataset: str,
    report: Output[HTML],
    model_card: Output[Markdown],
) -> NamedTuple("PublishOutputs", [("name", str), ("version", int), ("summary", str)]):
    """Write the bundle, publish it to the object store, record it in the registry (stage staging)."""
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
        dataset,
        report.path,
        model_card.path,
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

    return steps.run_summary(json.loads(candidates_json), winner_json, evaluation_json, verdict_json, None)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(name: str, version: int, inference_service: str, namespace: str) -> str:
    """Promote to production; in a cluster, patch the InferenceService's storage URI."""
    from modelyard.pipeline import steps

    return steps.deploy(name, version, inference_service, namespace)
