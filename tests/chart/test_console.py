"""The chart's console: a Deployment and Service by default, its predictor URL, and the optional Ingress."""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelyard.deploy import chart
from modelyard.errors import ModelyardError

from .conftest import NAMESPACE, RELEASE, case_values, named, rendered

NAME = "modelyard-console"


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    return {item["name"]: item.get("value", "") for item in pod["containers"][0]["env"]}


def test_it_is_deployed_with_a_service_and_posts_to_each_models_predictor() -> None:
    objects = rendered("01-bundled")
    service = named(objects, "Service", NAME)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8088, "targetPort": "http"}]
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["command"] == ["modelyard", "console", "--no-ensure-schema"]
    probe_host = [{"name": "Host", "value": "localhost"}]  # the kubelet's own Host, the pod IP, is refused
    readiness, liveness = pod["containers"][0]["readinessProbe"], pod["containers"][0]["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/healthz", "port": "http", "httpHeaders": probe_host}
    assert liveness["httpGet"] == {"path": "/livez", "port": "http", "httpHeaders": probe_host}
    assert readiness["timeoutSeconds"] == liveness["timeoutSeconds"] == 5
    env = _env(objects)
    assert env["MODELYARD_CONSOLE__HOST"] == "0.0.0.0"
    assert env["MODELYARD_CONSOLE__PREDICTOR_URL"] == f"http://{{name}}-predictor.{NAMESPACE}.svc"
    assert not [o for o in objects if o["kind"] == "Ingress"]
    assert "MODELYARD_CONSOLE__KUBERNETES" not in env  # off by default: no token, no Role
    assert not [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == NAME]


def test_the_ingress_routes_its_host_to_the_console_service() -> None:
    objects = rendered("02-external")
    assert _env(objects)["MODELYARD_CONSOLE__PREDICTOR_URL"] == "http://{name}-predictor.models.svc"
    ingress = named(objects, "Ingress", NAME)["spec"]
    assert ingress["ingressClassName"] == "nginx"
    rule = ingress["rules"][0]
    assert rule["host"] == "models.acme.example"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": NAME, "port": {"name": "http"}}


def _render(case: str, console: dict[str, Any]) -> list[dict[str, Any]]:
    values = chart.merge_values(case_values(case), {"console": console})
    return chart.render(values, release=RELEASE, namespace=NAMESPACE)


def test_it_answers_only_its_own_host_names_and_takes_the_security_settings() -> None:
    env = _env(rendered("02-external"))
    service = f"{NAME}.{NAMESPACE}"
    assert env["MODELYARD_CONSOLE__ALLOWED_HOSTS"].split(",") == [
        "localhost", "127.0.0.1", NAME, service, f"{service}.svc", f"{service}.svc.cluster.local",
        "models.acme.example",
    ]  # fmt: skip
    assert env["MODELYARD_CONSOLE__ACTIONS_ENABLED"] == "true"
    assert env["MODELYARD_CONSOLE__DATA_ROOT"] == ""  # registry data sets only
    changed = _env(
        _render(
            "01-bundled", {"allowedHosts": ["console.corp"], "actionsEnabled": False, "dataRoot": "s3://d/x"}
        )
    )
    assert changed["MODELYARD_CONSOLE__ALLOWED_HOSTS"].endswith(",console.corp")
    assert changed["MODELYARD_CONSOLE__ACTIONS_ENABLED"] == "false"
    assert changed["MODELYARD_CONSOLE__DATA_ROOT"] == "s3://d/x"


def test_its_service_account_reads_model_resources_only_when_asked() -> None:
    objects = rendered("01-bundled")
    account = named(objects, "ServiceAccount", NAME)
    assert account["automountServiceAccountToken"] is False
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (NAME, False)
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"] == NAME]
    reading = _render("01-bundled", {"kubernetes": {"enabled": True}})
    # patch: the Train page asks the operator for a run through the Model's retrain annotation
    assert named(reading, "Role", NAME)["rules"] == [
        {"apiGroups": ["modelyard.io"], "resources": ["models"], "verbs": ["get", "list", "patch"]}
    ]
    read_only = _render("01-bundled", {"kubernetes": {"enabled": True}, "actionsEnabled": False})
    assert named(read_only, "Role", NAME)["rules"][0]["verbs"] == ["get", "list"]
    binding = named(reading, "RoleBinding", NAME)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    pod = named(reading, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert _env(reading)["MODELYARD_CONSOLE__KUBERNETES"] == "true"
    assert _env(reading)["MODELYARD_CONSOLE__NAMESPACE"] == NAMESPACE


def test_its_scratch_space_is_bounded_and_the_ingress_passes_uploads_of_its_limit() -> None:
    objects = rendered("02-external")
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    tmp = next(volume for volume in pod["volumes"] if volume["name"] == "tmp")
    assert tmp["emptyDir"] == {"sizeLimit": "1Gi"}
    annotations = named(objects, "Ingress", NAME)["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "50m"
    assert annotations["nginx.ingress.kubernetes.io/auth-url"] == "https://$host/oauth2/auth"
    own = {"nginx.ingress.kubernetes.io/proxy-body-size": "20m"}
    ingress = {"enabled": True, "host": "m.example", "annotations": own}
    chosen = _render("01-bundled", {"maxUploadMb": 7.5, "ingress": ingress})
    assert named(chosen, "Ingress", NAME)["metadata"]["annotations"] == own  # the user's own value wins
    bigger = _render("01-bundled", {"maxUploadMb": 7.5, "ingress": {"enabled": True, "host": "m.example"}})
    annotations = named(bigger, "Ingress", NAME)["metadata"]["annotations"]
    assert annotations == {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}  # 7.5 MB, rounded up


def test_its_network_policy_admits_the_ingress_controller_and_this_namespace_only() -> None:
    bundled = named(rendered("01-bundled"), "NetworkPolicy", NAME)["spec"]
    assert bundled["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "console"
    assert bundled["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = bundled["ingress"]
    assert rule["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8088}]
    dns, in_namespace = bundled["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert in_namespace == {"to": [{"podSelector": {}}]}
    # an external database and store with no rule for them: egress is left open, not cut off
    external = named(rendered("02-external"), "NetworkPolicy", NAME)["spec"]
    assert external["policyTypes"] == ["Ingress"] and "egress" not in external
    database = {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    console = {"networkPolicy": {"extraEgress": [database]}, "kubernetes": {"enabled": True}}
    listed = _render("02-external", console)
    egress = named(listed, "NetworkPolicy", NAME)["spec"]["egress"]
    assert egress[-1] == database
    assert {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]} in egress


def test_more_than_one_replica_needs_training_outside_the_console() -> None:
    with pytest.raises(
        ModelyardError, match=re.escape("console.replicas above 1 needs console.kubernetes.enabled")
    ):
        _render("01-bundled", {"replicas": 2})
    for allowed in ({"kubernetes": {"enabled": True}}, {"actionsEnabled": False}):
        objects = _render("01-bundled", {"replicas": 2, **allowed})
        assert named(objects, "Deployment", NAME)["spec"]["replicas"] == 2
