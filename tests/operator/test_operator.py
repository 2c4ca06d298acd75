"""`modelyard operator` on the real control plane: a Model is trained by a Job, its version published to a
real registry and S3, and served through an InferenceService that KServe's own controller reconciles.

kwok runs no containers, so the training pod's command runs here, as kubelet would run it: with the
command, arguments and environment the Job holds (each secretKeyRef and configMapKeyRef read from the
namespace), its ConfigMap volume written to a folder and its emptyDir a folder of its own. The operator
is a real process too, killed and started again mid-run.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.deploy import chart
from modelyard.errors import NotFound
from modelyard.operator import children
from modelyard.operator.kube import job_finished
from modelyard.operator.local import pod_command
from modelyard.processes import answers_ok
from modelyard.registry import Registry

from ..conftest import S3Service
from .conftest import StalledKfp

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
IRIS = ROOT / "examples" / "data" / "iris.csv"
MODELYARD = str(Path(sys.executable).parent / "modelyard")

SERVING_RUNTIME = {
    "apiVersion": "serving.kserve.io/v1alpha1",
    "kind": "ServingRuntime",
    "metadata": {"name": "modelyard"},
    "spec": {
        "supportedModelFormats": [{"name": "modelyard", "version": "1", "autoSelect": True}],
        "protocolVersions": ["v2"],
        "containers": [
            {
                "name": "kserve-container",
                "image": "modelyard/predictor:test",
                "args": ["--model_dir=/mnt/models"],
            }
        ],
    },
}


def iris_model(name: str = "iris", **spec: Any) -> dict[str, Any]:
    body = {
        "data": {"path": str(IRIS)},
        "target": "species",
        "algorithms": ["logistic_regression"],
        "search": {"strategy": "random", "trials": 2},
        "cv_folds": 2,
        "gate": {"min_score": 0.5},
        **spec,
    }
    return {"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": body}


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float = 90.0,
    poll: float = 0.5,
    seen: Callable[[], Any] | None = None,
) -> Any:
    """``check``'s first truthy answer; on timeout, the error names ``what`` and what ``seen`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"; saw {seen()}" if seen else ""))
        time.sleep(poll)


