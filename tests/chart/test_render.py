"""The chart offline: lint, schema, every rendered object valid on every supported Kubernetes, Pod Security
"restricted", resources everywhere, and the behaviour each values case asks for."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest

from modelyard.deploy import chart
from modelyard.errors import InvalidInput
from modelyard.settings import ServingSettings

from .conftest import (
    CASE_IDS,
    CASES,
    KUBE_VERSIONS,
    case_values,
    custom_resource_schemas,
    named,
    of_kind,
    pod_specs,
    rendered,
)

BUILT_IN_GROUPS = ("v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1")


def test_every_case_is_present() -> None:
    assert CASE_IDS == [
        "01-bundled",
        "02-external",
        "03-kube-prometheus-stack",
        "04-knative-canary",
        "05-keda",
    ]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_helm_lint_strict(case: Any, kube_version: str) -> None:
    report = helm_python.lint(
        chart.CHART_DIR, chart.load_values([case]), strict=True, kube_version=f"v{kube_version}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def _unique_built_in_objects() -> list[tuple[str, dict[str, Any]]]:
    """Built-in objects of every case, each distinct one once (most are the same in several cases)."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for case in CASE_IDS:
        for obj in rendered(case):
            if obj["apiVersion"] in BUILT_IN_GROUPS:
                seen.setdefault(json.dumps(obj, sort_keys=True), (case, obj))
    return list(seen.values())


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_built_in_objects_are_valid_on_every_supported_kubernetes(kube_version: str) -> None:
    objects = _unique_built_in_objects()
    assert {obj["kind"] for _, obj in objects} >= {
        "Deployment",
        "StatefulSet",
        "Job",
        "CronJob",
        "Secret",
    }
    for case, obj in objects:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{case} on {kube_version}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")


@pytest.mark.parametrize("case", CASE_IDS)
def test_custom_resources_match_their_upstream_schemas_with_unknown_fields_rejected(case: str) -> None:
    schemas = custom_resource_schemas()
    custom = [o for o in rendered(case) if o["apiVersion"] not in BUILT_IN_GROUPS]
    assert custom
    for obj in custom:
        schema = schemas.get((obj["apiVersion"], obj["kind"]))
        assert schema is not None, f"no schema for {obj['apiVersion']} {obj['kind']}"
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, [
            f"{obj['kind']}/{obj['metadata']['name']} {list(e.path)}: {e.message}" for e in errors
        ]


def test_the_closed_schema_catches_a_misspelt_field() -> None:
    schema = custom_resource_schemas()[("serving.kserve.io/v1beta1", "InferenceService")]
    isvc = of_kind(rendered("01-bundled"), "InferenceService")[0]
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(isvc)]
    assert any("storageURI" in message for message in messages), messages


# ---------------------------------------------------------------- Pod Security "restricted"


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" (v1.30+) checks that a pod spec alone decides."""
    problems = []
    pod_context = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= {
            "configMap",
            "secret",
            "emptyDir",
            "persistentVolumeClaim",
            "projected",
            "downwardAPI",
            "ephemeral",
            "csi",
        }:
            problems.append(f"volume {volume['name']} is of kind {kinds}")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        context = container.get("securityContext") or {}
        name = container["name"]
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in (context.get("capabilities") or {}).get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set((context.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = (context.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}")
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize("case", CASE_IDS)
def test_every_pod_passes_pod_security_restricted(case: str) -> None:
    pods = list(pod_specs(rendered(case)))
    assert any(label.startswith("InferenceService/") for label, _ in pods)
    failures = {label: restricted_violations(pod) for label, pod in pods}
    assert not {label: problems for label, problems in failures.items() if problems}


def test_the_restricted_check_catches_a_root_container() -> None:
    pod = {"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]}
    assert restricted_violations(pod) == [
        "c: allowPrivilegeEscalation is not false",
        "c: capabilities do not drop ALL",
        "c: runAsNonRoot is not true",
        "c: runs as uid 0",
        "c: seccompProfile is None",
    ]


@pytest.mark.parametrize("case", CASE_IDS)
def test_every_container_has_cpu_and_memory_requests_and_limits(case: str) -> None:
    for label, pod in pod_specs(rendered(case)):
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), (
                    f"{label} {container['name']} {bound}"
                )


# ---------------------------------------------------------------- serving


def test_the_runtime_probes_and_scrapes_the_servers_own_port() -> None:
    runtime = named(rendered("01-bundled"), "ServingRuntime", "modelyard")
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8082}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8082}
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert "--model_name={{.Name}}" in container["args"]
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "modelyard"
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELYARD_SERVING__METRICS_PORT"]["value"] == "8082"
    assert env["MODELYARD_SERVING__MAX_BATCH_SIZE"]["value"] == "256"
    assert env["MODELYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "modelyard-database",
        "key": "MODELYARD_DATABASE_URL",
    }


