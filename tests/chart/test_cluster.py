"""The chart on a real control plane (scripts/cluster.py: a real API server with RBAC and PodSecurity
admission, kwok's fake nodes, the upstream CRDs and KServe's own controller in Standard mode).

kwok runs no containers: pods become Running and Ready, Job pods Succeeded. Where a pod's work matters it
is run on this machine instead (tests/chart/test_tools.py runs the bucket Job's and the helm test's
scripts against a real S3 gateway and a real predictor).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.deploy import chart
from modelyard.deploy.install import install
from modelyard.deploy.kube import deploy
from modelyard.registry.refs import parse_model_ref
from modelyard.settings import load_settings

from ..conftest import S3Service
from ..serving.conftest import write_tiny_bundle
from .conftest import CASE_IDS, case_values

pytestmark = pytest.mark.cluster
RELEASE = "modelyard"
STANDARD_CASES = ["01-bundled", "02-external", "03-kube-prometheus-stack", "05-keda"]
# What a namespace holds before anything is installed into it.
BUILT_IN = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}


def helm(plane: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plane.bin_dir / "helm"), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def get(plane: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(plane.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    return found


def restricted_namespace(plane: Any) -> str:
    name = f"chart-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", name)
    plane.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    return name


def prepare(plane: Any, namespace: str, values: dict[str, Any]) -> set[tuple[str, str]]:
    """What the cluster provides before an install: volumes for the StatefulSets, the external Secrets.

    Returns the namespaced objects it made, which outlive the release as they outlived none of it."""
    claims = []
    if values.get("postgresql", {}).get("enabled", True):
        claims.append(f"data-{RELEASE}-postgresql-0")
    if values.get("seaweedfs", {}).get("enabled", True):
        claims.append(f"data-{RELEASE}-seaweedfs-0")
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}"},
            "spec": {
                "capacity": {"storage": "20Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": f"/tmp/{namespace}/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        for claim in claims
    ]
    secrets = []
    if external := values.get("externalDatabase", {}).get("existingSecret"):
        key = values["externalDatabase"].get("urlKey", "MODELYARD_DATABASE_URL")
        secrets.append((external, {key: "postgresql+psycopg://u:p@db.example:5432/registry"}))
    if external := values.get("externalS3", {}).get("existingSecret"):
        secrets.append((external, {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}))
    for name, data in secrets:
        volumes.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            }
        )
    if volumes:
        plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(volumes))
    return {("Secret", name) for name, _data in secrets}


def namespaced_objects(plane: Any, namespace: str) -> set[tuple[str, str]]:
    kinds = plane.kubectl("api-resources", "--namespaced", "--verbs=list", "-o", "name").stdout.split()
    listed = plane.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "json", "--ignore-not-found").stdout
    items = json.loads(listed)["items"] if listed.strip() else []
    return {(item["kind"], item["metadata"]["name"]) for item in items if item["kind"] != "Event"}


def remaining_objects(plane: Any, namespace: str, *, allowed: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """What the namespace holds once the garbage collector is done with what an uninstall deleted.

    `helm uninstall --wait` waits for the release's own objects; their dependents (ReplicaSets, Pods, and
    what KServe made for an InferenceService) go afterwards, in the background, as on any cluster.
    """
    deadline = time.monotonic() + 120
    while True:
        left = namespaced_objects(plane, namespace) - BUILT_IN
        if left <= allowed or time.monotonic() > deadline:
            return left
        time.sleep(1)


@pytest.fixture
def plane(control_plane: Any) -> Iterator[Any]:
    yield control_plane


@pytest.mark.parametrize("case", CASE_IDS)
def test_helm_install_waits_for_every_case_in_a_restricted_namespace(plane: Any, case: str) -> None:
    namespace = restricted_namespace(plane)
    values = case_values(case)
    provided = prepare(plane, namespace, values)
    serverless = case not in STANDARD_CASES
    # helm waits for an InferenceService to be Ready; in Serverless mode only Knative's controller, which
    # does not run here, could make it so: that case checks what KServe made of it instead.
    installed = install(
        RELEASE,
        namespace,
        values,
        helm=plane.bin_dir / "helm",
        kubeconfig=plane.kubeconfig,
        timeout="4m",
        wait=not serverless,
    )
    assert (installed.revision, installed.status) == (1, "deployed")
    assert f"kubectl -n {namespace} get inferenceservices" in installed.notes
    expected = {
        (o["kind"], o["metadata"]["name"])
        for o in chart.render(values, release=RELEASE, namespace=namespace)
        if "helm.sh/hook" not in o["metadata"].get("annotations", {}) and o["kind"] != "ClusterServingRuntime"
    }
    assert expected <= namespaced_objects(plane, namespace)
    # Pod Security "restricted" admitted every pod the workloads asked for
    events = plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "violates PodSecurity" not in events
    if serverless:  # helm did not wait: wait for the workloads here
        plane.kubectl(
            "wait", "--for=condition=Available", "deployment", "--all", "-n", namespace, "--timeout=240s"
        )
        plane.kubectl(
            "wait", "--for=jsonpath={.status.readyReplicas}=1", "statefulset", "--all", "-n", namespace,
            "--timeout=240s",
        )  # fmt: skip
    for kind in ("deployment", "statefulset"):
        for item in json.loads(plane.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]:
            assert item["status"].get("readyReplicas") == item["spec"]["replicas"], item["metadata"]["name"]
    defaults = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    model = chart.merge_values(defaults, values)["serving"]["models"][0]
    if serverless:
        # Admitted through KServe's own webhooks with the canary split; KServe hands Knative-mode
        # InferenceServices to Knative, whose controller is not part of this control plane.
        isvc = get(plane, "inferenceservice", model["name"], namespace)
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == model["canaryTrafficPercent"]
    else:
        plane.kubectl(
            "wait",
            "--for=condition=Ready",
            f"inferenceservice/{model['name']}",
            "-n",
            namespace,
            "--timeout=120s",
        )
        deployment = get(plane, "deployment", f"{model['name']}-predictor", namespace)
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "kserve-container")
        assert container["image"] == "ghcr.io/modelyard/modelyard-model-server:0.1.0"
        assert container["readinessProbe"]["httpGet"]["port"] == 8082
        env = {e["name"] for e in container["env"]}
        assert {"MODELYARD_SERVING__METRICS_PORT", "MODELYARD_HOME"} <= env
        assert f"--model_name={model['name']}" in container["args"]
        assert deployment["status"].get("readyReplicas", 0) >= 1
        if case != "05-keda":
            hpa = get(plane, "hpa", f"{model['name']}-predictor", namespace)["spec"]
            assert (hpa["minReplicas"], hpa["maxReplicas"]) == (model["minReplicas"], model["maxReplicas"])
    result = helm(plane, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "2m")
    assert result.returncode == 0, result.stderr
    claims = {("PersistentVolumeClaim", f"data-{RELEASE}-{name}-0") for name in ("postgresql", "seaweedfs")}
    left = remaining_objects(plane, namespace, allowed=claims | provided)
    assert left <= claims | provided, left - claims - provided
    plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_upgrade_changes_only_the_storage_uri_rollback_restores_it_and_helm_test_passes(plane: Any) -> None:
    namespace = restricted_namespace(plane)
    values = case_values("01-bundled")
    prepare(plane, namespace, values)
    helm_binary = plane.bin_dir / "helm"
    install(RELEASE, namespace, values, helm=helm_binary, kubeconfig=plane.kubeconfig, timeout="4m")
    before = get(plane, "inferenceservice", "iris", namespace)
    secret_before = get(plane, "secret", "modelyard-postgresql", namespace)["data"]

    newer = chart.merge_values(
        values, {"serving": {"models": [{**values["serving"]["models"][0], "version": 2}]}}
    )
    upgraded = install(RELEASE, namespace, newer, helm=helm_binary, kubeconfig=plane.kubeconfig, timeout="4m")
    assert upgraded.revision == 2
    after = get(plane, "inferenceservice", "iris", namespace)
    assert after["spec"]["predictor"]["model"]["storageUri"] == "s3://modelyard/iris/2"
    after["spec"]["predictor"]["model"]["storageUri"] = before["spec"]["predictor"]["model"]["storageUri"]
    assert after["spec"] == before["spec"]
    # the generated password survived the upgrade (lookup)
    assert get(plane, "secret", "modelyard-postgresql", namespace)["data"] == secret_before

    result = helm(plane, "rollback", RELEASE, "1", "-n", namespace, "--wait", "--timeout", "4m")
    assert result.returncode == 0, result.stderr
    restored = get(plane, "inferenceservice", "iris", namespace)
    assert restored["spec"]["predictor"]["model"]["storageUri"] == "s3://modelyard/iris/1"

    plane.kubectl("wait", "--for=condition=Ready", "inferenceservice/iris", "-n", namespace, "--timeout=120s")
    result = helm(plane, "test", RELEASE, "-n", namespace, "--timeout", "3m")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "modelyard-test-iris" in result.stdout
    helm(plane, "uninstall", RELEASE, "-n", namespace, "--wait")
    plane.kubectl("delete", "namespace", namespace, "--wait=false")


def _token_kubeconfig(plane: Any, namespace: str, account: str, path: Path) -> Path:
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    token = plane.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": admin["clusters"],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}
                ],
                "current-context": account,
            }
        )
    )
    return path


def test_the_pipeline_account_patches_inference_services_and_reads_no_secrets(
    plane: Any, s3: S3Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`modelyard deploy` with the pipeline ServiceAccount's own token: storageUri follows the registry."""
    namespace = restricted_namespace(plane)
    values = case_values("01-bundled")
    prepare(plane, namespace, values)
    install(
        RELEASE, namespace, values, helm=plane.bin_dir / "helm", kubeconfig=plane.kubeconfig, timeout="4m"
    )
    kubeconfig = _token_kubeconfig(plane, namespace, "modelyard-pipeline", tmp_path / "pipeline.kubeconfig")

    def can_i(*args: str) -> str:
        found = plane.kubectl(
            "auth", "can-i", *args, "-n", namespace, check=False, env={"KUBECONFIG": str(kubeconfig)}
        )
        return found.stdout.strip()

    assert can_i("patch", "inferenceservices.serving.kserve.io") == "yes"
    assert can_i("get", "secrets") == "no"
    assert can_i("list", "secrets") == "no"
    assert can_i("delete", "inferenceservices.serving.kserve.io") == "no"

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3.create_bucket()
    settings = load_settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        store_uri=f"s3://{bucket}",
    )
    from modelyard.publishing import publish_version

    write_tiny_bundle(tmp_path / "bundle", "numeric", name="iris")
    record = publish_version(settings, tmp_path / "bundle")
    deployed = deploy(
        settings, parse_model_ref(f"iris@{record.version}"), namespace=namespace, kubeconfig=kubeconfig
    )
    assert deployed.storage_uri == record.storage_uri
    isvc = get(plane, "inferenceservice", "iris", namespace)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == record.storage_uri
    from modelyard.registry import Registry

    with Registry(settings.database_url) as registry:
        assert registry.get_version("iris", record.version).stage.value == "production"
    helm(plane, "uninstall", RELEASE, "-n", namespace, "--wait")
    plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_kubectl_apply_k_manifests_server_side_on_a_fresh_namespace(plane: Any) -> None:
    prepare(plane, chart.MANIFESTS_NAMESPACE, {})
    result = plane.kubectl("apply", "-k", str(chart.MANIFESTS_DIR), "--server-side")
    assert "inferenceservice.serving.kserve.io/iris serverside-applied" in result.stdout
    plane.kubectl(
        "wait",
        "--for=condition=Complete",
        "job/modelyard-migrate",
        "-n",
        chart.MANIFESTS_NAMESPACE,
        "--timeout=120s",
    )
    plane.kubectl(
        "wait",
        "--for=condition=Ready",
        "inferenceservice/iris",
        "-n",
        chart.MANIFESTS_NAMESPACE,
        "--timeout=120s",
    )
    plane.kubectl("delete", "namespace", chart.MANIFESTS_NAMESPACE, "--wait=false")
