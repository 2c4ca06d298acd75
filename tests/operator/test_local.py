"""`modelyard operator --local`: the README's local story, `kubectl apply -f examples/iris-model.yaml` on a
control plane without KServe's manager, the training Job run here and the predictor served here; and how
a pod's container becomes a local command."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.deploy.kube import custom_objects_api
from modelyard.errors import ModelyardError
from modelyard.operator import children
from modelyard.operator.crd import CHART_CRD, CRD_NAME
from modelyard.operator.kube import JOB, Cluster
from modelyard.operator.local import LocalPods, job_pod_labels, pod_command
from modelyard.registry import Registry
from modelyard.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
MODELYARD = str(Path(sys.executable).parent / "modelyard")
EXAMPLE = ROOT / "examples" / "iris-model.yaml"


def test_a_pods_container_becomes_a_local_command_with_its_volumes_as_folders(tmp_path: Path) -> None:
    job: dict[str, Any] = {
        "metadata": {"name": "iris-train-abc"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {
                    "containers": [
                        {
                            "command": ["modelyard"],
                            "args": ["train", "--spec", "/etc/spec/spec.yaml"],
                            "envFrom": [{"configMapRef": {"name": "settings"}}],
                            "env": [
                                {"name": "HOME_DIR", "value": "/tmp/home"},
                                {
                                    "name": "RUN",
                                    "valueFrom": {
                                        "fieldRef": {
                                            "fieldPath": f"metadata.labels['{children.JOB_NAME_LABEL}']"
                                        }
                                    },
                                },
                                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                                {"name": "UNSET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x"}}},
                            ],
                            "volumeMounts": [
                                {"name": "spec", "mountPath": "/etc/spec"},
                                {"name": "scratch", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "spec", "configMap": {"name": "iris-spec"}},
                        {"name": "scratch", "emptyDir": {}},
                    ],
                },
            }
        },
    }
    maps = {"iris-spec": {"spec.yaml": "name: iris\n"}, "settings": {"STORE": "s3://b"}}
    command = pod_command(
        job["spec"]["template"]["spec"],
        tmp_path,
        job_pod_labels(job),
        maps.get,
        lambda source: maps[source["configMapRef"]["name"]],
        lambda variable: "from-secret" if variable["valueFrom"]["secretKeyRef"]["key"] == "k" else None,
    )
    assert command.argv == [MODELYARD, "train", "--spec", str(tmp_path / "spec" / "spec.yaml")]
    assert (tmp_path / "spec" / "spec.yaml").read_text() == "name: iris\n"
    assert command.env["HOME_DIR"] == str(tmp_path / "scratch" / "home")
    assert command.env["RUN"] == "iris-train-abc"
    assert command.env["SECRET"] == "from-secret"
    assert command.env["STORE"] == "s3://b"
    assert "UNSET" not in command.env

    with pytest.raises(ModelyardError, match="CreateContainerConfigError: configmap iris-spec not found"):
        pod_command(
            job["spec"]["template"]["spec"], tmp_path, {}, lambda _: None, lambda _: {}, lambda _: None
        )


def test_local_mode_refuses_a_control_plane_that_runs_kserve(control_plane: Any, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "MODELYARD_HOME": str(tmp_path)}
    result = subprocess.run(
        [MODELYARD, "operator", "--local", "--namespace", "default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "KServe's manager runs on this control plane" in " ".join(result.stderr.split())
    assert "scripts/cluster.py up --no-kserve" in result.stderr


@pytest.fixture(scope="module")
def bare_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane of its own, without KServe's manager (as `--local` wants it), the CRD applied."""
    path = ROOT / "scripts" / "cluster.py"
    spec = importlib.util.spec_from_file_location("modelyard_test_bare_cluster", path)
    assert spec is not None and spec.loader is not None
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    if subprocess.run(["bash", str(path.parent / "k8s-tools.sh"), "--check"], check=False).returncode != 0:
        pytest.skip("the control plane's tools are not built: run `make k8s-tools`")
    plane = cluster.ControlPlane(tmp_path_factory.mktemp("bare-cluster"), kserve=False)
    plane.start()
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CHART_CRD))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
        yield plane
    finally:
        plane.stop()


def wait_for(what: str, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}; the operator said:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.5)
    return found