def test_the_runtime_can_fetch_a_rollouts_candidate_from_the_store() -> None:
    """KServe gives the S3 Secret to its storage initializer only; the server fetches a candidate itself."""
    for case in ("01-bundled", "02-external"):
        objects = rendered(case)
        runtime = next(o for o in objects if o["kind"] in ("ServingRuntime", "ClusterServingRuntime"))
        container = runtime["spec"]["containers"][0]
        config = named(objects, "ConfigMap", "modelyard-config")
        assert container["envFrom"] == [{"configMapRef": {"name": "modelyard-config"}}]
        assert {"AWS_ENDPOINT_URL", "AWS_REGION"} <= set(config["data"])
        # the Secret the storage initializer reads, through the predictors' ServiceAccount
        keys = named(objects, "ServiceAccount", "modelyard-serving")["secrets"][0]["name"]
        assert keys == {"01-bundled": "modelyard-s3", "02-external": "models-s3"}[case]
        env = {e["name"]: e for e in container["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": keys, "key": key}


def test_every_serving_setting_in_the_schema_is_a_real_setting() -> None:
    """The chart sets MODELYARD_SERVING__<KEY>; a key the server lacks would fail its start."""
    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    keys = schema["properties"]["serving"]["properties"]["settings"]["properties"]
    values = {
        key: {"integer": 2, "number": 1.5, "boolean": True, "string": "auto"}[s["type"]]
        for key, s in keys.items()
    }
    runtime = named(chart.render({"serving": {"settings": values}}), "ServingRuntime", "modelyard")
    names = [e["name"] for e in runtime["spec"]["containers"][0]["env"]]
    fields = {f"MODELYARD_SERVING__{field.upper()}" for field in ServingSettings.model_fields}
    assert (
        not {n for n in names if n.startswith("MODELYARD_SERVING__")}
        - fields
        - {"MODELYARD_SERVING__METRICS_PORT"}
    )
    assert len([n for n in names if n.startswith("MODELYARD_SERVING__")]) == len(keys) + 2


def test_a_registry_reference_resolves_where_publishing_puts_the_bundle() -> None:
    objects = rendered("02-external")
    assert named(objects, "InferenceService", "iris")["spec"]["predictor"]["model"]["storageUri"] == (
        "s3://acme-models/modelyard/iris/4"
    )
    # publishing writes <store>/<name>/<version>/ (publishing.publish_version)
    assert named(objects, "InferenceService", "churn")["spec"]["predictor"]["model"]["storageUri"] == (
        "s3://acme-models/modelyard/churn/2"
    )


def test_standard_mode_uses_kserves_hpa_fields() -> None:
    isvc = named(rendered("01-bundled"), "InferenceService", "iris")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)
    assert predictor["serviceAccountName"] == "modelyard-serving"
    assert predictor["labels"]["app.kubernetes.io/instance"] == "modelyard"


def test_knative_mode_scales_to_zero_on_concurrency_with_a_canary() -> None:
    predictor = named(rendered("04-knative-canary"), "InferenceService", "iris")["spec"]["predictor"]
    assert predictor["minReplicas"] == 0
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 8)
    assert predictor["canaryTrafficPercent"] == 10


def test_keda_mode_scales_on_the_request_rate_and_kserve_makes_no_hpa() -> None:
    objects = rendered("05-keda")
    isvc = named(objects, "InferenceService", "iris")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert "scaleMetric" not in isvc["spec"]["predictor"]
    scaled = named(objects, "ScaledObject", "iris-predictor")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "iris-predictor"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 6)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == "http://modelyard-prometheus.ml.svc:9090"
    assert 'modelyard_requests_total{namespace="ml", inferenceservice="iris"}' in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "50"


# ---------------------------------------------------------------- credentials, data, monitoring, pipelines


