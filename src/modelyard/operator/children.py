"""The objects a Model owns, as plain manifests: its spec's ConfigMap, a training Job, the CronJob of its
schedule, and its InferenceService.

Names are derived from the Model and what they run, so creating one twice finds the first rather than
a duplicate: a handler may run again after a crash and do no harm. A name cut to fit Kubernetes' limits
carries a hash of the whole Model name, so two long names that share a beginning do not share a child.
What a pod gets beyond its work (service account, labels, security contexts, default resources) comes
from ``settings.operator.predictor`` and ``.training``, which the chart sets from its own pods' values
and helpers: a predictor or training pod the operator makes is the chart's, down to the labels its
NetworkPolicies admit. The training pod takes the registry and object-store settings from the same
Secrets and ConfigMap as the pipeline's components, none of them optional: a missing one stops the pod
visibly (CreateContainerConfigError) instead of training against no registry. Its run id is its Job's
name (the label Kubernetes puts on a Job's pods), recorded with the version it publishes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from modelyard.operator.resource import GROUP, KIND, VERSION, DeploymentMode, Policies
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

MODEL_LABEL = f"{GROUP}/model"
TRIGGER_LABEL = f"{GROUP}/trigger"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
# What starts a run (its TRIGGER_LABEL): a spec with no run yet, a retraining alert, the schedule.
SPEC, ALERT, SCHEDULE = "spec", "alert", "schedule"
# Set on a Model to ask for one run; a new value asks again. The retrain webhook (or a person) sets the
# first, which spec.training.retrain_on_alert may refuse; the schedule's CronJob sets the second.
RETRAIN_ANNOTATION = f"{GROUP}/retrain-requested"
SCHEDULE_ANNOTATION = f"{GROUP}/schedule-requested"
# on a Knative InferenceService: the latest revision Knative had made when this template was written
REPLACED_REVISION_ANNOTATION = f"{GROUP}/replaced-revision"
REQUEST_ANNOTATIONS = {ALERT: RETRAIN_ANNOTATION, SCHEDULE: SCHEDULE_ANNOTATION}
# the Event each trigger's new run is said with
STARTED_REASONS = {SPEC: "TrainingStarted", ALERT: "RetrainingStarted", SCHEDULE: "ScheduledTrainingStarted"}
# on a schedule's request Jobs and pods, instead of MODEL_LABEL: they are no training runs of the Model
SCHEDULE_LABEL = f"{GROUP}/schedule-of"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelyard-operator"}
COMPONENT_LABEL = "app.kubernetes.io/component"  # the chart's pods' role in the release
SPEC_MOUNT = "/etc/modelyard/spec"
SPEC_FILE = "spec.yaml"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # what the Job controller labels each of its pods with
NAME_LIMIT = 63  # a Job's name is a label value of its pods
CRON_JOB_NAME_LIMIT = 52  # the CronJob controller appends 11 characters to name each Job
NAME_HASH_LENGTH = 6
# spec.managedBy of a Job under `modelyard operator --local`: the Job controller leaves it alone
LOCAL_JOB_MANAGER = "modelyard.io/local"


def spec_hash(spec: ModelSpec) -> str:
    """What a training run depends on: a change retrains, a change of serving or rollout policy does not."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def _labels(model: str, **extra: str) -> dict[str, str]:
    return {**MANAGED_BY, MODEL_LABEL: model, **extra}


def child_name(model: str, suffix: str, limit: int = NAME_LIMIT) -> str:
    """``<model>-<suffix>`` within ``limit`` characters; a Model name cut to fit keeps a hash of all of it."""
    name = f"{model}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(model.encode()).hexdigest()[:NAME_HASH_LENGTH]
    return f"{model[: limit - len(suffix) - NAME_HASH_LENGTH - 2].rstrip('-')}-{digest}-{suffix}"


def spec_config_map_name(model: str) -> str:
    return child_name(model, "spec")


