"""The rollout of a second version, on the control plane, analysed from a real Prometheus that scrapes fixed
series of the stable and candidate versions (tests/operator/conftest.py): a good candidate goes through
shadow and a canary step to production, surviving an operator killed between two analyses; a bad one is
rolled back with production untouched, and Events and status name the failed checks.

The predictor's side of a rollout (scoring the candidate in shadow, answering a canary share) is the
serving package's; what is proven here is what the operator tells the predictor through the
InferenceService's env at each step, and what it decides from the analyses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.operator.analysis import Prometheus
from modelyard.registry import Registry

from ..conftest import S3Service
from .test_operator import Harness, iris_model, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

POLICY = {"shadow": True, "canary_steps": [50], "interval_seconds": 5, "failure_limit": 1}


def predictor_env(harness: Harness, name: str) -> dict[str, str]:
    service = harness.get("inferenceservice", name) or {}
    model = service.get("spec", {}).get("predictor", {}).get("model", {})
    return {item["name"]: item["value"] for item in model.get("env", [])}


def rollout_of(harness: Harness, name: str) -> dict[str, Any]:
    return dict(harness.model(name).get("status", {}).get("rollout") or {})


def train_two_versions(harness: Harness, name: str, tmp_path: Path, policy: dict[str, Any]) -> None:
    """Version 1, served; then a spec change whose version 2 passes the gate and becomes the candidate."""
    harness.apply(iris_model(name, rollout=policy))
    (first,) = wait_until("the training Job", lambda: harness.jobs(name))
    assert harness.run_job(first, tmp_path / "first").returncode == 0
    wait_until("Ready", lambda: (c := harness.condition(name, "Ready")) is not None and c["status"] == "True")
    harness.kubectl("patch", "model", name, "--type=merge", "-p", '{"spec": {"cv_folds": 3}}')
    jobs = wait_until("the second Job", lambda: (found := harness.jobs(name)) and len(found) == 2 and found)
    (second,) = [job for job in jobs if job["metadata"]["name"] != first["metadata"]["name"]]
    assert harness.run_job(second, tmp_path / "second").returncode == 0


@pytest.fixture
def analysed(
    model_crd: Any, namespace: str, tmp_path: Path, s3: S3Service, prometheus: Prometheus
) -> Iterator[Harness]:
    """The test's Harness, its operator analysing from the Prometheus of the fixed series."""
    found = Harness(model_crd, namespace, tmp_path, s3)
    found.install_settings()
    found.start_operator(MODELYARD_OPERATOR__PROMETHEUS_URL=prometheus.url)
    yield found
    found.stop_operator()


def test_a_good_candidate_goes_through_shadow_and_canary_to_production_across_a_restart(
    analysed: Harness, tmp_path: Path, prometheus: Prometheus
) -> None:
    harness = analysed
    train_two_versions(harness, "good", tmp_path, {**POLICY, "analyses_per_step": 2})
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
