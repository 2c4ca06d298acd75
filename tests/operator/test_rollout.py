"""The rollout of a second version, on the control plane, analysed from a real Prometheus that scrapes fixed
series of the stable and candidate versions (tests/operator/conftest.py): a good candidate goes through
shadow and a canary step to production, surviving an operator killed between two analyses; a bad one is
rolled back with production untouched, and Events and status name the failed checks.

The predictor's side of a rollout (scoring the candidate in shadow, answering a canary share) is the
serving package's; what is proven here is what the operator tells the predictor through the
InferenceService's env at each step, and what it decides from the analyses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.bundle import fetch_bundle
from modelyard.deploy import chart
from modelyard.operator.analysis import Prometheus
from modelyard.registry import Registry
from modelyard.settings import S3Settings

from ..conftest import S3Service
from ..monitoring.conftest import free_ports
from .test_operator import Harness, iris_model, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

POLICY = {"shadow": True, "canary_steps": [50], "interval_seconds": 5, "failure_limit": 1}


def predictor_env(harness: Harness, name: str) -> dict[str, str]:
    service = harness.get("inferenceservice", name) or {}
    model = service.get("spec", {}).get("predictor", {}).get("model", {})
    return {item["name"]: item["value"] for item in model.get("env", [])}


def rollout_of(harness: Harness, name: str) -> dict[str, Any]:
    return dict(harness.model(name).get("status", {}).get("rollout") or {})


def train_two_versions(
    harness: Harness, name: str, tmp_path: Path, policy: dict[str, Any], **spec: Any
) -> None:
    """Version 1, served; then a spec change whose version 2 passes the gate and becomes the candidate."""
    harness.apply(iris_model(name, rollout=policy, **spec))
    (first,) = wait_until("the training Job", lambda: harness.jobs(name))
    assert harness.run_job(first, tmp_path / "first").returncode == 0
    harness.wait_for_condition(name, "Ready", status="True")
    harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"spec": {"cv_folds": 3}}')
    jobs = wait_until("the second Job", lambda: (found := harness.jobs(name)) and len(found) == 2 and found)
    (second,) = [job for job in jobs if job["metadata"]["name"] != first["metadata"]["name"]]
    assert harness.run_job(second, tmp_path / "second").returncode == 0


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def start_predictor(
    harness: Harness, name: str, model: dict[str, Any], workdir: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The predictor pod KServe would build for the InferenceService whose ``spec.predictor.model`` is
    ``model``, started here: the chart's ServingRuntime container (its env, envFrom and args) with the
    model's env merged in by name, its bundle in /mnt/models where the storage initializer puts it. Only
    the ports differ, as this machine is not a pod's network namespace. Returns the process and its REST
    and probe ports."""
    (runtime,) = [
        obj
        for obj in chart.render(namespace=harness.namespace)
        if obj["kind"] == "ServingRuntime" and obj["metadata"]["name"] == model["runtime"]
    ]
    (container,) = runtime["spec"]["containers"]
    merged = {e["name"]: e for e in container.get("env", [])} | {e["name"]: e for e in model.get("env", [])}
    models = workdir / "models"
    # the storage initializer's work, with the keys of the S3 Secret its ServiceAccount lists
    keys = harness.s3.env()
    s3 = S3Settings(
        endpoint_url=keys["AWS_ENDPOINT_URL"],
        access_key_id=keys["AWS_ACCESS_KEY_ID"],
        secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        region=keys["AWS_REGION"],
    )
    fetch_bundle(model["storageUri"], models, s3)
    pod = {
        "containers": [
            {
                **container,
                "env": list(merged.values()),
                "args": [arg.replace("{{.Name}}", name) for arg in container["args"]],
                "volumeMounts": container["volumeMounts"],
            }
        ],
        "volumes": runtime["spec"]["volumes"],
    }
    http, grpc, probes = free_ports(3)
    argv, env = harness.container_process(
        pod,
        workdir / "pod",
        {},
        {"MODELYARD_SERVING__METRICS_PORT": str(probes)},
        entrypoint=[sys.executable, "-m", "modelyard.serving"],
    )
    local = {
        "--model_dir=/mnt/models": f"--model_dir={models}",
        "--http_port=8080": f"--http_port={http}",
        "--grpc_port=8081": f"--grpc_port={grpc}",
    }
    argv = [local.get(arg, arg) for arg in argv]
    log = (workdir / "predictor.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, http, probes


@pytest.fixture(scope="module")
def shared_analysed(
    model_crd: Any, tmp_path_factory: pytest.TempPathFactory, s3: S3Service, prometheus: Prometheus
) -> Iterator[Harness]:
    """One namespace and operator, analysing from the Prometheus of the fixed series, for the module's
    tests: each rolls out a Model of its own name, which names the series it is judged by."""
    namespace = f"op-{uuid.uuid4().hex[:8]}"
    model_crd.create_namespace(namespace)
    found = Harness(model_crd, namespace, tmp_path_factory.mktemp("analysed"), s3)
    found.install_settings()
    found.start_operator(MODELYARD_OPERATOR__PROMETHEUS_URL=prometheus.url)
    yield found
    found.stop_operator()
    model_crd.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def analysed(shared_analysed: Harness) -> Harness:
    assert shared_analysed.operator_alive(), shared_analysed.operator_log.read_text()[-4000:]
    return shared_analysed


def test_a_good_candidate_goes_through_shadow_and_canary_to_production_across_a_restart(
    analysed: Harness, tmp_path: Path, prometheus: Prometheus
) -> None:
    harness = analysed
    # the deadline leaves room for an operator's restart between two analyses
    policy = {**POLICY, "analyses_per_step": 2, "progress_deadline_seconds": 60}
    train_two_versions(harness, "good", tmp_path, policy)
    with Registry(harness.database_url) as registry:
        stable, candidate = registry.get_version("good", 1), registry.get_version("good", 2)
    shadow = wait_until(
        "shadow", lambda: predictor_env(harness, "good").get("MODELYARD_SERVING__ROLLOUT_MODE")
    )
    assert shadow == "shadow"
    env = predictor_env(harness, "good")
    assert env["MODELYARD_SERVING__CANDIDATE_URI"] == candidate.storage_uri
    assert env["MODELYARD_SERVING__CANARY_PERCENT"] == "0"
    # the versions the predictor labels its metrics with, which the analysis selects by
    assert env["MODELYARD_SERVING__MODEL_VERSION"] == "1"
    assert env["MODELYARD_SERVING__CANDIDATE_VERSION"] == "2"
    service = harness.get("inferenceservice", "good")
    assert service["spec"]["predictor"]["model"]["storageUri"] == stable.storage_uri  # type: ignore[index]
    assert harness.model("good")["status"]["phase"] == "RollingOut"

    shadow_step = service["spec"]["predictor"]["model"]  # type: ignore[index]

    # Killed after the first passing analysis: the next operator carries on from status, not from zero.
    wait_until("one pass", lambda: rollout_of(harness, "good").get("passes") == 1, timeout=60)
    harness.kill_operator()
    assert harness.model("good")["status"]["lastAnalysis"]["verdict"] == "pass"
    harness.start_operator(MODELYARD_OPERATOR__PROMETHEUS_URL=prometheus.url)
    wait_until(
        "canary",
        lambda: predictor_env(harness, "good").get("MODELYARD_SERVING__ROLLOUT_MODE") == "canary",
        timeout=60,
    )
    assert predictor_env(harness, "good")["MODELYARD_SERVING__CANARY_PERCENT"] == "50"

    wait_until("Promoted", lambda: rollout_of(harness, "good").get("state") == "Promoted", timeout=90)
    service = harness.get("inferenceservice", "good")
    assert service["spec"]["predictor"]["model"]["storageUri"] == candidate.storage_uri  # type: ignore[index]
    assert predictor_env(harness, "good") == {"MODELYARD_SERVING__MODEL_VERSION": "2"}
    with Registry(harness.database_url) as registry:
        assert registry.production("good").version == 2  # type: ignore[union-attr]
    wait_until("servingVersion 2", lambda: harness.model("good")["status"]["servingVersion"] == 2)
    rollout = harness.condition("good", "RolloutProgressing")
    assert rollout is not None and rollout["status"] == "False" and rollout["reason"] == "Promoted"
    reasons = [event["reason"] for event in harness.events("good")]
    assert {"RolloutStarted", "RolloutStep", "Promoted"} <= set(reasons)

    # A rollback in the registry afterwards (the CLI's, the console's) wins over the finished rollout.
    with Registry(harness.database_url) as registry:
        assert registry.rollback("good").version == 1
    wait_until(
        "the stable bundle again",
        lambda: (
            harness.get("inferenceservice", "good")["spec"]["predictor"]["model"]["storageUri"]  # type: ignore[index]
            == stable.storage_uri
        ),
        timeout=60,
    )

    # The predictor KServe would have started at the shadow step: it fetches the s3:// candidate with the
    # env it had.
    assert env["MODELYARD_SERVING__CANDIDATE_URI"].startswith(f"s3://{harness.bucket}/")
    predictor, http, probes = start_predictor(harness, "good", shadow_step, tmp_path / "predictor")
    try:
        wait_until(
            "the predictor ready",
            lambda: (
                predictor.poll() is None and http_status(f"http://127.0.0.1:{probes}/v2/health/ready") == 200
            ),
            timeout=120,
        )
        assert http_status(f"http://127.0.0.1:{http}/v2/models/good/versions/2/ready") == 200
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{probes}/metrics", timeout=5).read().decode()
        assert 'modelyard_model_ready{model="good",version="2"} 1.0' in metrics
        request = urllib.request.Request(
            f"http://127.0.0.1:{http}/v2/models/good/infer",
            data=json.dumps(
                {
                    "inputs": [
                        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
                    ]
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["model_version"] == "1"  # shadow: the stable one answers
    finally:
        predictor.terminate()
        predictor.wait(30)
        print((tmp_path / "predictor" / "predictor.log").read_text()[-3000:])


def test_a_bad_candidate_is_rolled_back_naming_the_failed_checks(analysed: Harness, tmp_path: Path) -> None:
    harness = analysed
    train_two_versions(harness, "bad", tmp_path, {**POLICY, "analyses_per_step": 1})
    # the shadow step lasts one analysis: its Event says it began, the status how it ended
    wait_until("RolledBack", lambda: rollout_of(harness, "bad").get("state") == "RolledBack", timeout=120)
    (started,) = [e for e in harness.events("bad") if e["reason"] == "RolloutStarted"]
    assert (
        started["message"]
        == "bad@2 passed the gate: shadow (version 2 scored on every request, answering none) beside bad@1"
    )
    rollout = rollout_of(harness, "bad")
    assert set(rollout["failedChecks"]) == {
        "error_ratio",
        "latency_p95_ratio",
        "class_mix_js_distance",
        "agreement",
        "live_accuracy_delta",
    }
    assert harness.model("bad")["status"]["lastAnalysis"]["verdict"] == "fail"
    wait_until(
        "the env to go", lambda: predictor_env(harness, "bad") == {"MODELYARD_SERVING__MODEL_VERSION": "1"}
    )
    with Registry(harness.database_url) as registry:
        production = registry.production("bad")
        assert production is not None and production.version == 1
    service = harness.get("inferenceservice", "bad")
    assert service["spec"]["predictor"]["model"]["storageUri"] == production.storage_uri  # type: ignore[index]
    condition = harness.condition("bad", "RolloutProgressing")
    assert condition is not None and condition["reason"] == "RolledBack"
    assert "bad@2 was rolled back: error_ratio, latency_p95_ratio" in condition["message"]
    (event,) = [e for e in harness.events("bad") if e["reason"] == "RolledBack"]
    assert event["type"] == "Warning"
    assert "agreement 40" in event["message"]
    assert harness.model("bad")["status"]["servingVersion"] == 1


# ---------------------------------------------------------------- rollouts without evidence


def rolled_back(harness: Harness, name: str, reason: str) -> dict[str, Any]:
    """The ended rollout, once it is; its condition and Warning Event name ``reason``, the env is gone
    and production never changed."""
    wait_until("RolledBack", lambda: rollout_of(harness, name).get("state") == "RolledBack", timeout=120)
    rollout = rollout_of(harness, name)
    assert rollout["reason"] == reason, rollout
    condition = harness.condition(name, "RolloutProgressing")
    assert condition is not None and condition["status"] == "False" and condition["reason"] == reason
    assert condition["message"] == f"{name}@2 was rolled back: {rollout['message']}"
    (event,) = [e for e in harness.events(name) if e["reason"] == reason]
    assert event["type"] == "Warning"
    assert event["message"] == f"{name}@2: {rollout['message']}"
    wait_until(
        "the env to go", lambda: predictor_env(harness, name) == {"MODELYARD_SERVING__MODEL_VERSION": "1"}
    )
    with Registry(harness.database_url) as registry:
        assert registry.production(name).version == 1  # type: ignore[union-attr]
    return rollout


def test_a_candidate_its_predictor_never_serves_is_rolled_back_at_the_steps_deadline(
    analysed: Harness, tmp_path: Path
) -> None:
    harness = analysed
    policy = {**POLICY, "analyses_per_step": 1, "progress_deadline_seconds": 10}
    train_two_versions(harness, "broken", tmp_path, policy)  # its predictor reports version 2 not ready
    rollout = rolled_back(harness, "broken", "CandidateNotServed")
    assert rollout["message"].startswith(
        'the predictor did not serve version 2 within 10 s of the step (modelyard_model_ready{model="broken",'
        'version="2"} is not 1; the InferenceService '
    )
    assert rollout["message"].endswith("); broken@1 keeps serving")
    assert rollout["evidence"] == "NotServed"
    assert "lastAnalysis" not in harness.model("broken")["status"], "a candidate not served was analysed"


def test_a_candidate_without_traffic_is_rolled_back_after_its_inconclusive_limit(
    analysed: Harness, tmp_path: Path
) -> None:
    harness = analysed
    policy = {**POLICY, "analyses_per_step": 1, "inconclusive_limit": 2, "progress_deadline_seconds": 120}
    train_two_versions(harness, "quiet", tmp_path, policy)  # served, but it gets no requests
    rollout = rolled_back(harness, "quiet", "NoEvidence")
    assert rollout["message"] == (
        "2 analyses in a row without a verdict (inconclusive_limit 2), the last: shadow (version 2 scored on "
        "every request, answering none): analysis inconclusive (no check had data yet); quiet@1 keeps serving"
    )
    assert rollout["inconclusive"] == 2
    assert harness.model("quiet")["status"]["lastAnalysis"]["verdict"] == "inconclusive"


def test_an_unreachable_prometheus_rolls_the_candidate_back_as_analysis_unavailable(
    model_crd: Any, namespace: str, tmp_path: Path, s3: S3Service
) -> None:
    harness = Harness(model_crd, namespace, tmp_path, s3)
    harness.install_settings()
    (port,) = free_ports(1)  # nothing listens there
    harness.start_operator(MODELYARD_OPERATOR__PROMETHEUS_URL=f"http://127.0.0.1:{port}")
    try:
        policy = {**POLICY, "analyses_per_step": 1, "inconclusive_limit": 2, "progress_deadline_seconds": 120}
        train_two_versions(harness, "good", tmp_path, policy)
        rollout = rolled_back(harness, "good", "AnalysisUnavailable")
    finally:
        harness.stop_operator()
    assert rollout["message"].startswith(
        "2 analyses in a row without a verdict (inconclusive_limit 2), the last: no analysis: cannot query "
        f"Prometheus at http://127.0.0.1:{port} ("
    )
    assert "AnalysisError" in {event["reason"] for event in harness.events("good")}


# ---------------------------------------------------------------- a rollout overtaken


def test_a_spec_change_pauses_the_rollout_and_the_new_version_supersedes_it(
    analysed: Harness, tmp_path: Path
) -> None:
    harness = analysed
    name = "overtaken"  # judged by series as good as "good"'s
    # a hundred analyses per step: the candidate stays in shadow for the whole test
    policy = {**POLICY, "analyses_per_step": 100, "progress_deadline_seconds": 3600}
    train_two_versions(harness, name, tmp_path, policy)
    wait_until("shadow", lambda: predictor_env(harness, name).get("MODELYARD_SERVING__ROLLOUT_MODE"))
    plan = [{"mode": "shadow", "percent": 0}, {"mode": "canary", "percent": 50}]
    assert rollout_of(harness, name)["steps"] == plan

    # The rollout policy changes: this rollout keeps the plan it started with.
    patch = {"spec": {"rollout": {**policy, "canary_steps": [20, 60]}}}
    harness.kubectl("patch", "model", name, "--type=merge", "-p", json.dumps(patch))
    generation = harness.model(name)["metadata"]["generation"]
    wait_until("the edit observed", lambda: harness.model(name)["status"]["observedGeneration"] == generation)
    harness.wait_reconciled(name)
    assert rollout_of(harness, name)["steps"] == plan
    assert len(harness.jobs(name)) == 2, "a rollout policy edit retrained"

    # The model spec changes: version 2 was trained for the old one, so it waits, unserved and unjudged.
    harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"spec": {"cv_folds": 4}}')
    jobs = wait_until("the third Job", lambda: (found := harness.jobs(name)) and len(found) == 3 and found)
    paused = harness.wait_for_condition(name, "RolloutProgressing", reason="Paused")
    (third,) = [
        job for job in jobs if job["metadata"]["name"] == harness.model(name)["status"]["latestRun"]["name"]
    ]
    assert paused["message"] == (
        f"overtaken@2 was trained for an older spec: paused, the predictor told nothing of it, until run "
        f"{third['metadata']['name']} publishes the new spec's version"
    )
    wait_until(
        "the env to go", lambda: predictor_env(harness, name) == {"MODELYARD_SERVING__MODEL_VERSION": "1"}
    )
    passes = rollout_of(harness, name)["passes"]
    harness.wait_reconciled(name)
    assert rollout_of(harness, name)["passes"] == passes, "a paused candidate was analysed"
    assert {e["reason"]: e["type"] for e in harness.events(name)}["RolloutPaused"] == "Warning"

    # Back to the spec version 2 was trained for: it resumes, and its own Job is the run again (not the
    # newest Job, the other spec's), with no Job started.
    harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"spec": {"cv_folds": 3}}')
    wait_until(
        "Progressing again",
        lambda: (harness.condition(name, "RolloutProgressing") or {}).get("reason") == "Progressing",
    )
    (resumed,) = [e for e in harness.events(name) if e["reason"] == "RolloutResumed"]
    assert resumed["message"] == (
        "overtaken@2: shadow (version 2 scored on every request, answering none): resumed, the spec is its "
        "own again"
    )
    assert len(harness.jobs(name)) == 3
    assert harness.model(name)["status"]["latestRun"]["name"] != third["metadata"]["name"]
    # The other spec's Job publishes version 3 meanwhile: it is not rolled out for this spec.
    assert harness.run_job(third, tmp_path / "third").returncode == 0
    harness.wait_reconciled(name)
    assert rollout_of(harness, name)["candidate"] == 2

    # The spec is the new one again: its version, published already, supersedes version 2, and its
    # rollout takes the policy as it is now.
    harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"spec": {"cv_folds": 4}}')
    wait_until("version 3's rollout", lambda: rollout_of(harness, name).get("candidate") == 3)
    (superseded,) = [e for e in harness.events(name) if e["reason"] == "RolloutSuperseded"]
    assert superseded["type"] == "Warning"
    assert superseded["message"] == (
        "overtaken@2 is superseded by overtaken@3 at step 1 of 2, shadow (version 2 scored on every request, "
        "answering none); its rollout ends unjudged"
    )
    rollout = rollout_of(harness, name)
    assert rollout["steps"] == [
        {"mode": "shadow", "percent": 0},
        {"mode": "canary", "percent": 20},
        {"mode": "canary", "percent": 60},
    ]
    assert (rollout["state"], rollout["paused"], rollout["stable"]) == ("Progressing", False, 1)
    wait_until(
        "version 3 in shadow",
        lambda: predictor_env(harness, name).get("MODELYARD_SERVING__CANDIDATE_VERSION") == "3",
    )


def test_a_rollout_waits_while_kserve_keeps_the_inference_services_deployment_mode(
    analysed: Harness, tmp_path: Path
) -> None:
    """KServe does not change a reconciled InferenceService's deployment mode, so the operator stops
    writing it: the rollout must not go on (nor promote in the registry) while the cluster keeps serving
    the step it was at."""
    harness = analysed
    name = "moded"  # judged by series as good as "good"'s
    policy = {**POLICY, "analyses_per_step": 100, "progress_deadline_seconds": 3600}
    train_two_versions(harness, name, tmp_path, policy)
    wait_until("one pass", lambda: rollout_of(harness, name).get("passes", 0) >= 1, timeout=60)
    recorded = wait_until(
        "KServe to record the mode",
        lambda: ((harness.get("inferenceservice", name) or {}).get("status") or {}).get("deploymentMode"),
    )
    written = harness.get("inferenceservice", name)

    knative = {"spec": {"serving": {"deployment_mode": "Knative"}}}
    harness.kubectl("patch", "model", name, "--type=merge", "-p", json.dumps(knative))
    paused = harness.wait_for_condition(name, "RolloutProgressing", reason="DeploymentModeFixed")
    fixed = (
        f"InferenceService {name} runs in Standard mode and spec.serving.deployment_mode is Knative: KServe "
        f"does not change a deployment mode; delete InferenceService {name} (the operator makes it again, in "
        "Knative mode) or set the mode back"
    )
    assert recorded in ("Standard", "RawDeployment")
    assert paused["status"] == "True"
    assert paused["message"] == (
        "shadow (version 2 scored on every request, answering none): paused, neither judged nor promoted, "
        f"while the InferenceService cannot be written: {fixed}"
    )
    ready = harness.condition(name, "Ready")
    assert ready is not None and (ready["status"], ready["message"]) == ("False", fixed)
    rollout = rollout_of(harness, name)
    assert (rollout["state"], rollout["paused"], rollout["reason"]) == (
        "Progressing",
        True,
        "DeploymentModeFixed",
    )
    harness.wait_reconciled(name)
    assert rollout_of(harness, name)["passes"] == rollout["passes"], "a rollout was judged unwritten"
    kept = harness.get("inferenceservice", name)
    assert kept is not None and written is not None and kept["spec"] == written["spec"]
    (said,) = [e for e in harness.events(name) if e["reason"] == "RolloutPaused"]
    assert (said["type"], said["message"]) == ("Warning", f"{name}@2: {paused['message']}")

    # The mode set back: the rollout goes on from the step it was at.
    harness.kubectl(
        "patch", "model", name, "--type=merge", "-p", '{"spec": {"serving": {"deployment_mode": "Standard"}}}'
    )
    wait_until(
        "Progressing again",
        lambda: (harness.condition(name, "RolloutProgressing") or {}).get("reason") == "Progressing",
    )
    (resumed,) = [e for e in harness.events(name) if e["reason"] == "RolloutResumed"]
    assert resumed["message"] == (
        f"{name}@2: shadow (version 2 scored on every request, answering none): resumed, the "
        "InferenceService is written again"
    )
    rollout = rollout_of(harness, name)
    assert (rollout["paused"], rollout["reason"], rollout["step"]) == (False, None, 0)
    wait_until("another pass", lambda: rollout_of(harness, name)["passes"] > rollout["passes"], timeout=60)
    with Registry(harness.database_url) as registry:
        assert registry.production(name).version == 1  # type: ignore[union-attr]