def spec_config_map(model: str, spec: ModelSpec) -> dict[str, Any]:
    """The spec file a training pod reads; its hash is on it, so a run knows what it trained."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": spec_config_map_name(model),
            "labels": _labels(model),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec)},
        },
        "data": {SPEC_FILE: yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)},
    }


def _env(settings: Settings) -> list[dict[str, Any]]:
    pipeline = settings.pipeline

    def from_secret(variable: str, secret: str, key: str) -> dict[str, Any]:
        return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    run_id = {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}}
    return [
        from_secret("MODELYARD_DATABASE_URL", pipeline.database_secret, pipeline.database_secret_key),
        from_secret("AWS_ACCESS_KEY_ID", pipeline.s3_secret, "AWS_ACCESS_KEY_ID"),
        from_secret("AWS_SECRET_ACCESS_KEY", pipeline.s3_secret, "AWS_SECRET_ACCESS_KEY"),
        {"name": "MODELYARD_PIPELINE__RUN_ID", "valueFrom": run_id},
        {"name": "MODELYARD_HOME", "value": "/tmp/modelyard"},  # the emptyDir: the only writable path
    ]


def _train_args(settings: Settings) -> list[str]:
    """`modelyard train` for the pod. In a cluster's pod the steps run in its one process (the pod is the
    run); under `--local` the run goes through kfp.local as `modelyard train` on a laptop does, unless
    ``settings.operator.local_in_process`` asks for the faster single process."""
    operator = settings.operator
    in_process = not operator.local or operator.local_in_process
    return [
        "train",
        "--spec",
        f"{SPEC_MOUNT}/{SPEC_FILE}",
        *(["--in-process"] if in_process else []),
        "--json",
    ]


def _pod_template(model: str, settings: Settings, trigger: str) -> dict[str, Any]:
    pod = settings.operator.training
    container: dict[str, Any] = {
        "name": "train",
        "image": settings.pipeline.image,
        "command": ["modelyard"],
        "args": _train_args(settings),
        # the chart's ConfigMap (store, endpoint, region), as its own Jobs take it
        "envFrom": [{"configMapRef": {"name": settings.pipeline.config_map}}],
        "env": _env(settings),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp"},
        ],
    }
    if pod.container_security_context:
        container["securityContext"] = pod.container_security_context
    if pod.resources:
        container["resources"] = pod.resources
    return {
        "metadata": {"labels": {**pod.labels, **_labels(model, **{TRIGGER_LABEL: trigger})}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": pod.service_account,
            "automountServiceAccountToken": False,
            "securityContext": pod.security_context,
            "containers": [container],
            "volumes": [
                {"name": "spec", "configMap": {"name": spec_config_map_name(model)}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }


def training_job_name(model: str, hash_: str) -> str:
    return child_name(model, f"train-{hash_}")


def retrain_job_name(model: str, request: str, trigger: str = ALERT) -> str:
    """The run that answers ``request``, the value of the Model's annotation for ``trigger``."""
    return child_name(model, f"{trigger}-{hashlib.sha256(request.encode()).hexdigest()[:10]}")


def training_job(
    model: str,
    hash_: str,
    settings: Settings,
    policies: Policies,
    *,
    request: str | None = None,
    trigger: str = ALERT,
) -> dict[str, Any]:
    """One run of `modelyard train` for the spec whose hash is ``hash_``, for a spec change or for a
    ``request`` (the value of the Model's REQUEST_ANNOTATIONS[``trigger``]); it publishes to staging."""
    annotations = {SPEC_HASH_ANNOTATION: hash_}
    if request is None:
        trigger, name = SPEC, training_job_name(model, hash_)
    else:
        annotations[REQUEST_ANNOTATIONS[trigger]] = request
        name = retrain_job_name(model, request, trigger)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": _labels(model, **{TRIGGER_LABEL: trigger}),
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,  # a failed run is reported, not repeated: the gate's verdict does not change
            "activeDeadlineSeconds": policies.training.timeout_seconds,
            "template": _pod_template(model, settings, trigger),
            **_managed_by(settings),
        },
    }


def _managed_by(settings: Settings) -> dict[str, str]:
    return {"managedBy": LOCAL_JOB_MANAGER} if settings.operator.local else {}


def schedule_name(model: str) -> str:
    return child_name(model, "retrain", CRON_JOB_NAME_LIMIT)


SCHEDULE_STARTING_DEADLINE_S = 300  # a time missed longer ago (the controller down) is skipped, not caught up
SCHEDULE_REQUEST_DEADLINE_S = 120  # one annotation write; a pod that takes longer is stuck
# `modelyard request-run`'s exit status when the API server refuses its patch (403): no retry helps, so
# its Job fails at once, and its Failed condition (reason PodFailurePolicy) names the exit code
REQUEST_REFUSED_EXIT_CODE = 3
REQUEST_CONTAINER = "request-run"
# one short `modelyard request-run`: the CLI's imports are most of it
SCHEDULE_REQUEST_RESOURCES = {"requests": {"cpu": "10m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


def schedule_cron_job(model: str, namespace: str, schedule: str, settings: Settings) -> dict[str, Any]:
    """The schedule of ``model``: at each time its pod runs `modelyard request-run`, which sets the Model's
    SCHEDULE_ANNOTATION, and the operator starts the run with the Model's runner (a Job or a KFP run) for
    the spec the Model holds then. The pod trains nothing and reads no Secret: its ServiceAccount
    (``settings.operator.schedule_service_account``) may only patch Models. Its pod takes the training
    pods' labels and security contexts (``settings.operator.training``): the release's selectors find it."""
    pod = settings.operator.training
    labels = {**MANAGED_BY, SCHEDULE_LABEL: model}
    # the release's labels, as a training pod's; the pod is no training pod, though
    pod_labels = {**pod.labels, **labels}
    if COMPONENT_LABEL in pod_labels:
        pod_labels[COMPONENT_LABEL] = "schedule"
    container: dict[str, Any] = {
        "name": REQUEST_CONTAINER,
        "image": settings.pipeline.image,
        "command": ["modelyard"],
        "args": ["request-run", model, "--namespace", namespace],
        # the emptyDir: the only writable path
        "env": [{"name": "MODELYARD_HOME", "value": "/tmp/modelyard"}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
        "resources": SCHEDULE_REQUEST_RESOURCES,
    }
    if pod.container_security_context:
        container["securityContext"] = pod.container_security_context
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": schedule_name(model), "labels": _labels(model)},
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": SCHEDULE_STARTING_DEADLINE_S,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 2,  # a request the API server refused for a moment is asked again
                    "activeDeadlineSeconds": SCHEDULE_REQUEST_DEADLINE_S,
                    "podFailurePolicy": {
                        "rules": [
                            {
                                "action": "FailJob",
                                "onExitCodes": {
                                    "containerName": REQUEST_CONTAINER,
                                    "operator": "In",
                                    "values": [REQUEST_REFUSED_EXIT_CODE],
                                },
                            }
                        ]
                    },
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "restartPolicy": "Never",
                            "serviceAccountName": settings.operator.schedule_service_account,
                            # its token is how it asks: the API server is all it talks to
                            "automountServiceAccountToken": True,
                            "securityContext": pod.security_context,
                            "containers": [container],
                            "volumes": [{"name": "scratch", "emptyDir": {}}],
                        },
                    },
                    **_managed_by(settings),
                },
            },
        },
    }