@pytest.mark.cluster
@pytest.mark.slow
def test_kubectl_apply_of_the_example_trains_here_publishes_and_serves_on_127_0_0_1(
    bare_control_plane: Any, tmp_path: Path
) -> None:
    namespace = f"local-{uuid.uuid4().hex[:8]}"
    bare_control_plane.create_namespace(namespace)
    database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {
        **os.environ,
        "KUBECONFIG": str(bare_control_plane.kubeconfig),
        "MODELYARD_HOME": str(tmp_path / "home"),
        "MODELYARD_DATABASE_URL": database_url,
        "MODELYARD_OPERATOR__INTERVAL_S": "1",
    }
    data = ROOT / "examples" / "data" / "iris.csv"
    subprocess.run([MODELYARD, "data", "load", str(data), "--name", "iris"], env=env, check=True)
    # the example as it is, but for a search small enough for a test
    model = yaml.safe_load(EXAMPLE.read_text())
    model["spec"].update(
        algorithms=["logistic_regression"],
        search={"strategy": "random", "trials": 2},
        cv_folds=2,
        gate={"min_score": 0.5},
    )
    log = tmp_path / "operator.log"
    with log.open("wb") as output:
        operator = subprocess.Popen(
            [MODELYARD, "operator", "--local", "--namespace", namespace],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        bare_control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model))

        def ready() -> dict[str, Any] | None:
            found = bare_control_plane.kubectl("get", "model", "iris", "-n", namespace, "-o", "json")
            status: dict[str, Any] = json.loads(found.stdout).get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            trained = conditions.get("Trained", {})
            assert trained.get("status") != "False", trained.get("message")
            return status if conditions.get("Ready", {}).get("status") == "True" else None

        status = wait_for("the Model to be Ready", ready, 240, log)
        assert status["servingVersion"] == 1
        assert status["url"].startswith("http://127.0.0.1:")
        with Registry(database_url) as registry:
            (version,) = registry.list_versions("iris")
        assert version.run_id == status["latestRun"]["name"]
        assert version.stage.value == "production"
        job = json.loads(
            bare_control_plane.kubectl(
                "get", "job", status["latestRun"]["name"], "-n", namespace, "-o", "json"
            ).stdout
        )
        assert job["spec"]["managedBy"] == children.LOCAL_JOB_MANAGER
        assert {c["type"]: c["status"] for c in job["status"]["conditions"]}["Complete"] == "True"

        rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
        document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": rows}]}
        request = urllib.request.Request(
            f"{status['url']}/v2/models/iris/infer",
            data=json.dumps(document).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            outputs = json.loads(answer.read())["outputs"]
        labels = next(output for output in outputs if output["datatype"] == "BYTES")["data"]
        assert labels[0] == "setosa"
        said = log.read_text()
        assert f"training {namespace}/{job['metadata']['name']} finished" in said
        assert f"predictor {namespace}/iris serves" in said

        # A run that fails: its Job says Failed, with the exit and the log's end, and so does the Model.
        broken = {**model, "metadata": {"name": "broken"}}
        broken["spec"] = {**model["spec"], "data": {"dataset": "absent"}}
        bare_control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(broken))

        def failed() -> dict[str, Any] | None:
            found = bare_control_plane.kubectl("get", "model", "broken", "-n", namespace, "-o", "json")
            conditions = (json.loads(found.stdout).get("status") or {}).get("conditions", [])
            trained = next((c for c in conditions if c["type"] == "Trained"), None)
            return trained if trained is not None and trained["status"] == "False" else None

        trained = wait_for("the broken Model's Trained=False", failed, 120, log)
        assert trained["reason"] == "TrainingFailed"
        assert "the training process exited 1" in trained["message"]
        assert "absent" in trained["message"]
    finally:
        operator.terminate()
        operator.wait(30)
    assert "predictor" in log.read_text()


@pytest.mark.cluster
def test_a_local_job_whose_program_is_not_there_fails_with_start_error(
    bare_control_plane: Any, tmp_path: Path
) -> None:
    """The training thread raises (Popen: no such program): the Job is Failed with the error, not left
    active for ever."""
    namespace = f"local-{uuid.uuid4().hex[:8]}"
    bare_control_plane.create_namespace(namespace)
    container = {"name": "train", "image": "modelyard/trainer:test", "command": ["modelyard-no-such-program"]}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "nothere", "labels": {children.MODEL_LABEL: "nothere"}},
        "spec": {
            "backoffLimit": 0,
            "managedBy": children.LOCAL_JOB_MANAGER,
            "template": {"metadata": {}, "spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }
    bare_control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    cluster = Cluster(custom_objects_api(Path(bare_control_plane.kubeconfig)).api_client)
    settings = load_settings().model_copy(update={"home": tmp_path})
    said: list[str] = []
    pods = LocalPods(settings, cluster, said.append)
    created = cluster.get(JOB, "nothere", namespace)
    assert created is not None
    pods.on_job(created)

    def failed() -> dict[str, Any] | None:
        found = cluster.get(JOB, "nothere", namespace) or {}
        conditions = {c["type"]: c for c in (found.get("status") or {}).get("conditions") or []}
        return conditions.get("Failed")

    deadline = time.monotonic() + 30
    while (condition := failed()) is None:
        assert time.monotonic() < deadline, f"the Job was not failed; the operator said: {said}"
        time.sleep(0.2)
    assert (condition["status"], condition["reason"]) == ("True", "StartError")
    assert condition["message"].startswith("FileNotFoundError: ")
    assert "modelyard-no-such-program" in condition["message"]
    assert said[-1].startswith(f"training {namespace}/nothere could not run: FileNotFoundError: ")
