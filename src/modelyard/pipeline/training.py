"""The training pipeline: ingest, validate, split, tune (one task per algorithm), select, evaluate, gate,
publish, deploy. The same definition runs on a cluster's KFP and on a laptop through `kfp.local`.
"""

from collections import namedtuple
from typing import NamedTuple

from kfp import dsl
from kfp import kubernetes as k8s
from kfp.dsl import Dataset, Input, Model

from modelyard.pipeline import components as c
from modelyard.settings import load_settings

PIPELINE_NAME = "modelyard-training"


def _with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Registry and object-store settings from Kubernetes, never from pipeline parameters."""
    settings = load_settings().pipeline
    k8s.use_secret_as_env(
        task,
        secret_name=settings.database_secret,
        secret_key_to_env={"MODELYARD_DATABASE_URL": "MODELYARD_DATABASE_URL"},
    )
    k8s.use_secret_as_env(
        task,
        secret_name=settings.s3_secret,
        secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
    )
    k8s.use_config_map_as_env(
        task,
        config_map_name=settings.config_map,
        config_map_key_to_env={
            "MODELYARD_STORE_URI": "MODELYARD_STORE_URI",
            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
            "AWS_REGION": "AWS_REGION",
        },
    )
    return task


@dsl.pipeline(name="tune-candidates", description="One tuning task per algorithm, then the best of them.")
def tune_candidates(
    spec_yaml: str,
    features_json: str,
    algorithms: list,
    train: Input[Dataset],
) -> NamedTuple("TunedOutputs", [("winner", Model), ("winner_json", str), ("candidates_json", str)]):
    # A sub-pipeline because the loop's items come from the validate task: kfp.local iterates only over
    # a pipeline's own inputs.
    with dsl.ParallelFor(algorithms, name="algorithms") as algorithm:
        tune = c.tune(spec_yaml=spec_yaml, features_json=features_json, algorithm=algorithm, train=train)
    select = c.select(
        spec_yaml=spec_yaml,
        summaries=dsl.Collected(tune.outputs["Output"]),
        models=dsl.Collected(tune.outputs["model"]),
    )
    return namedtuple("TunedOutputs", ["winner", "winner_json", "candidates_json"])(
        select.outputs["winner"], select.outputs["winner_json"], select.outputs["candidates_json"]
    )


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Tune several scikit-learn algorithms for a ModelSpec, gate the best, publish and deploy it.",
)
def training_pipeline(
    spec_yaml: str,
    auto_deploy: bool = False,
    inference_service: str = "",
    namespace: str = "kubeflow",
) -> str:
    # Never cached: the fingerprint of the data as it is now is what keys every cached step below, so a
    # file changed in place is read again while an unchanged one reuses the earlier run's work.
    fingerprint = _with_credentials(c.fingerprint_source(spec_yaml=spec_yaml))
    fingerprint.set_caching_options(False)
    ingest = _with_credentials(c.ingest(spec_yaml=spec_yaml, fingerprint=fingerprint.output))
    validate = c.validate(spec_yaml=spec_yaml, dataset=ingest.outputs["dataset"])
    split = c.split(spec_yaml=spec_yaml, dataset=ingest.outputs["dataset"]).after(validate)
    features = validate.outputs["features_json"]
    tuned = tune_candidates(
        spec_yaml=spec_yaml,
        features_json=features,
        algorithms=validate.outputs["algorithms"],
        train=split.outputs["train"],
    )
    candidates = tuned.outputs["candidates_json"]
    evaluate = c.evaluate(
        spec_yaml=spec_yaml,
        features_json=features,
        winner=tuned.outputs["winner"],
        holdout=split.outputs["holdout"],
    )
    # Production may have changed since an earlier identical run: the gate always looks again.
    gate = _with_credentials(
        c.gate(
            spec_yaml=spec_yaml, evaluation_json=evaluate.outputs["Output"], holdout=split.outputs["holdout"]
        )
    )
    gate.set_caching_options(False)
    with dsl.If(gate.outputs["passed"] == True, name="gate-passed"):  # noqa: E712  # a KFP condition, not Python
        publish = _with_credentials(
            c.publish(
                spec_yaml=spec_yaml,
                features_json=features,
                candidates_json=candidates,
                winner_json=tuned.outputs["winner_json"],
                winner=tuned.outputs["winner"],
                evaluation_json=evaluate.outputs["Output"],
                verdict_json=gate.outputs["verdict_json"],
                train=split.outputs["train"],
                holdout=split.outputs["holdout"],
                fingerprint=fingerprint.output,
                dataset=ingest.outputs["Output"],
            )
        )
        publish.set_caching_options(False)
        with dsl.If(auto_deploy == True, name="auto-deploy"):  # noqa: E712
            deploy = _with_credentials(
                c.deploy(
                    name=publish.outputs["name"],
                    version=publish.outputs["version"],
                    inference_service=inference_service,
                    namespace=namespace,
                )
            )
            deploy.set_caching_options(False)
    with dsl.Else(name="gate-rejected"):
        reject = c.reject(
            candidates_json=candidates,
            winner_json=tuned.outputs["winner_json"],
            evaluation_json=evaluate.outputs["Output"],
            verdict_json=gate.outputs["verdict_json"],
        )
        reject.set_caching_options(False)
    return dsl.OneOf(publish.outputs["summary"], reject.output)
