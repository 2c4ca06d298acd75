"""`modelyard operator --local`: the README's local story, `kubectl apply -f examples/iris-model.yaml` on a
control plane without KServe's manager, the training Job run here and the predictor served here, and a
second version rolled out on analyses from the Prometheus `--local` starts; how a pod's container becomes
a local command; and where `--local`'s analyses come from."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
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
from modelyard.operator.analysis import Prometheus
from modelyard.operator.crd import CHART_CRD, CRD_NAME
from modelyard.operator.kube import JOB, Cluster
from modelyard.operator.local import (
    PREDICTOR_PID_FILE,
    PREDICTORS_JOB,
    TARGETS_FILE,
    LocalOperatorRunning,
    LocalPods,
    _Predictor,
    analysis_prometheus,
    claim_workdir,
    job_pod_labels,
    local_prometheus_config,
    pod_command,
    stop_local,
)
from modelyard.processes import answers_ok, record_pid, recorded_pid, stop_leftover
from modelyard.registry import Registry
from modelyard.settings import Settings, load_settings

from ..conftest import waiting_process

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
        # a second operator on the same home would share its targets file and Prometheus: refused
        second = subprocess.run(
            [MODELYARD, "operator", "--local", "--namespace", "default"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        workdir = tmp_path / "home" / "operator-local"
        expected = (
            f"another `modelyard operator --local` (pid {operator.pid}) works in {workdir}: one runs per"
        )
        # the console folds a long path anywhere, so the message is compared without its whitespace
        assert "".join(expected.split()) in "".join(second.stderr.split()), second.stderr
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
        # the run went through kfp.local, as `modelyard train` on a laptop: its pipeline log is under the
        # run's folder, with the tasks kfp.local ran
        run_folder = workdir / namespace / job["metadata"]["name"]
        (kfp_log,) = run_folder.glob("scratch/modelyard/pipelines/runs/iris-*/kfp.log")
        assert f"pipeline log: {kfp_log}" in (run_folder / "pod.log").read_text().replace("\n", "")
        kfp_said = re.sub(r"\x1b\[[0-9;]*m", "", kfp_log.read_text())  # kfp.local colours task names
        assert "Task 'publish' finished with status SUCCESS" in kfp_said, kfp_said[-2000:]
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
@pytest.mark.slow
def test_a_schedule_asks_for_a_run_under_local_and_the_operator_trains_it_here(
    bare_control_plane: Any, tmp_path: Path
) -> None:
    """The schedule's request Job (made from its CronJob as the CronJob controller would at its time, as
    `kubectl create job --from=cronjob/...` does) runs here with the operator's KUBECONFIG: its
    `modelyard request-run` asks the API server, and the operator starts the run (trigger schedule), which
    trains here and publishes."""
    namespace = f"local-{uuid.uuid4().hex[:8]}"
    bare_control_plane.create_namespace(namespace)
    database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {
        **os.environ,
        "KUBECONFIG": str(bare_control_plane.kubeconfig),
        "MODELYARD_HOME": str(tmp_path / "home"),
        "MODELYARD_DATABASE_URL": database_url,
        "MODELYARD_OPERATOR__INTERVAL_S": "1",
        # kfp.local is the kubectl-apply test's; one process is faster
        "MODELYARD_OPERATOR__LOCAL_IN_PROCESS": "true",
        "MODELYARD_PIPELINE__TUNE_JOBS": "1",  # and one CV process (no worker processes to start)
    }
    data = ROOT / "examples" / "data" / "iris.csv"
    subprocess.run([MODELYARD, "data", "load", str(data), "--name", "iris"], env=env, check=True)
    model = yaml.safe_load(EXAMPLE.read_text())
    model["metadata"]["name"] = "nightly"
    model["spec"].update(
        algorithms=["logistic_regression"],
        search={"strategy": "random", "trials": 2},
        cv_folds=2,
        gate={"min_score": 0.5},
    )
    assert model["spec"]["training"]["schedule"]
    log = tmp_path / "operator.log"

    def get(kind: str, name: str) -> dict[str, Any]:
        found = bare_control_plane.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return dict(json.loads(found.stdout)) if found.returncode == 0 else {}

    def trained_by(run: str) -> dict[str, Any] | None:
        status = get("model", "nightly").get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        trained = conditions.get("Trained", {})
        assert trained.get("status") != "False", trained.get("message")
        latest = status.get("latestRun") or {}
        return status if trained.get("status") == "True" and latest.get("name", "").startswith(run) else None

    with log.open("wb") as output:
        operator = subprocess.Popen(
            [MODELYARD, "operator", "--local", "--namespace", namespace],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        bare_control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model))
        status_before = wait_for("the spec's run trained", lambda: trained_by("nightly-train-"), 240, log)
        cron = children.schedule_name("nightly")
        assert get("cronjob", cron)["spec"]["schedule"] == model["spec"]["training"]["schedule"]
        bare_control_plane.kubectl("create", "job", "asked-now", f"--from=cronjob/{cron}", "-n", namespace)

        status = wait_for("the scheduled run trained", lambda: trained_by("nightly-schedule-"), 240, log)
        run = status["latestRun"]
        requested = get("model", "nightly")["metadata"]["annotations"][children.SCHEDULE_ANNOTATION]
        assert (run["trigger"], run["request"]) == ("schedule", requested)
        with Registry(database_url) as registry:
            versions = registry.list_versions("nightly")
        assert [version.run_id for version in versions] == [run["name"], status_before["latestRun"]["name"]]

        def request_complete() -> bool:
            conditions = (get("job", "asked-now").get("status") or {}).get("conditions") or []
            return {c["type"]: c["status"] for c in conditions}.get("Complete") == "True"

        wait_for("the request Job Complete", request_complete, 60, log)
        assert f"schedule request {namespace}/asked-now finished" in " ".join(log.read_text().split())
    finally:
        operator.terminate()
        operator.wait(30)
    # every predictor it started was stopped with it, one still starting too (its pid file goes with it)
    assert not list((tmp_path / "home" / "operator-local").glob(f"*/*-predictor/{PREDICTOR_PID_FILE}"))


@pytest.mark.cluster
def test_local_pods_claim_their_home_stop_what_a_killed_operator_left_and_keep_no_predictor_after_stop(
    bare_control_plane: Any, tmp_path: Path
) -> None:
    cluster = Cluster(custom_objects_api(Path(bare_control_plane.kubeconfig)).api_client)
    settings = load_settings().model_copy(update={"home": tmp_path})
    folder = tmp_path / "operator-local" / "default" / "iris-predictor"
    folder.mkdir(parents=True)
    argument = f"--model-dir={folder / 'bundles' / '1'}"
    leftover = waiting_process(argument)
    record_pid(folder / PREDICTOR_PID_FILE, leftover, argument)
    other = tmp_path / "operator-local" / "default" / "other-predictor"
    other.mkdir()
    stranger = waiting_process("--model-dir=/elsewhere")  # its pid file's pid, reused by another program
    record_pid(other / PREDICTOR_PID_FILE, stranger, f"--model-dir={other / 'bundles' / '1'}")
    said: list[str] = []
    pods = LocalPods(settings, cluster, said.append)
    try:
        assert leftover.wait(30) == -signal.SIGTERM
        assert said == [f"stopped a predictor (pid {leftover.pid}, {folder}) that an earlier operator left"]
        assert stranger.poll() is None, "a process that is not the predictor recorded was stopped"
        assert not (folder / PREDICTOR_PID_FILE).exists()
        with pytest.raises(LocalOperatorRunning, match=f"pid {os.getpid()}"):
            LocalPods(settings, cluster, said.append)

        # a predictor that becomes ready once stop() has stopped the others is stopped too, not listed
        pods.stop()
        late = waiting_process()
        pid_file = folder / PREDICTOR_PID_FILE
        pid_file.write_text("")
        predictor = _Predictor(("uri", ()), late, "http://127.0.0.1:1", folder / "log", 2, pid_file)
        assert pods._adopt("default", "iris", predictor) is False
        assert late.poll() == -signal.SIGTERM
        assert not pid_file.exists()
        assert json.loads(pods.targets_file.read_text()) == []
        # stopped, it keeps its home until what else works there (its Prometheus) has stopped too
        with pytest.raises(LocalOperatorRunning, match=f"pid {os.getpid()}"):
            LocalPods(settings, cluster, said.append)
        stop_local(pods, None)
        stop_local(LocalPods(settings, cluster, said.append), None)  # its home is free again
    finally:
        stop_local(pods, None)
        for process in (leftover, stranger):
            process.kill()
            process.communicate()


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


# ---------------------------------------------------------------- rollouts under --local


def with_operator(settings: Settings, **values: Any) -> Settings:
    return settings.model_copy(update={"operator": settings.operator.model_copy(update=values)})


def test_local_analyses_use_a_given_prometheus_which_is_told_where_the_targets_are(tmp_path: Path) -> None:
    settings = with_operator(
        load_settings().model_copy(update={"home": tmp_path}), prometheus_url="http://prometheus.example:9090"
    )
    said: list[str] = []
    used, server = analysis_prometheus(settings, "prometheus", said.append)
    assert server is None
    assert used.operator.prometheus_url == "http://prometheus.example:9090"
    assert said == [
        "rollouts are analysed from Prometheus at http://prometheus.example:9090, which is to scrape the "
        f"local predictors listed in {tmp_path / 'operator-local' / TARGETS_FILE} (a file_sd_configs file)"
    ]


def test_local_without_a_prometheus_says_that_later_versions_wait_in_staging(tmp_path: Path) -> None:
    settings = with_operator(load_settings().model_copy(update={"home": tmp_path}), prometheus_url="")
    said: list[str] = []
    used, server = analysis_prometheus(settings, None, said.append)
    assert (server, used.operator.prometheus_url) == (None, "")
    assert said == [
        "rollouts are not analysed: MODELYARD_OPERATOR__PROMETHEUS_URL is unset and no prometheus program is "
        "on PATH, so every version after the first waits in staging (CandidateWaiting) until promoted by hand"
    ]


def test_a_local_prometheus_that_exits_is_an_error_with_its_log(tmp_path: Path) -> None:
    settings = with_operator(load_settings().model_copy(update={"home": tmp_path}), prometheus_url="")
    program = tmp_path / "prometheus"
    program.write_text("#!/bin/sh\necho 'err=\"parsing YAML file\"'\nexit 3\n")
    program.chmod(0o755)
    said: list[str] = []
    with pytest.raises(ModelyardError) as raised:
        analysis_prometheus(settings, str(program), said.append)
    config = tmp_path / "operator-local" / "prometheus" / "prometheus.yml"
    assert (
        raised.value.message == f'{program} ({config}) exited 3 before it was ready: err="parsing YAML file"'
    )
    assert said == []


def test_a_prometheus_a_killed_operator_left_is_stopped_by_the_next_start_and_each_has_fresh_data(
    tmp_path: Path, prometheus_binary: str
) -> None:
    settings = with_operator(load_settings().model_copy(update={"home": tmp_path}), prometheus_url="")
    _, left = analysis_prometheus(settings, prometheus_binary, lambda _: None)
    assert left is not None  # and never stopped, as by an operator killed with SIGKILL
    _, server = analysis_prometheus(settings, prometheus_binary, lambda _: None)
    assert server is not None
    try:
        assert left.process.wait(30) is not None
        assert not left.data.exists(), "the killed operator's series would be read again"
        assert server.data.is_dir() and server.data != left.data
        assert answers_ok(f"{server.url}/-/ready")
    finally:
        server.stop()
        left.process.kill()  # when the test failed: not left running by it
        left.process.wait()
    assert not server.data.exists()
    assert not server.pid_file.exists()


def test_a_local_prometheus_stopped_late_leaves_the_pid_file_of_the_one_that_replaced_it(
    tmp_path: Path, prometheus_binary: str
) -> None:
    """An operator's Prometheus is stopped as a leftover by the next start on its folder, which records
    its own pid; the first one's stop, late, must not remove that record, or the second Prometheus
    outlives its operator unfound when that one is killed."""
    settings = with_operator(load_settings().model_copy(update={"home": tmp_path}), prometheus_url="")
    _, first = analysis_prometheus(settings, prometheus_binary, lambda _: None)
    assert first is not None
    _, second = analysis_prometheus(settings, prometheus_binary, lambda _: None)
    assert second is not None
    try:
        assert first.process.wait(30) is not None
        first.stop()
        assert recorded_pid(second.pid_file) == (
            second.process.pid,
            f"--config.file={second.pid_file.parent / 'prometheus.yml'}",
        )
        # the second operator killed: the next start finds its Prometheus
        assert stop_leftover(second.pid_file) == second.process.pid
        assert second.process.wait(30) is not None
    finally:
        second.stop()
        first.process.kill()
        first.process.wait()
    assert not second.pid_file.exists()


def test_a_second_local_operator_on_the_same_home_is_refused_naming_the_folder_and_the_first(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "operator-local"
    held = claim_workdir(workdir)
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from modelyard.operator.local import claim_workdir\n"
                "try:\n    claim_workdir(Path(sys.argv[1]))\n"
                "except Exception as exc:\n    sys.exit(exc.message)",
                str(workdir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        held.close()
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"another `modelyard operator --local` (pid {os.getpid()}) works in {workdir}: one runs per "
        "MODELYARD_HOME; stop it, or give this one a MODELYARD_HOME of its own"
    )
    claim_workdir(workdir).close()  # free once the first has gone


def test_the_local_prometheus_config_scrapes_the_targets_file_as_often_as_the_analyses_expect(
    tmp_path: Path, promtool_binary: str
) -> None:
    settings = with_operator(load_settings().model_copy(update={"home": tmp_path}), scrape_interval_s=1.5)
    targets = tmp_path / TARGETS_FILE
    config = local_prometheus_config(settings, targets)
    assert config["global"]["scrape_interval"] == "1500ms"
    assert config["scrape_configs"] == [
        {"job_name": PREDICTORS_JOB, "file_sd_configs": [{"files": [str(targets)]}]}
    ]
    written = tmp_path / "prometheus.yml"
    written.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [promtool_binary, "check", "config", str(written)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


ROLLOUT = {
    "shadow": True,
    "canary_steps": [50],
    "interval_seconds": 5,
    "analyses_per_step": 1,
    "failure_limit": 1,
    "inconclusive_limit": 20,
    "progress_deadline_seconds": 180,
    # request times on a busy test machine say nothing of the candidate: not what this test judges
    "thresholds": {"max_latency_p95_ratio": 50},
}


class Load:
    """Predictions of the iris rows at ``url``, as fast as one thread sends them, until stopped; a request
    refused while a rollout step restarts the predictor is counted and sent again. Each request holds a
    row of each species (the file's thirds), so however a canary splits the requests, both versions see
    the same mix of rows and a good candidate's predicted-class mix is the stable one's."""

    def __init__(self, url: str, rows: list[list[float]]) -> None:
        self.url = url
        self.rows = rows
        self.answered = 0
        self.refused = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        third = len(self.rows) // 3
        sent = 0
        while not self.stopped.is_set():
            batch = [self.rows[species * third + sent % third] for species in range(3)]
            sent += 1
            document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [3, 4], "data": batch}]}
            request = urllib.request.Request(
                f"{self.url}/v2/models/iris/infer",
                data=json.dumps(document).encode(),
                headers={"Content-Type": "application/json", "x-request-id": uuid.uuid4().hex},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    answer.read()
                self.answered += 1
            except (urllib.error.URLError, OSError):
                self.refused += 1
                self.stopped.wait(0.2)  # the predictor is restarting: not a busy loop meanwhile

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(30)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_second_version_is_rolled_out_under_local_on_analyses_from_the_prometheus_it_starts(
    bare_control_plane: Any, tmp_path: Path, prometheus_binary: str
) -> None:
    namespace = f"local-{uuid.uuid4().hex[:8]}"
    bare_control_plane.create_namespace(namespace)
    database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key != "MODELYARD_OPERATOR__PROMETHEUS_URL"}
    env.update(
        KUBECONFIG=str(bare_control_plane.kubeconfig),
        MODELYARD_HOME=str(home),
        MODELYARD_DATABASE_URL=database_url,
        MODELYARD_OPERATOR__INTERVAL_S="1",
        MODELYARD_OPERATOR__SCRAPE_INTERVAL_S="1",
        MODELYARD_OPERATOR__LOCAL_IN_PROCESS="true",  # kfp.local is the kubectl-apply test's
        MODELYARD_PIPELINE__TUNE_JOBS="1",  # one CV process: no worker processes to start
        PATH=f"{Path(prometheus_binary).parent}:{os.environ.get('PATH', '')}",
    )
    data = ROOT / "examples" / "data" / "iris.csv"
    subprocess.run([MODELYARD, "data", "load", str(data), "--name", "iris"], env=env, check=True)
    model = yaml.safe_load(EXAMPLE.read_text())
    model["spec"].update(
        algorithms=["logistic_regression"],
        search={"strategy": "random", "trials": 2},
        cv_folds=2,
        gate={"min_score": 0.5, "compare_to_production": False},
        rollout=ROLLOUT,
    )
    rows = [
        [float(value) for value in line.split(",")[:4]] for line in data.read_text().splitlines()[1:] if line
    ]
    targets_file = home / "operator-local" / TARGETS_FILE
    log = tmp_path / "operator.log"
    with log.open("wb") as output:
        operator = subprocess.Popen(
            [MODELYARD, "operator", "--local", "--namespace", namespace],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        announced = re.compile(r"Prometheus at (\S+)\s+scrapes")
        started = wait_for("the local Prometheus", lambda: announced.search(log.read_text()), 60, log)
        prometheus = Prometheus(started.group(1))
        bare_control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model))

        def status() -> dict[str, Any]:
            found = bare_control_plane.kubectl("get", "model", "iris", "-n", namespace, "-o", "json")
            return dict(json.loads(found.stdout).get("status") or {})

        def serving(version: int) -> dict[str, Any] | None:
            now = status()
            conditions = {c["type"]: c for c in now.get("conditions", [])}
            assert conditions.get("Trained", {}).get("status") != "False", conditions["Trained"]
            ready = conditions.get("Ready", {}).get("status") == "True"
            return now if ready and now.get("servingVersion") == version else None

        first = wait_for("version 1 served", lambda: serving(1), 300, log)
        url = first["url"]
        # the predictor's metrics endpoint, labelled as the chart's scrape config labels a predictor pod
        (target,) = json.loads(targets_file.read_text())
        assert target["labels"]["namespace"] == namespace
        assert target["labels"]["inferenceservice"] == "iris"
        assert target["labels"]["pod"].startswith("iris-predictor-local-")
        (address,) = target["targets"]
        assert address.startswith("127.0.0.1:") and address != url.removeprefix("http://")
        selector = f'job="{PREDICTORS_JOB}",namespace="{namespace}",inferenceservice="iris"'
        wait_for("the first scrape", lambda: prometheus.scalar(f"max(up{{{selector}}})") == 1, 60, log)

        with Load(url, rows) as load:
            bare_control_plane.kubectl(
                "patch", "model", "iris", "-n", namespace, "--type=merge", "-p", '{"spec": {"cv_folds": 3}}'
            )
            analyses: dict[str, dict[str, Any]] = {}  # each step's, by when it ran

            def ended() -> dict[str, Any] | None:
                now = status()
                if "lastAnalysis" in now:
                    analyses[now["lastAnalysis"]["at"]] = now["lastAnalysis"]
                state = (now.get("rollout") or {}).get("state")
                return now if state in ("Promoted", "RolledBack") else None

            promoted = wait_for("version 2 promoted", ended, 420, log)
            assert promoted["rollout"]["state"] == "Promoted", promoted["rollout"]
        assert load.answered > 0
        assert promoted["lastAnalysis"]["candidate"] == 2
        seen = list(analyses.values())
        assert {analysis["verdict"] for analysis in seen} == {"pass"}, seen
        measured = {
            check["name"] for analysis in seen for check in analysis["checks"] if check["value"] is not None
        }
        # the shadow step's agreement, the canary's class mix: what the predictor exported, as scraped
        assert {"agreement", "class_mix_js_distance"} <= measured, seen
        events = json.loads(
            bare_control_plane.kubectl(
                "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=iris", "-o", "json"
            ).stdout
        )["items"]
        reasons = {event["reason"] for event in events}
        assert {"RolloutStarted", "RolloutStep", "Promoted"} <= reasons, reasons
        with Registry(database_url) as registry:
            production = registry.production("iris")
        assert production is not None and production.version == 2

        after = wait_for("version 2 served", lambda: serving(2), 120, log)
        assert after["url"] == url, "a rollout step moved the predictor to another URL"

        # version 2's predictor alone is scraped (the canary's series go stale with its target, which
        # may still answer a moment after servingVersion says 2), and it is the one target listed
        def version_2_alone() -> list[dict[str, Any]] | None:
            live = prometheus.query(f"modelyard_model_ready{{{selector}}} == 1")
            listed = [entry["labels"]["pod"] for entry in json.loads(targets_file.read_text())]
            scraped = [(row["metric"]["version"], row["metric"]["pod"]) for row in live]
            return live if len(listed) == 1 and scraped == [("2", listed[0])] else None

        (live,) = wait_for("version 2's predictor alone scraped and listed", version_2_alone, 120, log)
        assert live["metric"]["pod"] != target["labels"]["pod"]
        # on a metrics address of its own, as a new pod's: a scrape of a step's target after it was removed
        # would otherwise reach the next step's process and give its series the removed pod's label
        (listed,) = json.loads(targets_file.read_text())
        assert listed["targets"] != [address], listed
        # each step's predictor was a new target
        ready = prometheus.query(f"max by (pod) (max_over_time(modelyard_model_ready{{{selector}}}[30m]))")
        pods = {row["metric"]["pod"] for row in ready}
        assert len(pods) == 4, pods  # version 1's, the shadow step's, the canary's, version 2's
    finally:
        operator.terminate()
        operator.wait(60)
    said = log.read_text()
    assert json.loads(targets_file.read_text()) == [], said[-3000:]
    assert not answers_ok(f"{prometheus.url}/-/ready"), "the local Prometheus outlived the operator"