class Harness:
    """The namespace's objects, the operator's process and the registry of one test."""

    def __init__(self, plane: Any, namespace: str, tmp: Path, s3: S3Service) -> None:
        self.plane, self.namespace, self.tmp = plane, namespace, tmp
        self.database_url = f"sqlite:///{tmp / 'registry.db'}"
        self.bucket = s3.create_bucket()
        self.s3 = s3
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = tmp / "operator.log"

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        return self.plane.kubectl(*args, "-n", self.namespace, stdin=stdin, check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def apply(self, document: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(document))

    def install_settings(self) -> None:
        """What the chart gives a namespace: the registry and S3 Secrets, the config, the runtime."""
        secrets = {
            "modelyard-database": {"MODELYARD_DATABASE_URL": self.database_url},
            "modelyard-s3": {
                "AWS_ACCESS_KEY_ID": self.s3.env()["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": self.s3.env()["AWS_SECRET_ACCESS_KEY"],
            },
        }
        for name, data in secrets.items():
            self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
        config = {
            "MODELYARD_STORE_URI": f"s3://{self.bucket}/models",
            "AWS_ENDPOINT_URL": self.s3.endpoint_url,
            "AWS_REGION": self.s3.env()["AWS_REGION"],
            # one CV process: on a tiny iris, starting scikit-learn's worker processes takes seconds
            # longer than the fits they would share
            "MODELYARD_PIPELINE__TUNE_JOBS": "1",
        }
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "modelyard-config"},
                "data": config,
            }
        )
        self.apply(SERVING_RUNTIME)

    def start_operator(self, kubeconfig: Path | None = None, **settings: str) -> None:
        """The operator, with ``settings`` (MODELYARD_ variables) beside the test's own."""
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.plane.kubeconfig),
            "MODELYARD_DATABASE_URL": self.database_url,
            "MODELYARD_HOME": str(self.tmp / "operator-home"),
            "MODELYARD_OPERATOR__INTERVAL_S": "1",
            "MODELYARD_OPERATOR__SCRAPE_INTERVAL_S": "1",  # the test Prometheus' (monitoring/conftest.py)
            "MODELYARD_LOG_LEVEL": "DEBUG",  # a line per reconcile, which wait_reconciled counts
            **settings,
        }
        log = self.operator_log.open("ab")
        self.operator = subprocess.Popen(
            [MODELYARD, "operator", "--namespace", self.namespace],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_operator(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        assert self.operator is not None
        self.operator.send_signal(signal.SIGKILL)
        self.operator.wait(10)
        self.operator = None

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.terminate()
            try:
                self.operator.wait(15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
            self.operator = None

    def operator_alive(self) -> bool:
        return self.operator is not None and self.operator.poll() is None

    def reconciles(self, name: str) -> int:
        """How many reconciles of the Model ``name`` the operators of this test have finished."""
        if not self.operator_log.exists():
            return 0
        return self.operator_log.read_text(errors="replace").count(
            f"reconciled Model {self.namespace}/{name}"
        )

    def wait_reconciled(self, name: str, times: int = 3) -> None:
        """Wait for ``times`` more finished reconciles of ``name``: what must not happen had its chances."""
        start = self.reconciles(name)
        wait_until(
            f"{times} more reconciles of {name}", lambda: self.reconciles(name) >= start + times, poll=0.2
        )

    def model(self, name: str) -> dict[str, Any]:
        found = self.get("model", name)
        assert found is not None, f"Model {name} is gone"
        return found

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for condition in (self.model(name).get("status") or {}).get("conditions", []):
            if condition["type"] == type_:
                return dict(condition)
        return None

    def wait_for_condition(
        self, name: str, type_: str, timeout: float = 90.0, **expected: str
    ) -> dict[str, Any]:
        """The Model's condition ``type_`` once each field of ``expected`` (status, reason) has its value."""
        found: dict[str, Any] = wait_until(
            f"{type_} {expected}",
            lambda: (
                (c := self.condition(name, type_)) is not None
                and all(c.get(key) == value for key, value in expected.items())
                and c
            ),
            timeout=timeout,
            seen=lambda: self.condition(name, type_),
        )
        return found

    def jobs(self, model: str) -> list[dict[str, Any]]:
        found = self.kubectl("get", "jobs", "-l", f"modelyard.io/model={model}", "-o", "json")
        items: list[dict[str, Any]] = json.loads(found.stdout)["items"]
        return items

    def events(self, name: str) -> list[dict[str, Any]]:
        found = self.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        items: list[dict[str, Any]] = json.loads(found.stdout)["items"]
        return items

    def run_job(
        self, job: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the Job's pod here, labelled as the Job controller labels it (with the Job's name); ``env``
        overrides what the pod's own env says."""
        template = job["spec"]["template"]
        labels = {
            **template["metadata"].get("labels", {}),
            "batch.kubernetes.io/job-name": job["metadata"]["name"],
        }
        return self.run_pod(template["spec"], workdir, labels, env or {})

    def run_pod(
        self, pod_spec: dict[str, Any], workdir: Path, labels: dict[str, str], overrides: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """Run the pod's one container here, as kubelet would, to its end."""
        argv, env = self.container_process(pod_spec, workdir, labels, overrides)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    def container_process(
        self,
        pod_spec: dict[str, Any],
        workdir: Path,
        labels: dict[str, str],
        overrides: dict[str, str],
        entrypoint: list[str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The command and environment of the pod's one container, as kubelet would start it: its volumes
        as folders, its env resolved (a Secret, ConfigMap or key it names that is missing fails it, as
        CreateContainerConfigError). ``entrypoint`` stands for the image's, for a container without a
        command."""

        def config_map(name: str) -> dict[str, str] | None:
            found = self.get("configmap", name)
            return None if found is None else found.get("data", {})

        def env_from(source: dict[str, Any]) -> dict[str, str]:
            name = source["configMapRef"]["name"]
            data = config_map(name)
            assert data is not None, f"CreateContainerConfigError: configmap {name} not found"
            return data

        def value_from(variable: dict[str, Any]) -> str | None:
            source = variable["valueFrom"]
            if "secretKeyRef" in source:
                ref, kind = source["secretKeyRef"], "secret"
            else:
                ref, kind = source["configMapKeyRef"], "configmap"
            data = (self.get(kind, ref["name"]) or {}).get("data", {})
            if ref["key"] not in data:
                missing = f"CreateContainerConfigError: {kind} {ref['name']} lacks {ref['key']}"
                assert ref.get("optional"), missing
                return None
            value = data[ref["key"]]
            return base64.b64decode(value).decode() if kind == "secret" else str(value)

        command = pod_command(pod_spec, workdir, labels, config_map, env_from, value_from, entrypoint)
        return command.argv, {**command.env, **overrides}


@pytest.fixture
def own_harness(model_crd: Any, namespace: str, tmp_path: Path, s3: S3Service) -> Iterator[Harness]:
    """A namespace and an operator of the test's own: for a test that restarts it, or with other settings."""
    found = Harness(model_crd, namespace, tmp_path, s3)
    found.install_settings()
    found.start_operator()
    yield found
    found.stop_operator()
    if os.environ.get("CI") == "true" or not found.operator_log.exists():
        return
    print(found.operator_log.read_text()[-4000:])


@pytest.fixture(scope="module")
def shared_harness(
    model_crd: Any, tmp_path_factory: pytest.TempPathFactory, s3: S3Service
) -> Iterator[Harness]:
    """One namespace, registry and running operator for the module's tests that need none of their own;
    each of them names its Model after itself, so nothing of one test is another's."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    model_crd.create_namespace(name)
    found = Harness(model_crd, name, tmp_path_factory.mktemp("shared"), s3)
    found.install_settings()
    found.start_operator()
    yield found
    found.stop_operator()
    model_crd.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def harness(shared_harness: Harness) -> Harness:
    assert shared_harness.operator_alive(), shared_harness.operator_log.read_text()[-4000:]
    return shared_harness


def test_a_model_is_trained_by_a_job_published_and_served_and_survives_an_operator_killed_mid_run(
    own_harness: Harness, tmp_path: Path
) -> None:
    harness = own_harness
    harness.apply(iris_model())
    (job,) = wait_until("the training Job", lambda: harness.jobs("iris"))
    trained = wait_until("Trained=Unknown", lambda: harness.condition("iris", "Trained"))
    assert trained["status"] == "Unknown"
    assert trained["reason"] in ("Training", "AwaitingVersion")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "Model"

    # The operator dies while the run is under way; the run goes on without it.
    harness.kill_operator()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["modelyard"]
    assert container["args"][:1] == ["train"]
    result = harness.run_job(job, tmp_path / "pod")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["published"]["version"] == 1

    harness.start_operator()
    ready = harness.wait_for_condition("iris", "Ready", status="True", timeout=120)
    assert ready["reason"] == "Ready"
    model = harness.model("iris")
    status = model["status"]
    assert status["observedGeneration"] == model["metadata"]["generation"]
    assert status["servingVersion"] == 1
    assert status["phase"] == "Ready"
    assert status["versions"][0]["version"] == 1
    assert status["versions"][0]["stage"] == "production"
    assert status["latestRun"]["name"] == job["metadata"]["name"]
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types["Trained"] == types["Published"] == types["Serving"] == "True"
    assert len(harness.jobs("iris")) == 1, "the restarted operator started a second run of the same spec"

    with Registry(harness.database_url) as registry:
        production = registry.production("iris")
    assert production is not None and production.version == 1
    service = harness.get("inferenceservice", "iris")
    assert service is not None
    assert service["spec"]["predictor"]["model"]["storageUri"] == production.storage_uri
    assert production.storage_uri.startswith(f"s3://{harness.bucket}/models/iris")
    assert service["metadata"]["ownerReferences"][0]["uid"] == model["metadata"]["uid"]

    row = harness.kubectl("get", "model", "iris").stdout.splitlines()[1].split()
    assert row[:4] == ["iris", "1", "Ready", "True"]
    reasons = {event["reason"] for event in harness.events("iris")}
    assert {"TrainingStarted", "Trained", "Promoted", "Ready"} <= reasons

    # Cleanup: the InferenceService and the schedule go with the Model; the registry keeps its history.
    harness.kubectl("delete", "model", "iris", "--timeout=60s")
    wait_until("the InferenceService to go", lambda: harness.get("inferenceservice", "iris") is None)
    with Registry(harness.database_url) as registry:
        assert [record.version for record in registry.list_versions("iris")] == [1]


def test_a_spec_the_model_spec_refuses_gets_a_condition_naming_the_field_and_a_fix_trains(
    harness: Harness,
) -> None:
    name = "refused"
    harness.apply(iris_model(name, data={"path": str(IRIS), "table": "iris"}))
    ready = harness.wait_for_condition(name, "Ready", reason="InvalidSpec")
    assert ready["status"] == "False"
    assert ready["message"].startswith("spec.data: give exactly one of path, table, query or dataset")
    assert harness.model(name)["status"]["phase"] == "Invalid"
    warnings = [event for event in harness.events(name) if event["reason"] == "InvalidSpec"]
    assert warnings and warnings[0]["type"] == "Warning"
    harness.wait_reconciled(name)  # no Job, no crash, one event
    assert harness.jobs(name) == []
    assert harness.operator_alive()
    assert len([e for e in harness.events(name) if e["reason"] == "InvalidSpec"]) == 1

    harness.kubectl(
        "patch", "model", name, "--type=json", "-p", '[{"op": "remove", "path": "/spec/data/table"}]'
    )
    wait_until("the training Job of the fixed spec", lambda: harness.jobs(name))
    trained = wait_until("Trained", lambda: harness.condition(name, "Trained"))
    assert trained["status"] == "Unknown"
    assert harness.condition(name, "Ready")["reason"] != "InvalidSpec"  # type: ignore[index]


def test_a_name_that_is_no_model_name_is_reported_on_metadata_name(harness: Harness) -> None:
    harness.apply(iris_model(name="iris.v2"))
    ready = harness.wait_for_condition("iris.v2", "Ready", reason="InvalidSpec")
    assert ready["message"].startswith("metadata.name: String should match pattern")


def test_a_kfp_runner_without_a_kfp_host_gets_a_condition_and_no_job(harness: Harness) -> None:
    name = "kfp-runner"
    harness.apply(iris_model(name, training={"runner": "kfp"}))
    trained = harness.wait_for_condition(name, "Trained", reason="NoKfpHost")
    assert trained["status"] == "False"
    assert "MODELYARD_PIPELINE__HOST" in trained["message"]
    assert harness.jobs(name) == []
    assert harness.model(name)["status"]["phase"] == "Failed"


def service_account_kubeconfig(harness: Harness, account: str) -> Path:
    """A kubeconfig that is ``account`` of the test's namespace: a token from the TokenRequest API."""
    token = harness.kubectl("create", "token", account, "--duration=1h").stdout.strip()
    config = yaml.safe_load(Path(harness.plane.kubeconfig).read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path = harness.tmp / f"{account}.kubeconfig"
    path.write_text(json.dumps(config))
    return path


def can_i(harness: Harness, kubeconfig: Path, verb: str, resource: str) -> bool:
    answer = harness.plane.kubectl(
        "auth", "can-i", verb, resource, "-n", harness.namespace, "--kubeconfig", str(kubeconfig), check=False
    )
    return bool(answer.stdout.strip() == "yes")


def test_a_schedule_asks_the_operator_for_a_run_which_it_starts_with_the_models_runner(
    own_harness: Harness, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The schedule's CronJob trains nothing: its pod, run here as the ServiceAccount it names (the chart's,
    allowed only to patch Models), asks for a run, and the operator starts it with the Model's runner: a
    Job with trigger schedule (retrain_on_alert false does not stop it), which trains and is the Model's
    run; for runner kfp no Job (with no KFP host here the request waits unanswered; KFP's side of it is
    test_kfp_runs.py's). A request while the Model's run is in flight (its Job's pod not scheduled: the
    nodes cordoned) is skipped, and not started when that run ends. A request Job that fails (its pod
    refused) is said on the Model once, across operator restarts."""
    harness = own_harness
    harness.stop_operator()
    for obj in chart.render(namespace=harness.namespace):
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding") and obj["metadata"]["name"].endswith(
            "-schedule"
        ):
            harness.apply(obj)
    harness.start_operator(MODELYARD_OPERATOR__SCHEDULE_SERVICE_ACCOUNT="modelyard-schedule")
    name = "scheduled"
    schedule = "*/15 9-17 ? JAN-JUN mon-fri"  # names, ranges, steps: the CronJob's API takes it
    # kwok lets a Job's pod succeed at once: with no node to run on, the spec's Job stays in flight
    nodes = harness.plane.kubectl("get", "nodes", "-o", "name").stdout.split()
    harness.plane.kubectl("cordon", *nodes)
    request.addfinalizer(lambda: harness.plane.kubectl("uncordon", *nodes))
    harness.apply(iris_model(name, training={"schedule": schedule, "retrain_on_alert": False}))
    cron = wait_until("the CronJob", lambda: harness.get("cronjob", f"{name}-retrain"))
    (first,) = wait_until("the spec's Job", lambda: harness.jobs(name))
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert cron["spec"]["schedule"] == schedule
    assert cron["metadata"]["ownerReferences"][0]["name"] == name
    kubeconfig = service_account_kubeconfig(harness, account)
    assert can_i(harness, kubeconfig, "patch", "models")
    assert not any(
        can_i(harness, kubeconfig, verb, resource)
        for verb, resource in (
            ("get", "secrets"),
            ("get", "models"),  # a missing Model is the patch's 404
            ("create", "jobs"),
            ("delete", "models"),
            ("list", "models"),
        )
    )

    def ask(
        cron: dict[str, Any], workdir: Path, model: str | None = None, as_account: Path = kubeconfig
    ) -> subprocess.CompletedProcess[str]:
        """Run the CronJob's pod here as its ServiceAccount (or ``as_account``, a kubeconfig); ``model`` in
        place of the one it names."""
        template = cron["spec"]["jobTemplate"]["spec"]["template"]
        assert template["spec"]["serviceAccountName"] == account
        argv, env = harness.container_process(
            template["spec"], workdir, template["metadata"]["labels"], {"KUBECONFIG": str(as_account)}
        )
        if model is not None:
            argv[argv.index("request-run") + 1] = model
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    # Asked while the spec's Job is in flight: skipped (no second run beside it), and counted as answered.
    first = harness.get("job", first["metadata"]["name"]) or first
    assert not job_finished(first), "the spec's Job finished before the schedule asked"
    asked = ask(cron, tmp_path / "ask-in-flight")
    assert asked.returncode == 0, asked.stderr
    skipped_request = harness.model(name)["metadata"]["annotations"]["modelyard.io/schedule-requested"]
    (skipped,) = wait_until(
        "ScheduleSkipped", lambda: [e for e in harness.events(name) if e["reason"] == "ScheduleSkipped"]
    )
    assert skipped["message"].startswith(
        f"schedule request {skipped_request} skipped: Job {first['metadata']['name']} is still in flight"
    )
    wait_until(
        "the skipped request answered",
        lambda: harness.model(name)["status"]["latestRun"].get("answeredSchedule") == skipped_request,
    )
    assert len(harness.jobs(name)) == 1, "a schedule request started a run beside the one in flight"
    harness.plane.kubectl("uncordon", *nodes)
    # The run in flight ends (kwok's pod succeeds): the skipped request still starts no run.
    wait_until(
        "the spec's Job to finish",
        lambda: job_finished(harness.get("job", first["metadata"]["name"]) or {}),
        timeout=120,
    )
    harness.wait_reconciled(name)
    assert len(harness.jobs(name)) == 1, "a skipped schedule request started a run when the run ended"

    # The next request, with no run in flight, starts one.
    asked = ask(cron, tmp_path / "ask")
    assert asked.returncode == 0, asked.stderr
    jobs = wait_until(
        "the scheduled Job", lambda: (found := harness.jobs(name)) and len(found) == 2 and found
    )
    (scheduled,) = [job for job in jobs if job["metadata"]["name"] != first["metadata"]["name"]]
    meta = scheduled["metadata"]
    assert meta["name"].startswith(f"{name}-schedule-")
    assert meta["labels"]["modelyard.io/trigger"] == "schedule"
    assert meta["ownerReferences"][0]["kind"] == "Model"
    requested = harness.model(name)["metadata"]["annotations"]["modelyard.io/schedule-requested"]
    assert meta["annotations"]["modelyard.io/schedule-requested"] == requested
    assert asked.stdout.strip() == f"asked the operator for a run: {harness.namespace}/{name}@{requested}"
    assert "ScheduledTrainingStarted" in {event["reason"] for event in harness.events(name)}
    assert "RetrainIgnored" not in {event["reason"] for event in harness.events(name)}

    # The scheduled Job is the Model's run: it trains the current spec, and its version is the run's.
    result = harness.run_job(scheduled, tmp_path / "train")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = harness.wait_for_condition(name, "Trained", status="True", timeout=120)
    assert trained["message"].startswith(f"Job {meta['name']} published {name}@1")
    run = harness.model(name)["status"]["latestRun"]
    assert (run["name"], run["trigger"], run["request"]) == (meta["name"], "schedule", requested)
    assert run["answeredSchedule"] == requested  # the newest answered, the skipped one before it
    harness.wait_reconciled(name)
    assert len(harness.jobs(name)) == 2, "an answered schedule request started another run"

    # What goes wrong is one line naming it: no such Model, an account without the Role, no API server.
    absent = ask(cron, tmp_path / "absent", "absent")
    assert absent.returncode == 1
    assert f"no Model {harness.namespace}/absent" in " ".join(absent.stderr.split())
    refused = ask(cron, tmp_path / "refused", as_account=service_account_kubeconfig(harness, "default"))
    assert refused.returncode == children.REQUEST_REFUSED_EXIT_CODE  # its Job's podFailurePolicy fails it
    said = " ".join(refused.stderr.split())
    assert said.startswith(
        f'error: cannot ask Model {harness.namespace}/{name} for a run: models.modelyard.io "{name}" is '
        f'forbidden: User "system:serviceaccount:{harness.namespace}:default" cannot patch resource "models"'
    ), said
    assert said.endswith("(its ServiceAccount needs patch on models.modelyard.io)")
    nowhere = harness.tmp / "nowhere.kubeconfig"
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"
    nowhere.write_text(json.dumps(config))
    unreachable = ask(cron, tmp_path / "unreachable", as_account=nowhere)
    assert unreachable.returncode == 1
    assert "error: cannot reach the Kubernetes API server: " in " ".join(unreachable.stderr.split())
    assert "Traceback" not in refused.stderr + unreachable.stderr

    # The refused pod (the account `default`, as outside the chart) fails its Job at once, as the Job
    # controller says for the podFailurePolicy rule its exit code matches; the test stands in for that
    # controller (kwok's pods succeed). Only a refusal names the Role (test_controller.py: other failures).
    cron_meta = cron["metadata"]
    failed_name = f"{cron_meta['name']}-29420000"  # the CronJob controller's: <cron>-<minutes>
    template = copy.deepcopy(cron["spec"]["jobTemplate"])
    template["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": cron_meta["name"], "uid": cron_meta["uid"]}
    harness.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": failed_name,
                "labels": template["metadata"]["labels"],
                "ownerReferences": [{**owner, "controller": True}],
            },
            "spec": {**template["spec"], "managedBy": "modelyard.io/test"},
        }
    )
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = f"{harness.namespace}/{failed_name}-x7k2p"
    why = {
        "reason": "PodFailurePolicy",
        "message": f"Container request-run for pod {pod} failed with exit code "
        f"{children.REQUEST_REFUSED_EXIT_CODE} matching FailJob rule at index 0",
    }
    failed_status = {
        "startTime": at,
        "active": 0,
        "failed": 1,
        "conditions": [
            {"type": kind, "status": "True", "lastProbeTime": at, "lastTransitionTime": at, **why}
            for kind in ("FailureTarget", "Failed")
        ],
    }
    harness.kubectl(
        "patch", "job", failed_name, "--subresource=status", "--type=merge", "-p",
        json.dumps({"status": failed_status}),
    )  # fmt: skip
    (said_failed,) = wait_until(
        "ScheduleRequestFailed",
        lambda: [e for e in harness.events(name) if e["reason"] == "ScheduleRequestFailed"],
    )
    assert said_failed["type"] == "Warning"
    assert said_failed["message"] == (
        f"Job {failed_name} of the schedule failed to ask for a run: PodFailurePolicy: {why['message']}; "
        "the API server refused it: its ServiceAccount default needs patch on models.modelyard.io (see its "
        f"pod's log (kubectl logs job/{failed_name}))"
    )
    wait_until(
        "the failed request recorded",
        lambda: harness.model(name)["status"].get("scheduleRequestFailed") == failed_name,
    )
    # said once: a restarted operator (nothing in its memory) finds it reported in status
    harness.stop_operator()
    harness.start_operator(MODELYARD_OPERATOR__SCHEDULE_SERVICE_ACCOUNT="modelyard-schedule")
    harness.wait_reconciled(name)
    said = [e for e in harness.events(name) if e["reason"] == "ScheduleRequestFailed"]
    assert len(said) == 1, said

    # runner kfp (no KFP host here): the request starts no Job and is not skipped; unanswered, it waits
    # for a KFP host (what the runner does with it is test_kfp_runs.py's)
    kfp = "scheduled-kfp"
    harness.apply(iris_model(kfp, training={"schedule": "0 3 * * 0", "runner": "kfp"}))
    kfp_cron = wait_until("the kfp Model's CronJob", lambda: harness.get("cronjob", f"{kfp}-retrain"))
    asked = ask(kfp_cron, tmp_path / "ask-kfp")
    assert asked.returncode == 0, asked.stderr
    kfp_request = harness.model(kfp)["metadata"]["annotations"]["modelyard.io/schedule-requested"]
    harness.wait_reconciled(kfp)
    assert harness.jobs(kfp) == []
    reasons = {event["reason"] for event in harness.events(kfp)}
    assert not reasons & {"ScheduledTrainingStarted", "ScheduleSkipped", "TrainingStarted"}, reasons
    assert "NoKfpHost" in reasons
    run = harness.model(kfp)["status"].get("latestRun") or {}
    assert run.get("answeredSchedule") != kfp_request

    # Cleanup: without a schedule the CronJob goes; with the Model, the rest.
    harness.kubectl(
        "patch", "model", name, "--type=json", "-p", '[{"op": "remove", "path": "/spec/training"}]'
    )
    wait_until("the CronJob to go", lambda: harness.get("cronjob", f"{name}-retrain") is None)
    harness.kubectl("delete", "model", kfp, "--timeout=60s")
    wait_until("the kfp Model's CronJob to go", lambda: harness.get("cronjob", f"{kfp}-retrain") is None)


def test_the_charts_role_is_all_the_operator_needs(own_harness: Harness, tmp_path: Path) -> None:
    harness = own_harness
    """The chart's ServiceAccount, Role and RoleBinding for the operator, and nothing else: the whole loop
    runs as that ServiceAccount (a request its Role does not allow would leave the Model unready)."""
    harness.stop_operator()
    wanted = {"ServiceAccount", "Role", "RoleBinding"}
    for obj in chart.render(namespace=harness.namespace):
        if obj["kind"] in wanted and obj["metadata"]["name"].endswith("-operator"):
            harness.apply(obj)
    kubeconfig = service_account_kubeconfig(harness, "modelyard-operator")
    forbidden = harness.plane.kubectl(
        "auth",
        "can-i",
        "list",
        "secrets",
        "-n",
        harness.namespace,
        "--kubeconfig",
        str(kubeconfig),
        check=False,
    )
    assert forbidden.stdout.strip() == "no"
    harness.start_operator(kubeconfig)

    harness.apply(iris_model())
    (job,) = wait_until("the training Job", lambda: harness.jobs("iris"))
    result = harness.run_job(job, tmp_path / "pod")
    assert result.returncode == 0, result.stderr[-3000:]
    harness.wait_for_condition("iris", "Ready", status="True", timeout=120)
    assert {"TrainingStarted", "Promoted", "Ready"} <= {event["reason"] for event in harness.events("iris")}
    harness.kubectl("delete", "model", "iris", "--timeout=60s")
    wait_until("the InferenceService to go", lambda: harness.get("inferenceservice", "iris") is None)
    assert "Forbidden" not in harness.operator_log.read_text()


def test_a_spec_change_retrains_and_a_serving_change_only_reshapes_the_inference_service(
    harness: Harness, tmp_path: Path
) -> None:
    name = "respec"
    harness.apply(iris_model(name))
    (first,) = wait_until("the training Job", lambda: harness.jobs(name))
    assert harness.run_job(first, tmp_path / "first").returncode == 0
    harness.wait_for_condition(name, "Ready", status="True")
    service = harness.get("inferenceservice", name)
    assert service is not None
    served_uri = service["spec"]["predictor"]["model"]["storageUri"]

    # Serving policy only: the InferenceService changes, no run starts.
    harness.kubectl(
        "patch", "model", name, "--type=merge", "-p", '{"spec": {"serving": {"max_replicas": 4}}}'
    )
    wait_until(
        "maxReplicas 4",
        lambda: (harness.get("inferenceservice", name) or {})["spec"]["predictor"]["maxReplicas"] == 4,
    )
    assert len(harness.jobs(name)) == 1

    # Server-side apply: resources the Model stops asking for leave the InferenceService too.
    harness.kubectl(
        "patch",
        "model",
        name,
        "--type=merge",
        "-p",
        '{"spec": {"serving": {"resources": {"limits": {"memory": "1234Mi"}}}}}',
    )
    wait_until("the limit", lambda: "1234Mi" in json.dumps(harness.get("inferenceservice", name)))
    harness.kubectl(
        "patch", "model", name, "--type=json", "-p", '[{"op": "remove", "path": "/spec/serving/resources"}]'
    )
    wait_until("the limit to go", lambda: "1234Mi" not in json.dumps(harness.get("inferenceservice", name)))
    shown = harness.kubectl("get", "inferenceservice", name, "-o", "json", "--show-managed-fields")
    managers = {entry["manager"] for entry in json.loads(shown.stdout)["metadata"]["managedFields"]}
    assert "modelyard-operator" in managers

    # The model spec: a second run; its version waits in staging while production keeps serving.
    harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"spec": {"cv_folds": 3}}')
    jobs = wait_until("the second Job", lambda: (found := harness.jobs(name)) and len(found) == 2 and found)
    (second,) = [job for job in jobs if job["metadata"]["name"] != first["metadata"]["name"]]
    assert harness.run_job(second, tmp_path / "second").returncode == 0
    rollout = harness.wait_for_condition(name, "RolloutProgressing", reason="CandidateWaiting")
    assert rollout["message"].startswith(f"{name}@2 passed the gate; {name}@1 keeps serving")
    try:
        wait_until("phase Ready", lambda: harness.model(name)["status"]["phase"] == "Ready", timeout=30)
    except AssertionError:
        raise AssertionError(json.dumps(harness.model(name)["status"]["conditions"], indent=1)) from None
    status = harness.model(name)["status"]
    assert status["servingVersion"] == 1
    assert [(v["version"], v["stage"]) for v in status["versions"]] == [(2, "staging"), (1, "production")]
    assert status["latestRun"]["name"] == second["metadata"]["name"]
    assert harness.get("inferenceservice", name)["spec"]["predictor"]["model"]["storageUri"] == served_uri  # type: ignore[index]


ALERT = ROOT / "tests" / "monitoring" / "testdata" / "alertmanager-v4.json"


def post_alert(url: str, model: str) -> Any:
    import urllib.request

    document = json.loads(ALERT.read_text())
    document["alerts"][0]["labels"]["model"] = model
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_retraining_alert_through_the_webhook_asks_the_model_and_the_operator_retrains(
    harness: Harness, tmp_path: Path
) -> None:
    name = "alerted"
    from ..monitoring.conftest import free_ports

    harness.apply(iris_model(name))
    (first,) = wait_until("the training Job", lambda: harness.jobs(name))
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "KUBECONFIG": str(harness.plane.kubeconfig),
        "MODELYARD_DATABASE_URL": harness.database_url,
        "MODELYARD_HOME": str(tmp_path / "webhook-home"),
    }
    command = [MODELYARD, "retrain-webhook", "--models-namespace", harness.namespace, "--port", str(port)]
    with (tmp_path / "webhook.log").open("wb") as log:
        webhook = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            "the webhook", lambda: webhook.poll() is None and answers_ok(f"http://127.0.0.1:{port}/healthz")
        )
        decisions = post_alert(f"http://127.0.0.1:{port}/alerts", name)
        assert [d["outcome"] for d in decisions["decisions"]] == ["starting"], decisions
        jobs = wait_until(
            "the retraining Job", lambda: (found := harness.jobs(name)) and len(found) == 2 and found
        )
    finally:
        webhook.terminate()
        webhook.wait(10)
    (retrain,) = [job for job in jobs if job["metadata"]["name"] != first["metadata"]["name"]]
    assert retrain["metadata"]["labels"]["modelyard.io/trigger"] == "alert"
    requested = harness.model(name)["metadata"]["annotations"]["modelyard.io/retrain-requested"]
    assert retrain["metadata"]["annotations"]["modelyard.io/retrain-requested"] == requested
    wait_until("latestRun alert", lambda: harness.model(name)["status"]["latestRun"]["trigger"] == "alert")
    assert "RetrainingStarted" in {event["reason"] for event in harness.events(name)}


def test_a_model_that_refuses_alerts_is_not_retrained(harness: Harness) -> None:
    name = "deaf"
    from modelyard.deploy.kube import custom_objects_api
    from modelyard.operator.kube import Cluster
    from modelyard.operator.launcher import ModelResourceLauncher

    harness.apply(iris_model(name, training={"retrain_on_alert": False}))
    wait_until("the training Job", lambda: harness.jobs(name))
    # the kubeconfig by name: the client reads $KUBECONFIG once, when it is first imported
    api_client = custom_objects_api(Path(harness.plane.kubeconfig)).api_client
    launcher = ModelResourceLauncher(harness.namespace, Cluster(api_client))
    assert launcher.start(name).startswith(f"{harness.namespace}/{name}@")
    wait_until("RetrainIgnored", lambda: "RetrainIgnored" in {e["reason"] for e in harness.events(name)})
    assert len(harness.jobs(name)) == 1
    with pytest.raises(NotFound, match=f"no Model {harness.namespace}/absent: nothing asks the operator"):
        launcher.start("absent")


def test_a_version_another_run_published_is_not_taken_for_the_jobs(harness: Harness, tmp_path: Path) -> None:
    """The run's version is the one registered under its Job's name, not whatever came after it started."""
    name = "by-hand"
    harness.apply(iris_model(name))
    (job,) = wait_until("the training Job", lambda: harness.jobs(name))
    by_hand = harness.run_job(job, tmp_path / "by-hand", env={"MODELYARD_PIPELINE__RUN_ID": "by-hand"})
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    harness.wait_reconciled(name)
    trained = harness.condition(name, "Trained")
    assert trained is not None and trained["status"] == "Unknown"  # kwok may have finished the Job
    assert trained["reason"] in ("Training", "AwaitingVersion")
    assert harness.model(name)["status"]["servingVersion"] is None

    assert harness.run_job(job, tmp_path / "pod").returncode == 0
    harness.wait_for_condition(name, "Ready", status="True", timeout=120)
    assert harness.model(name)["status"]["servingVersion"] == 2
    with Registry(harness.database_url) as registry:
        runs = {record.version: record.run_id for record in registry.list_versions(name)}
    assert runs == {2: job["metadata"]["name"], 1: "by-hand"}


def test_a_run_whose_job_is_gone_stays_the_run_and_the_loop_goes_on(harness: Harness, tmp_path: Path) -> None:
    name = "gone"
    harness.apply(iris_model(name))
    (job,) = wait_until("the training Job", lambda: harness.jobs(name))
    assert harness.run_job(job, tmp_path / "pod").returncode == 0
    harness.wait_for_condition(name, "Ready", status="True")
    harness.kubectl("delete", "job", job["metadata"]["name"])  # as its TTL would
    harness.kubectl(
        "patch", "model", name, "--type=merge", "-p", '{"spec": {"serving": {"max_replicas": 3}}}'
    )
    wait_until(
        "maxReplicas 3",
        lambda: (harness.get("inferenceservice", name) or {})["spec"]["predictor"]["maxReplicas"] == 3,
    )
    assert harness.condition(name, "Trained")["status"] == "True"  # type: ignore[index]
    assert harness.jobs(name) == []
    assert "IndexError" not in harness.operator_log.read_text()


def test_a_job_deleted_before_it_published_says_so_and_is_not_restarted(harness: Harness) -> None:
    name = "deleted"
    harness.apply(iris_model(name))
    (job,) = wait_until("the training Job", lambda: harness.jobs(name))
    job_name = job["metadata"]["name"]
    harness.kubectl("delete", "job", job_name)
    trained = harness.wait_for_condition(name, "Trained", reason="RunGone")
    assert trained["status"] == "False"
    assert trained["message"].startswith(f"Job {job_name} is gone and published no version")
    harness.wait_reconciled(name)
    assert harness.jobs(name) == []
    assert harness.operator_alive()
    assert "RunGone" in {event["reason"] for event in harness.events(name)}


def test_objects_of_a_childs_name_that_are_not_the_models_are_neither_adopted_nor_deleted(
    harness: Harness,
) -> None:
    name = "taken"
    theirs = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec"},
        "data": {"spec.yaml": "mine"},
    }
    schedule = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": f"{name}-retrain"},
        "spec": {
            "schedule": "0 0 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "busybox"}]}
                    }
                }
            },
        },
    }
    harness.apply(theirs)
    harness.apply(schedule)
    harness.apply(iris_model(name))
    ready = harness.wait_for_condition(name, "Ready", reason="NameTaken")
    assert ready["message"].startswith(
        f"ConfigMap {harness.namespace}/{name}-spec exists and is not this Model's"
    )
    assert harness.model(name)["status"]["phase"] == "Failed"
    assert harness.get("configmap", f"{name}-spec")["data"] == {"spec.yaml": "mine"}  # type: ignore[index]
    assert harness.jobs(name) == []
    harness.kubectl("delete", "model", name, "--timeout=60s")
    assert harness.get("cronjob", f"{name}-retrain") is not None, (
        "the finalizer deleted a CronJob it does not own"
    )
    assert harness.get("configmap", f"{name}-spec") is not None


def test_auto_with_a_kfp_host_starts_no_job_and_names_the_unreachable_host(own_harness: Harness) -> None:
    harness = own_harness
    harness.stop_operator()
    harness.start_operator(MODELYARD_PIPELINE__HOST="http://127.0.0.1:9")
    harness.apply(iris_model(training={"runner": "auto"}))
    trained = harness.wait_for_condition("iris", "Trained", reason="KfpUnreachable")
    assert trained["message"].startswith(
        "cannot start a KFP run: cannot reach Kubeflow Pipelines at http://127.0.0.1:9"
    )
    assert harness.jobs("iris") == []


def test_a_model_deleted_while_a_reconcile_is_under_way_goes_once_it_returns(own_harness: Harness) -> None:
    """kopf keeps the finalizer until the Model's timer has returned, and looks again only every
    `cancellation_polling` seconds (a minute by default): a delete that landed mid-reconcile took a minute."""
    harness = own_harness
    kfp = StalledKfp(hold_s=5)  # long enough that kopf's delete finds the timer still running
    try:
        harness.stop_operator()
        harness.start_operator(MODELYARD_PIPELINE__HOST=kfp.url)
        harness.apply(iris_model(training={"runner": "kfp"}))
        harness.wait_for_condition("iris", "Trained", reason="KfpUnreachable")
        # the create handler is done: what reconciles now is the timer, which the delete must wait for
        harness.wait_reconciled("iris", times=2)
        wait_until("the timer's reconcile waiting on KFP", lambda: kfp.open_requests > 0, poll=0.1)
        harness.kubectl("delete", "model", "iris", "--timeout=30s")
        assert harness.get("model", "iris") is None
    finally:
        kfp.close()


@contextlib.contextmanager
def deletes_refused(harness: Harness, group: str, resource: str, check: tuple[str, ...]) -> Iterator[str]:
    """An admission policy refusing every DELETE of ``resource`` in the harness's namespace, in force once
    the server dry-run ``check`` (a delete) is refused; yields the refusal's message, and lifts it."""
    refusal = f"modelyard test: the {resource} of {harness.namespace} are kept"
    policy = f"keep-{resource}-{harness.namespace}"
    guard = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [group],
                            "apiVersions": ["*"],
                            "operations": ["DELETE"],
                            "resources": [resource],
                        }
                    ]
                },
                "validations": [{"expression": "false", "message": refusal}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": harness.namespace}}
                },
            },
        },
    ]
    try:
        harness.plane.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": guard})
        )
        dry_run = (*check, "--dry-run=server")
        wait_until("the policy in force", lambda: refusal in harness.kubectl(*dry_run, check=False).stderr)
        yield refusal
    finally:
        harness.plane.kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            policy,
            "--ignore-not-found",
        )


