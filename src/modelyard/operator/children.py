"""The objects a Model owns, as plain manifests: its spec's ConfigMap, a training Job (and the CronJob of
its schedule), and its InferenceService.

Names are derived from the Model and what they run, so creating one twice finds the first (a 409) rather
than a duplicate: a handler may run again after a crash and do no harm. The training pod mirrors the
pipeline's components: the same image, the registry and object-store settings from the same Secrets and
ConfigMap, and the restricted Pod Security profile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from modelyard.operator.resource import GROUP, KIND, VERSION, Policies
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

MODEL_LABEL = f"{GROUP}/model"
TRIGGER_LABEL = f"{GROUP}/trigger"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
# Set on a Model (by the retrain webhook, or by hand) to ask for one run; a new value asks again.
RETRAIN_ANNOTATION = f"{GROUP}/retrain-requested"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelyard-operator"}
SPEC_MOUNT = "/etc/modelyard/spec"
SPEC_FILE = "spec.yaml"


def spec_hash(spec: ModelSpec) -> str:
    """What a training run depends on: a change retrains, a change of serving or rollout policy does not."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def _labels(model: str, **extra: str) -> dict[str, str]:
    return {**MANAGED_BY, MODEL_LABEL: model, **extra}


def spec_config_map_name(model: str) -> str:
    return f"{model[:50]}-spec"


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

    def from_secret(variable: str, secret: str) -> dict[str, Any]:
        ref = {"name": secret, "key": variable, "optional": True}
        return {"name": variable, "valueFrom": {"secretKeyRef": ref}}

    def from_config(variable: str) -> dict[str, Any]:
        ref = {"name": pipeline.config_map, "key": variable, "optional": True}
        return {"name": variable, "valueFrom": {"configMapKeyRef": ref}}

    return [
        from_secret("MODELYARD_DATABASE_URL", pipeline.database_secret),
        from_secret("AWS_ACCESS_KEY_ID", pipeline.s3_secret),
        from_secret("AWS_SECRET_ACCESS_KEY", pipeline.s3_secret),
        from_config("MODELYARD_STORE_URI"),
        from_config("AWS_ENDPOINT_URL"),
        from_config("AWS_REGION"),
        {"name": "MODELYARD_HOME", "value": "/tmp/modelyard"},  # the emptyDir: the only writable path
    ]


def _pod_template(model: str, settings: Settings, policies: Policies, trigger: str) -> dict[str, Any]:
    container = {
        "name": "train",
        "image": settings.pipeline.image,
        "command": ["modelyard"],
        "args": ["train", "--spec", f"{SPEC_MOUNT}/{SPEC_FILE}", "--in-process", "--json"],
        "env": _env(settings),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "metadata": {"labels": _labels(model, **{TRIGGER_LABEL: trigger})},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": settings.operator.training_service_account,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "spec", "configMap": {"name": spec_config_map_name(model)}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }


def training_job_name(model: str, hash_: str) -> str:
    return f"{model[:44]}-train-{hash_}"


def retrain_job_name(model: str, request: str) -> str:
    return f"{model[:44]}-alert-{hashlib.sha256(request.encode()).hexdigest()[:10]}"


def training_job(
    model: str, hash_: str, settings: Settings, policies: Policies, *, request: str | None = None
) -> dict[str, Any]:
    """One run of `modelyard train` for the spec whose hash is ``hash_``, for a spec change or for a
    retraining ``request`` (the Model's RETRAIN_ANNOTATION); it publishes to staging."""
    trigger = "spec" if request is None else "alert"
    annotations = {SPEC_HASH_ANNOTATION: hash_}
    if request is not None:
        annotations[RETRAIN_ANNOTATION] = request
    name = training_job_name(model, hash_) if request is None else retrain_job_name(model, request)
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
            "template": _pod_template(model, settings, policies, trigger),
        },
    }


def schedule_name(model: str) -> str:
    return f"{model[:44]}-retrain"


def training_cron_job(model: str, schedule: str, settings: Settings, policies: Policies) -> dict[str, Any]:
    """The schedule's runs: each one trains the spec the ConfigMap holds at that moment."""
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": schedule_name(model), "labels": _labels(model)},
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {"labels": _labels(model, **{TRIGGER_LABEL: "schedule"})},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": policies.training.timeout_seconds,
                    "template": _pod_template(model, settings, policies, "schedule"),
                },
            },
        },
    }


def inference_service(
    model: str, version: int, storage_uri: str, settings: Settings, policies: Policies
) -> dict[str, Any]:
    """The model's InferenceService on the modelyard ServingRuntime, serving ``storage_uri``."""
    serving = policies.serving
    resources = serving.resources.model_dump(exclude_defaults=True)
    model_block: dict[str, Any] = {
        "modelFormat": {"name": "modelyard", "version": "1"},
        "runtime": settings.operator.runtime,
        "protocolVersion": "v2",
        "storageUri": storage_uri,
    }
    if resources:
        model_block["resources"] = resources
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": model,
            "labels": _labels(model, **{f"{GROUP}/version": str(version)}),
            "annotations": {
                "serving.kserve.io/deploymentMode": "Standard",
                "serving.kserve.io/autoscalerClass": "hpa",
                "serving.kserve.io/enable-prometheus-scraping": "true",
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": serving.min_replicas,
                "maxReplicas": serving.max_replicas,
                "scaleMetric": serving.scale_metric.value,
                "scaleTarget": serving.scale_target,
                "automountServiceAccountToken": False,
                "model": model_block,
            }
        },
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