# What the predictor is told (ServingSettings): the registry's version, and a candidate being rolled out.
MODEL_VERSION_ENV = "MODELYARD_SERVING__MODEL_VERSION"
CANDIDATE_URI_ENV = "MODELYARD_SERVING__CANDIDATE_URI"
CANDIDATE_VERSION_ENV = "MODELYARD_SERVING__CANDIDATE_VERSION"
ROLLOUT_MODE_ENV = "MODELYARD_SERVING__ROLLOUT_MODE"
CANARY_PERCENT_ENV = "MODELYARD_SERVING__CANARY_PERCENT"


def inference_service(
    model: str,
    version: int,
    storage_uri: str,
    settings: Settings,
    policies: Policies,
    *,
    env: list[dict[str, str]] | None = None,
    canary_percent: int | None = None,
) -> dict[str, Any]:
    """The model's InferenceService on the modelyard ServingRuntime, serving ``storage_uri``; ``env`` is
    what the predictor is told of a candidate being rolled out. In Knative mode ``canary_percent``
    is the share of requests Knative sends to the revision this spec makes (KServe's
    canaryTrafficPercent); the rest go to the last revision that took them all."""
    serving = policies.serving
    pod = settings.operator.predictor
    resources = {**pod.resources, **serving.resources.model_dump(exclude_defaults=True)}
    model_block: dict[str, Any] = {
        "modelFormat": {"name": "modelyard", "version": "1"},
        "runtime": settings.operator.runtime,
        "protocolVersion": "v2",
        "storageUri": storage_uri,
    }
    if resources:
        model_block["resources"] = resources
    if pod.container_security_context:
        model_block["securityContext"] = pod.container_security_context
    # the registry's version number labels the predictor's metrics, which the rollout analysis selects by
    model_block["env"] = [{"name": MODEL_VERSION_ENV, "value": str(version)}, *(env or [])]
    predictor: dict[str, Any] = {
        "serviceAccountName": pod.service_account,
        "minReplicas": serving.min_replicas,
        "maxReplicas": serving.max_replicas,
        "scaleMetric": serving.metric.value,
        "scaleTarget": serving.scale_target,
        "securityContext": pod.security_context,
        "automountServiceAccountToken": False,
        "model": model_block,
    }
    if pod.labels:
        predictor["labels"] = pod.labels
    if canary_percent is not None:
        if serving.deployment_mode is not DeploymentMode.KNATIVE:
            raise ValueError(
                "canaryTrafficPercent splits traffic between Knative revisions: Knative mode only"
            )
        predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": model,
            # KServe copies these labels onto the Knative revision: the version is the one it serves
            "labels": _labels(model, **{f"{GROUP}/version": str(version)}),
            "annotations": {
                "serving.kserve.io/deploymentMode": serving.deployment_mode.value,
                **_AUTOSCALER[serving.deployment_mode],
                "serving.kserve.io/enable-prometheus-scraping": "true",
            },
        },
        "spec": {"predictor": predictor},
    }


# KServe's autoscalerClass (hpa, keda, external, none) picks the scaler of a Standard predictor; a
# Knative-mode one is scaled by Knative, whose class annotation KServe passes to the revision (KPA: the
# scale metric is concurrency or rps).
_AUTOSCALER = {
    DeploymentMode.STANDARD: {"serving.kserve.io/autoscalerClass": "hpa"},
    DeploymentMode.KNATIVE: {"autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev"},
}


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Model as the controlling owner: the garbage collector removes a child with its Model."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
