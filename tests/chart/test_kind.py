"""End to end on a kind cluster (`make kind-up`): both images build, the chart installs, a model answers a
V2 request through its Service, an upgrade to a new version and a rollback roll it, and helm test passes.

Needs docker, kind, kubectl and helm: the `kind` marker skips it unless TEST_KIND=1.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.kind
NAMESPACE = "modelyard"


def sh(*command: str, timeout: float = 900) -> str:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize(
    ("dockerfile", "tag"),
    [
        ("model-server/Dockerfile", "modelyard-model-server:kind-test"),
        ("images/modelyard/Dockerfile", "modelyard:kind-test"),
    ],
)
def test_docker_build(dockerfile: str, tag: str) -> None:
    sh("docker", "build", "-f", dockerfile, "-t", tag, ".")
    user = sh("docker", "image", "inspect", tag, "--format", "{{.Config.User}}").strip()
    assert user == "1000:0"


def _storage_uri() -> str:
    found = sh("kubectl", "-n", NAMESPACE, "get", "inferenceservice", "iris", "-o", "json")
    uri: str = json.loads(found)["spec"]["predictor"]["model"]["storageUri"]
    return uri


def test_install_ready_infer_upgrade_rollback_helm_test(tmp_path: Path) -> None:
    sh("make", "kind-up", timeout=1800)
    sh("kubectl", "-n", NAMESPACE, "wait", "--for=condition=Ready", "inferenceservice/iris", "--timeout=600s")
    forward = subprocess.Popen(
        ["kubectl", "-n", NAMESPACE, "port-forward", "service/iris-predictor", "18080:80"], cwd=ROOT
    )
    try:
        time.sleep(3)
        with urllib.request.urlopen("http://127.0.0.1:18080/v2/models/iris", timeout=10) as response:
            inputs = json.loads(response.read())["inputs"]
        body = {
            "inputs": [
                {"name": i["name"], "datatype": i["datatype"], "shape": [1], "data": [1.0]} for i in inputs
            ]
        }
        request = urllib.request.Request(
            "http://127.0.0.1:18080/v2/models/iris/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["outputs"]
    finally:
        forward.terminate()
    chart = str(ROOT / "charts" / "modelyard")
    newer = tmp_path / "newer.yaml"
    newer.write_text("serving:\n  models:\n    - {name: iris, version: 2, minReplicas: 1, maxReplicas: 3}\n")
    sh("helm", "upgrade", "modelyard", chart, "-n", NAMESPACE, "-f", str(newer), "--wait")
    assert _storage_uri().endswith("/iris/2")
    sh("helm", "rollback", "modelyard", "1", "-n", NAMESPACE, "--wait")
    assert _storage_uri().endswith("/iris/1")
    sh("helm", "test", "modelyard", "-n", NAMESPACE, "--timeout", "5m")