def test_a_cleanup_the_api_server_refused_is_tried_again_within_seconds(harness: Harness) -> None:
    """kopf tries a failed delete handler again after a minute by default; the operator's first retry comes
    after CLEANUP_RETRY_S. An admission policy refuses the schedule's delete until the test lifts it."""
    name = "refused-cleanup"
    harness.apply(iris_model(name, training={"schedule": "0 3 * * 0"}))
    cron = f"{name}-retrain"
    wait_until("the schedule's CronJob", lambda: harness.get("cronjob", cron))
    with deletes_refused(harness, "batch", "cronjobs", ("delete", "cronjob", cron)) as refusal:
        harness.kubectl("delete", "model", name, "--wait=false")
        failed = wait_until(
            "the CleanupFailed Event",
            lambda: [event for event in harness.events(name) if event["reason"] == "CleanupFailed"],
        )
        assert failed[0]["type"] == "Warning"
        assert failed[0]["message"].startswith(f"cannot delete CronJob {harness.namespace}/{cron} (422): ")
        assert refusal in failed[0]["message"]
        assert failed[0]["message"].endswith("the Model stays until that succeeds (tried again in 5 s)")
        assert harness.get("model", name) is not None
        assert harness.get("cronjob", cron) is not None
    # kopf's default would hold the Model for a minute after the refusal
    harness.kubectl("wait", "--for=delete", f"model/{name}", "--timeout=30s")
    assert harness.get("cronjob", cron) is None


