"""The chart's console: a Deployment and Service by default, its predictor URL, and the optional Ingress."""

from __future__ import annotations

from typing import Any

from .conftest import named, rendered

NAME = "modelyard-console"


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    return {item["name"]: item.get("value", "") for item in pod["containers"][0]["env"]}


def test_it_is_deployed_with_a_service_and_posts_to_the_first_models_predictor() -> None:
    objects = rendered("01-bundled")
    service = named(objects, "Service", NAME)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8088, "targetPort": "http"}]
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["command"] == ["modelyard", "console"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = _env(objects)
    assert env["MODELYARD_CONSOLE__HOST"] == "0.0.0.0"
    assert env["MODELYARD_CONSOLE__PREDICTOR_URL"].startswith("http://iris-predictor.")
    assert not [o for o in objects if o["kind"] == "Ingress"]


def test_the_ingress_routes_its_host_to_the_console_service() -> None:
    objects = rendered("02-external")
    assert _env(objects)["MODELYARD_CONSOLE__PREDICTOR_URL"] == "http://iris-predictor.models.svc"
    ingress = named(objects, "Ingress", NAME)["spec"]
    assert ingress["ingressClassName"] == "nginx"
    rule = ingress["rules"][0]
    assert rule["host"] == "models.acme.example"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": NAME, "port": {"name": "http"}}