def test_bundled_services_get_generated_secrets_and_the_pipelines_names() -> None:
    objects = rendered("01-bundled")
    secrets = {s["metadata"]["name"]: s for s in of_kind(objects, "Secret")}
    assert set(secrets) == {"modelyard-postgresql", "modelyard-database", "modelyard-s3", "modelyard-grafana"}
    assert secrets["modelyard-s3"]["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == (
        "modelyard-seaweedfs.ml.svc:8333"
    )
    config = named(objects, "ConfigMap", "modelyard-config")["data"]
    assert config["MODELYARD_STORE_URI"] == "s3://modelyard"
    assert config["AWS_ENDPOINT_URL"] == "http://modelyard-seaweedfs.ml.svc:8333"
    assert config["MODELYARD_PIPELINE__S3_SECRET"] == "modelyard-s3"
    assert config["MODELYARD_PIPELINE__DATABASE_SECRET"] == "modelyard-database"
    assert config["MODELYARD_PIPELINE__NAMESPACE"] == "ml"
    serving_account = named(objects, "ServiceAccount", "modelyard-serving")
    assert serving_account["secrets"] == [{"name": "modelyard-s3"}]
    postgres = named(objects, "StatefulSet", "modelyard-postgresql")
    probe = postgres["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready"
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "checksum/config" in postgres["spec"]["template"]["metadata"]["annotations"]


def test_external_services_put_no_secret_value_in_the_release() -> None:
    objects = rendered("02-external")
    assert of_kind(objects, "Secret") == [named(objects, "Secret", "modelyard-grafana")]
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    config = named(objects, "ConfigMap", "modelyard-config")["data"]
    assert config["MODELYARD_STORE_URI"] == "s3://acme-models/modelyard"
    assert config["MODELYARD_PIPELINE__DATABASE_SECRET"] == "registry-database"
    migrate = named(objects, "Job", "modelyard-migrate")
    env = {e["name"]: e for e in migrate["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "registry-database",
        "key": "url",
    }
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "models-s3"


def test_migrations_run_as_a_post_install_and_post_upgrade_hook() -> None:
    migrate = named(rendered("01-bundled"), "Job", "modelyard-migrate")
    annotations = migrate["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == ["modelyard", "db", "upgrade"]


def test_network_policies_admit_only_the_release_to_postgres_and_the_object_store() -> None:
    objects = rendered("01-bundled")
    for component, port in (("postgresql", 5432), ("seaweedfs", 8333)):
        policy = named(objects, "NetworkPolicy", f"modelyard-{component}")["spec"]
        assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        (rule,) = policy["ingress"]
        assert rule["from"] == [
            {
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/name": "modelyard",
                        "app.kubernetes.io/instance": "modelyard",
                    }
                }
            }
        ]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_the_pipeline_role_may_patch_inference_services_and_nothing_more() -> None:
    role = named(rendered("01-bundled"), "Role", "modelyard-pipeline")
    assert role["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["patch"]}
    ]
    cron = named(rendered("01-bundled"), "CronJob", "modelyard-train-iris")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modelyard-pipeline"
    assert pod["containers"][0]["command"][-1] == "--auto-deploy"


def test_kube_prometheus_stack_mode_has_labelled_monitors_rules_and_dashboards() -> None:
    objects = rendered("03-kube-prometheus-stack")
    deployments = [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]
    assert deployments == ["modelyard-console", "modelyard-operator"], "no bundled Prometheus or Grafana"
    monitor = named(objects, "PodMonitor", "modelyard-predictors")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["podMetricsEndpoints"][0]["portNumber"] == 8082
    rule = named(objects, "PrometheusRule", "modelyard")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"]
    dashboards = named(objects, "ConfigMap", "modelyard-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["data"]


def test_helm_test_calls_each_model_through_its_service() -> None:
    tests = [o for o in rendered("02-external") if o["metadata"]["name"].startswith("modelyard-test-")]
    assert [(t["kind"], t["metadata"]["name"]) for t in tests] == [
        ("Job", "modelyard-test-iris"),
        ("Job", "modelyard-test-churn"),
    ]
    container = tests[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_URL"] == "http://iris-predictor.ml.svc"
    assert container["command"] == ["python", "/opt/modelyard-test/helm-test.py"]
    assert tests[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    untested = chart.render(case_values("02-external"))
    assert not [o for o in untested if o["metadata"]["name"].startswith("modelyard-test")]


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"serving": {"deploymentMode": "Serverless"}}, "deploymentMode"),
        ({"serving": {"settings": {"maxBatchSze": 3}}}, "additional properties 'maxBatchSze' not allowed"),
        ({"serving": {"models": [{"name": "Iris!"}]}}, "name"),
        ({"postgresql": {"enabled": False}}, "existingSecret"),
        ({"seaweedfs": {"enabled": False}}, "existingSecret"),
        (
            {"serving": {"autoscaling": {"engine": "kpa", "metric": "concurrency"}}},
            'serving.autoscaling.engine "kpa" needs serving.deploymentMode Knative',
        ),
        (
            {"serving": {"deploymentMode": "Knative"}},
            'serving.autoscaling.engine "hpa": Knative scales with kpa',
        ),
        (
            {"serving": {"autoscaling": {"metric": "rps"}}},
            'serving.autoscaling.metric "rps": the HPA scales on cpu or memory',
        ),
        (
            {"serving": {"models": [{"name": "a", "version": 1}, {"name": "a", "version": 2}]}},
            'serving.models: "a" is listed twice',
        ),
        (
            {"serving": {"models": [{"name": "a", "version": 1, "minReplicas": 0}]}},
            "serving.models[a]: minReplicas 0 (scale to zero) needs serving.deploymentMode Knative",
        ),
        (
            {"serving": {"models": [{"name": "a", "version": 1, "canaryTrafficPercent": 20}]}},
            "serving.models[a]: canaryTrafficPercent needs serving.deploymentMode Knative",
        ),
        (
            {"serving": {"models": [{"name": "a", "version": 1, "minReplicas": 3, "maxReplicas": 2}]}},
            "serving.models[a]: maxReplicas 2 is below minReplicas 3",
        ),
        ({"serving": {"models": [{"name": "a"}]}}, "serving.models[a]: give storageUri or version"),
        (
            {"prometheus": {"enabled": False}, "serving": {"autoscaling": {"engine": "keda"}}},
            "serving.autoscaling.engine keda needs prometheus.enabled or grafana.prometheusUrl",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_problem(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        chart.render(values)
    assert message in str(caught.value)


def test_a_new_model_version_changes_the_storage_uri_and_nothing_else() -> None:
    values = case_values("01-bundled")
    model = values["serving"]["models"][0]
    newer = chart.merge_values(values, {"serving": {"models": [{**model, "version": 2}]}})

    def comparable(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for obj in objects:  # generated passwords (and checksums over them) differ on every render
            if obj["kind"] == "Secret":
                obj["data"] = dict.fromkeys(obj["data"], "<generated>")
            obj.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).pop(
                "checksum/config", None
            )
        return objects

    before, after = comparable(chart.render(values)), comparable(chart.render(newer))
    changed = [(a["kind"], a["metadata"]["name"]) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [("InferenceService", "iris")]
    isvc = next(o for o in after if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://modelyard/iris/2"
    isvc["spec"]["predictor"]["model"]["storageUri"] = "s3://modelyard/iris/1"
    assert isvc == next(o for o in before if o["kind"] == "InferenceService")


def test_the_operator_runs_for_the_release_namespace_with_a_role_of_its_own() -> None:
    objects = rendered("01-bundled")
    deployment = named(objects, "Deployment", "modelyard-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modelyard-operator"
    (container,) = pod["containers"]
    assert container["args"][:2] == ["operator", f"--namespace={deployment['metadata']['namespace']}"]
    env = {item["name"]: item for item in container["env"]}
    assert env["MODELYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    assert json.loads(env["MODELYARD_OPERATOR__TRAINING"]["value"])["service_account"] == "modelyard-jobs"
    assert env["MODELYARD_OPERATOR__PROMETHEUS_URL"]["value"] == "http://modelyard-prometheus.ml.svc:9090"
    assert env["MODELYARD_OPERATOR__SCRAPE_INTERVAL_S"]["value"] == "15"
    role = named(objects, "Role", "modelyard-operator")
    resources = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert "secrets" not in resources
    verbs = {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}
    assert verbs["models/finalizers"] == {"update"}  # ownerReferences with blockOwnerDeletion
    assert verbs["models/status"] == {"get", "update"}
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        ({"prometheus": {"scrapeInterval": "500ms"}}, "0.5"),
        ({"prometheus": {"scrapeInterval": "2m"}}, "120"),
        ({"prometheusOperator": {"podMonitor": {"enabled": True, "interval": "30s"}}}, "30"),
    ],
)
def test_the_operator_knows_the_scrape_interval_its_analyses_span(
    values: dict[str, Any], seconds: str
) -> None:
    deployment = named(chart.render(values), "Deployment", "modelyard-operator")
    env = {item["name"]: item for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELYARD_OPERATOR__SCRAPE_INTERVAL_S"]["value"] == seconds


def test_the_operator_can_be_left_out() -> None:
    objects = chart.render({"operator": {"enabled": False}})
    assert not [o for o in objects if o["metadata"]["name"].endswith("-operator")]