def test_a_child_that_cannot_be_deleted_keeps_neither_the_other_nor_a_model_whose_finalizer_is_removed(
    harness: Harness,
) -> None:
    """The cleanup tries each child: the InferenceService's refused delete does not keep the schedule. And
    a Model whose finalizer is removed by hand, before its cleanup succeeded, is forgotten by the operator
    (the Events it said once are not kept for a Model that is gone)."""
    name = "half-cleanup"
    harness.apply(iris_model(name, training={"schedule": "0 3 * * 0"}))
    cron = f"{name}-retrain"
    wait_until("the schedule's CronJob", lambda: harness.get("cronjob", cron))
    model = harness.model(name)
    # nothing is published, so the operator leaves the Model's own InferenceService be until the cleanup
    service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "ownerReferences": [children.owner_reference(model)]},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "modelyard"}, "storageUri": "s3://none/x"}}},
    }
    harness.apply(service)
    check = ("delete", "inferenceservice", name)
    try:
        with deletes_refused(harness, "serving.kserve.io", "inferenceservices", check) as refusal:
            harness.kubectl("delete", "model", name, "--wait=false")
            failed = wait_until(
                "the CleanupFailed Event",
                lambda: [event for event in harness.events(name) if event["reason"] == "CleanupFailed"],
            )
            assert failed[0]["message"].startswith(
                f"cannot delete InferenceService {harness.namespace}/{name} (422): "
            )
            assert refusal in failed[0]["message"]
            wait_until("the schedule deleted all the same", lambda: harness.get("cronjob", cron) is None)
            assert harness.get("model", name) is not None
            assert harness.get("inferenceservice", name) is not None
            harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
            harness.kubectl("wait", "--for=delete", f"model/{name}", "--timeout=30s")
            forgot = re.compile(rf"forgot Model {harness.namespace}/{name} \(([0-9]+) event")
            found = wait_until(
                "the operator forgetting the Model",
                lambda: forgot.search(harness.operator_log.read_text(errors="replace")),
                seen=lambda: harness.operator_log.read_text(errors="replace")[-2000:],
            )
            assert int(found.group(1)) >= 1  # CleanupFailed, at least
    finally:
        delete = ("delete", "inferenceservice", name, "--ignore-not-found")
        # the API server's admission sees the policy gone a moment later
        wait_until(
            "the InferenceService deleted", lambda: not harness.kubectl(*delete, check=False).returncode
        )
