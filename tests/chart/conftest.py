"""Shared pieces of the chart tests: the ci values cases, rendered once each, and the upstream schemas."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.deploy import chart

ROOT = chart.ROOT
CASES = chart.ci_values_files()
CASE_IDS = [path.name.removesuffix("-values.yaml") for path in CASES]
# Every Kubernetes minor the chart supports (Chart.yaml: kubeVersion >=1.30.0-0) that
# kubernetes-validate has schemas for.
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(30, 37)]
RELEASE, NAMESPACE = "modelyard", "ml"


def shared_dir() -> Path:
    """The project's shared/ folder: beside the repository (CI), or beside the worktrees' parent."""
    for candidate in (ROOT.parent / "shared", ROOT.parent.parent / "shared"):
        if (candidate / "schemas").is_dir():
            return candidate
    pytest.fail(f"no shared/ folder with schemas/ beside {ROOT} or its parent")


@functools.cache
def case_values(name: str) -> dict[str, Any]:
    return chart.load_values([chart.CHART_DIR / "ci" / f"{name}-values.yaml"])


@functools.cache
def _rendered(name: str, tests: bool) -> tuple[dict[str, Any], ...]:
    return tuple(chart.render(case_values(name), release=RELEASE, namespace=NAMESPACE, tests=tests))


def rendered(name: str, *, tests: bool = True) -> list[dict[str, Any]]:
    """The objects a ci case renders (helm test hooks included unless asked otherwise)."""
    return [json.loads(json.dumps(obj)) for obj in _rendered(name, tests)]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert found, f"no {kind} {name} among {[o['metadata']['name'] for o in of_kind(objects, kind)]}"
    return found[0]


POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec the objects describe, with a label: workloads' templates, and for each
    InferenceService the pod KServe builds from it and the ServingRuntime (the runtime's container
    under the predictor's pod-level fields)."""
    for obj in objects:
        path = POD_TEMPLATE_PATHS.get(obj["kind"])
        if path:
            spec: Any = obj
            for key in path:
                spec = spec[key]
            yield f"{obj['kind']}/{obj['metadata']['name']}", spec
    runtimes = [o for o in objects if o["kind"] in ("ServingRuntime", "ClusterServingRuntime")]
    for isvc in of_kind(objects, "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        runtime = next(r for r in runtimes if r["metadata"]["name"] == predictor["model"]["runtime"])
        container = dict(runtime["spec"]["containers"][0])
        container["resources"] = predictor["model"].get("resources", container.get("resources"))
        pod = {
            "securityContext": predictor.get("securityContext"),
            "containers": [container],
            "volumes": runtime["spec"].get("volumes", []),
        }
        yield f"InferenceService/{isvc['metadata']['name']}", pod


@functools.cache
def custom_resource_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema, closed wherever it does not say it keeps unknown fields."""
    shared = shared_dir()
    files = {
        ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice_serving_v1beta1.json",
        ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime_serving_v1alpha1.json",
        (
            "serving.kserve.io/v1alpha1",
            "ClusterServingRuntime",
        ): "clusterservingruntime_serving_v1alpha1.json",
        ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor_monitoring_v1.json",
        ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_monitoring_v1.json",
        ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_monitoring_v1.json",
    }
    schemas = {key: json.loads((shared / "schemas" / name).read_text()) for key, name in files.items()}
    # KEDA's schema comes whole in its CRD (shared/crds); take the served version's openAPIV3Schema.
    for document in yaml.safe_load_all((shared / "crds" / "keda.sh_scaledobjects.yaml").read_text()):
        if document and document.get("kind") == "CustomResourceDefinition":
            for version in document["spec"]["versions"]:
                key = (f"{document['spec']['group']}/{version['name']}", document["spec"]["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return {key: closed(schema) for key, schema in schemas.items()}


def closed(schema: Any) -> Any:
    """A CRD schema as the API server prunes: ``properties`` without ``additionalProperties`` are closed."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result
