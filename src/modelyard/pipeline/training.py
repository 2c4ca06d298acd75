"""The training pipeline: fingerprint, prepare (validate, snapshot, split), tune (one task per algorithm),
decide (select, evaluate, gate), publish or reject, deploy. The same definition runs on a cluster's KFP
and on a laptop through `kfp.local`.
"""

from collections import namedtuple
from typing import NamedTuple

from kfp import dsl
from kfp import kubernetes as k8s
from kfp.dsl import Dataset, Input, Model

from modelyard.pipeline import components as c
from modelyard.settings import load_settings

PIPELINE_NAME = "modelyard-training"


def with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Registry and object-store settings from Kubernetes, never from pipeline parameters."""
    settings = load_settings().pipeline
    k8s.use_secret_as_env(
        task,
        secret_name=settings.database_secret,
        # the key the operator's Jobs read too: an external database's Secret may name it otherwise
        secret_key_to_env={settings.database_secret_key: "MODELYARD_DATABASE_URL"},
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


@dsl.pipeline(name="choose-model", description="One tuning task per algorithm, then the best of them, gated.")
def choose_model(
    spec_yaml: str,
    features_json: str,
    algorithms: list,
    train: Input[Dataset],
    holdout: Input[Dataset],
) -> NamedTuple(
    "ChosenOutputs",
    [
        ("winner", Model),
        ("passed", bool),
        ("verdict_json", str),
        ("winner_json", str),
        ("evaluation_json", str),
        ("candidates_json", str),
    ],
):
    # A sub-pipeline because the loop's items come from the prepare task: kfp.local iterates only over
    # a pipeline's own inputs.
    with dsl.ParallelFor(algorithms, name="algorithms") as algorithm:
        tune = c.tune(spec_yaml=spec_yaml, features_json=features_json, algorithm=algorithm, train=train)
    # Production may have changed since an earlier identical run: the gate always looks again.
    decide = with_credentials(
        c.decide(
            spec_yaml=spec_yaml,
            features_json=features_json,
            summaries=dsl.Collected(tune.outputs["Output"]),
            models=dsl.Collected(tune.outputs["model"]),
            holdout=holdout,
        )
    )
    decide.set_caching_options(False)
    outputs = ["winner", "passed", "verdict_json", "winner_json", "evaluation_json", "candidates_json"]
    return namedtuple("ChosenOutputs", outputs)(*(decide.outputs[name] for name in outputs))


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Tune several scikit-learn algorithms for a ModelSpec, gate the best, publish and deploy it.",
)
def training_pipeline(
    spec_yaml: str,
    auto_deploy: bool = False,
    inference_service: str = "",
    namespace: str = "kubeflow",
    run_id: str = "",
) -> str:
    # Never cached: the fingerprint of the data as it is now is what keys every cached step below, so a
    # file changed in place is read again while an unchanged one reuses the earlier run's work.
    fingerprint = with_credentials(c.fingerprint(spec_yaml=spec_yaml))
    fingerprint.set_caching_options(False)
    prepare = with_credentials(c.prepare(spec_yaml=spec_yaml, fingerprint=fingerprint.output))
    features = prepare.outputs["features_json"]
    chosen = choose_model(
        spec_yaml=spec_yaml,
        features_json=features,
        algorithms=prepare.outputs["algorithms"],
        train=prepare.outputs["train"],
        holdout=prepare.outputs["holdout"],
    )
    with dsl.If(chosen.outputs["passed"] == True, name="gate-passed"):  # noqa: E712  # a KFP condition, not Python
        publish = with_credentials(
            c.publish(
                spec_yaml=spec_yaml,
                features_json=features,
                candidates_json=chosen.outputs["candidates_json"],
                winner_json=chosen.outputs["winner_json"],
                winner=chosen.outputs["winner"],
                evaluation_json=chosen.outputs["evaluation_json"],
                verdict_json=chosen.outputs["verdict_json"],
                train=prepare.outputs["train"],
                holdout=prepare.outputs["holdout"],
                fingerprint=fingerprint.output,
                dataset_ref=prepare.outputs["dataset_ref"],
                run_id=run_id,
            )
        )
        publish.set_caching_options(False)
        with dsl.If(auto_deploy == True, name="auto-deploy"):  # noqa: E712
            deploy = with_credentials(
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
            candidates_json=chosen.outputs["candidates_json"],
            winner_json=chosen.outputs["winner_json"],
            evaluation_json=chosen.outputs["evaluation_json"],
            verdict_json=chosen.outputs["verdict_json"],
        )
        reject.set_caching_options(False)
    return dsl.OneOf(publish.outputs["summary"], reject.output)
