"""The chart's retrain webhook: rendered as Alertmanager's receiver, and its pod's command run on this
machine (kwok runs no containers) with the specs its ConfigMap holds."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from ..monitoring.conftest import free_ports, http_json, spawn, wait_until
from .conftest import named, rendered

NAME = "modelyard-retrain-webhook"


def test_it_is_rendered_only_when_enabled() -> None:
    assert not [o for o in rendered("02-external") if o["metadata"]["name"] == NAME]
    objects = rendered("01-bundled")
    service = named(objects, "Service", NAME)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8090, "targetPort": "http"}]
    pod = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modelyard-pipeline" and pod["automountServiceAccountToken"] is True
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["command"][-1] == "--auto-deploy"
    specs = next(v for v in pod["volumes"] if v["name"] == "specs")
    assert specs["configMap"]["name"] == "modelyard-specs"


def test_the_pods_command_serves_alertmanager_with_the_specs_of_its_config_map(tmp_path: Path) -> None:
    objects = rendered("01-bundled")
    container = named(objects, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "specs")
    specs = tmp_path / "specs"
    specs.mkdir()
    for file_name, text in named(objects, "ConfigMap", "modelyard-specs")["data"].items():
        (specs / file_name).write_text(text)
    assert yaml.safe_load((specs / "iris.yaml").read_text())["name"] == "iris"
    (port,) = free_ports(1)
    command = container["command"]
    assert command[0] == "modelyard"
    # the pod's arguments, but for where this machine keeps the specs, and loopback for the address
    arguments = [
        str(specs) if value == mount else "127.0.0.1" if value == "0.0.0.0" else value
        for value in command[1:]
    ]
    arguments[arguments.index("--port") + 1] = str(port)
    env = {"MODELYARD_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    migrate = spawn([sys.executable, "-m", "modelyard", "db", "upgrade"], tmp_path / "migrate.log", env)
    assert migrate.process.wait(120) == 0, migrate.log()
    webhook = spawn([sys.executable, "-m", "modelyard", *arguments], tmp_path / "webhook.log", env)
    try:
        base = f"http://127.0.0.1:{port}"
        probe = container["readinessProbe"]["httpGet"]["path"]
        wait_until(lambda: http_json(base + probe)[0] == 200, "the readiness probe", 60, webhook.process)
        status, answer = http_json(f"{base}/alerts", {"version": "4", "status": "firing", "alerts": []})
        assert (status, answer) == (400, {"error": "groupKey: missing"})
        assert "models ['iris']" in webhook.log()
    finally:
        webhook.stop()
