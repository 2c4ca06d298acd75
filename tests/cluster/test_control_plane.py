"""The local control plane behaves as a real cluster: CRD schemas, RBAC, PodSecurity admission, the
deployment and job controllers with kwok's nodes, and the server-side apply that large CRDs need."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


def manifest(*objects: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


def inference_service(name: str, predictor: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor} if predictor else {},
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {
                "minReplicas": 1,
                "scaleMetric": "gpu",
                "containers": [{"name": "kserve-container", "image": "x"}],
            },
            'spec.predictor.scaleMetric: Unsupported value: "gpu": supported values: "cpu", "memory", '
            '"concurrency", "rps"',
        ),
        (
            {"scaleMetricType": "Percent", "containers": [{"name": "kserve-container", "image": "x"}]},
            'spec.predictor.scaleMetricType: Unsupported value: "Percent": supported values: '
            '"Utilization", "Value", "AverageValue"',
        ),
        # Not an InferenceService without a predictor: KServe's defaulting webhook, which the API server
        # calls before it checks the schema, panics on that one (v0.20.0).
    ],
    ids=["scaleMetric", "scaleMetricType"],
)
def test_an_inference_service_its_crd_schema_rejects_gets_the_api_servers_message(
    control_plane: Any, namespace: str, spec: dict[str, Any], message: str
) -> None:
    created = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", stdin=json.dumps(inference_service("bad", spec)), check=False
    )
    assert created.returncode == 1
    assert 'The InferenceService "bad" is invalid' in created.stderr
    assert message in created.stderr


def test_a_service_account_without_a_role_is_denied(control_plane: Any, namespace: str) -> None:
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:reader"
    asked = control_plane.kubectl(
        "auth", "can-i", "list", "pods", "-n", namespace, f"--as={user}", check=False
    )
    assert (asked.returncode, asked.stdout.strip()) == (1, "no")

    token = control_plane.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    status, body = api_get(control_plane, f"/api/v1/namespaces/{namespace}/pods", token)
    assert status == 403
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        f'pods is forbidden: User "{user}" cannot list resource "pods" in API group "" '
        f'in the namespace "{namespace}"'
    )

    # The same token is let in once a Role allows it: the 403 was RBAC's answer, not a bad token.
    control_plane.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    control_plane.kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    asked = control_plane.kubectl(
        "auth", "can-i", "list", "pods", "-n", namespace, f"--as={user}", check=False
    )
    assert (asked.returncode, asked.stdout.strip()) == (0, "yes")
    status, body = api_get(control_plane, f"/api/v1/namespaces/{namespace}/pods", token)
    assert (status, body["kind"]) == (200, "PodList")


def api_get(control_plane: Any, path: str, token: str) -> tuple[int, dict[str, Any]]:
    """GET from the API server as the bearer of ``token`` (and no client certificate)."""
    config = json.loads(control_plane.kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    request = urllib.request.Request(cluster["server"] + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_pod_security_restricted_rejects_a_privileged_pod(control_plane: Any, namespace: str) -> None:
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "securityContext": {"privileged": True}}]
        },
    }
    created = control_plane.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(pod), check=False)
    assert created.returncode == 1
    assert 'pods "privileged" is forbidden: violates PodSecurity "restricted:latest"' in created.stderr
    assert 'privileged (container "app" must not set securityContext.privileged=true)' in created.stderr


def test_a_deployment_rolls_out_to_available_on_the_fake_nodes(control_plane: Any, namespace: str) -> None:
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
        },
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest(deployment))
    control_plane.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
    control_plane.kubectl(
        "wait", "--for=condition=Available", "deployment/web", "-n", namespace, "--timeout=30s"
    )
    status = json.loads(control_plane.kubectl("get", "deployment/web", "-n", namespace, "-o", "json").stdout)
    assert status["status"]["readyReplicas"] == 2
    pods = json.loads(
        control_plane.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout
    )
    assert {pod["status"]["phase"] for pod in pods["items"]} == {"Running"}
    assert {pod["spec"]["nodeName"] for pod in pods["items"]} <= {"kwok-node-0", "kwok-node-1"}


def test_a_job_completes(control_plane: Any, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "completions": 2,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox"}]},
            },
        },
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest(job))
    control_plane.kubectl("wait", "--for=condition=Complete", "job/once", "-n", namespace, "--timeout=90s")
    status = json.loads(control_plane.kubectl("get", "job/once", "-n", namespace, "-o", "json").stdout)
    assert status["status"]["succeeded"] == 2


def test_the_inference_service_crd_applies_server_side_and_not_client_side(control_plane: Any) -> None:
    crd = control_plane.crds_dir / "serving.kserve.io_inferenceservices.yaml"
    assert crd.stat().st_size > 1_000_000
    client_side = control_plane.kubectl("apply", "--dry-run=server", "-f", str(crd), check=False)
    assert client_side.returncode == 1
    assert "metadata.annotations: Too long: may not be more than 262144 bytes" in client_side.stderr
    server_side = control_plane.kubectl(
        "apply", "--server-side", "--field-manager=modelyard-cluster", "-f", str(crd)
    )
    assert server_side.stdout.strip() == (
        "customresourcedefinition.apiextensions.k8s.io/inferenceservices.serving.kserve.io serverside-applied"
    )
