"""KServe's own controller, in Standard (RawDeployment) mode, reconciles an InferenceService with a custom
predictor into a Deployment, a Service and an HPA, and reports it Ready once kwok's pods are."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


def get(control_plane: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        control_plane.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return found


def test_a_custom_predictor_becomes_a_deployment_service_and_hpa_and_gets_ready(
    control_plane: Any, namespace: str
) -> None:
    service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris"},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "scaleMetric": "cpu",
                "scaleTarget": 70,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "modelyard/predictor:test",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    }
                ],
            }
        },
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(service))
    control_plane.kubectl(
        "wait", "--for=condition=Ready", "inferenceservice/iris", "-n", namespace, "--timeout=120s"
    )

    deployment = get(control_plane, "deployment", "iris-predictor", namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "modelyard/predictor:test"
    assert deployment["status"]["readyReplicas"] == 1

    ports = get(control_plane, "service", "iris-predictor", namespace)["spec"]["ports"]
    assert [port["targetPort"] for port in ports] == [8080]

    hpa = get(control_plane, "hpa", "iris-predictor", namespace)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris-predictor"}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70

    status = get(control_plane, "inferenceservice", "iris", namespace)["status"]
    ready = {condition["type"]: condition["status"] for condition in status["conditions"]}
    assert ready["PredictorReady"] == "True"
    assert ready["Ready"] == "True"
