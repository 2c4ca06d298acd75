"""The Knative deployment mode: the InferenceService the operator writes at each step of a rollout, and
how it reads readiness from what KServe reports.

The cluster tests apply those InferenceServices through the real API server and KServe's manager (by
hand, and by the operator rolling out a candidate judged from the fixed Prometheus series) and check the
Knative Service KServe derives from them: its revision template and its traffic split. No Knative
controller runs on the local control plane, so the revision status Knative would write is written by
the tests (``KServe.knative_reports``, ``KnativeStatus``); Knative's traffic shifting is not tested here.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelyard.deploy.kube import custom_objects_api
from modelyard.operator import children
from modelyard.operator.analysis import Prometheus
from modelyard.operator.controller import (
    CANARY,
    FULL,
    PROGRESSING,
    PROMOTED,
    ROLLED_BACK,
    SHADOW,
    awaiting_canary,
    canary_written,
    deployment_mode_fixed,
    desired_inference_service,
    inference_service_ready,
    step_clock,
)
from modelyard.operator.kube import INFERENCE_SERVICE, Cluster, Kind
from modelyard.operator.resource import (
    DeploymentMode,
    Policies,
    ResourceSpecError,
    RolloutPolicy,
    parse_resource_spec,
)
from modelyard.registry import Stage
from modelyard.registry.records import ModelVersionRecord
from modelyard.settings import Settings, load_settings

from ..conftest import S3Service
from .test_crd import model
from .test_operator import SERVING_RUNTIME, Harness, wait_until
from .test_rollout import rollout_of, train_two_versions

KNATIVE = Policies.model_validate({"serving": {"deployment_mode": "Knative"}})
STABLE_URI, CANDIDATE_URI = "s3://modelyard/iris/1", "s3://modelyard/iris/2"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [key for key in os.environ if key.startswith("MODELYARD_")]:
        monkeypatch.delenv(key)
    return load_settings()


def record(version: int, uri: str) -> ModelVersionRecord:
    return ModelVersionRecord(
        id=version,
        name="iris",
        version=version,
        stage=Stage.PRODUCTION,
        storage_uri=uri,
        sha256="0" * 64,
        metrics={},
        params={},
        algorithm="logistic_regression",
        dataset_id=None,
        dataset=None,
        dataset_fingerprint=None,
        created_at=datetime.now(UTC),
        promoted_at=None,
    )


def rollout(state: str, mode: str, percent: int, *, paused: bool = False) -> dict[str, Any]:
    return {
        "candidate": 2,
        "stable": 1,
        "candidateUri": CANDIDATE_URI,
        "state": state,
        "mode": mode,
        "percent": percent,
        "paused": paused,
    }


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in service["spec"]["predictor"]["model"]["env"]}


def knative_status(
    service: dict[str, Any],
    latest: str,
    ready: str,
    traffic: list[dict[str, Any]],
    rolled_out: str | None = "iris-predictor-00001",
) -> None:
    """What KServe copies into the InferenceService's status from its Knative Service (``rolled_out``:
    the last revision that took all traffic, None before any did)."""
    predictor: dict[str, Any] = {
        "latestCreatedRevision": latest,
        "latestReadyRevision": ready,
        "traffic": traffic,
    }
    if rolled_out is not None:
        predictor["latestRolledoutRevision"] = rolled_out
    service["status"] = {
        "conditions": [{"type": kind, "status": "True"} for kind in ("PredictorReady", "Ready")],
        "components": {"predictor": predictor},
    }


def everything_to(revision: str) -> list[dict[str, Any]]:
    return [{"revisionName": revision, "latestRevision": True, "percent": 100}]


def stable_served(settings: Settings) -> dict[str, Any]:
    """The stable version's InferenceService, told of no rollout, its revision taking all traffic."""
    service = children.inference_service("iris", 1, STABLE_URI, settings, KNATIVE)
    knative_status(
        service, "iris-predictor-00001", "iris-predictor-00001", everything_to("iris-predictor-00001")
    )
    return service


def knative_canary(settings: Settings, percent: int) -> dict[str, Any]:
    """The InferenceService of a Knative canary step at ``percent``, beside the rolled-out stable version."""
    return desired_inference_service(
        "iris", record(1, STABLE_URI), rollout(PROGRESSING, CANARY, percent), settings, KNATIVE,
        stable_served(settings),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- the manifests


def test_a_standard_model_gets_the_hpa_and_a_knative_one_knatives_kpa(settings: Settings) -> None:
    standard = children.inference_service("iris", 1, STABLE_URI, settings, Policies())
    assert standard["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert standard["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert standard["spec"]["predictor"]["scaleMetric"] == "cpu"
    knative = children.inference_service("iris", 1, STABLE_URI, settings, KNATIVE)
    annotations = knative["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    # KServe's autoscalerClass picks a Standard predictor's scaler; Knative's class a revision's
    assert "serving.kserve.io/autoscalerClass" not in annotations
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    predictor = knative["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == 80
    assert "canaryTrafficPercent" not in predictor


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        (
            {"deployment_mode": "Knative", "scale_metric": "cpu"},
            "not one the Knative mode's autoscaler",
        ),
        ({"scale_metric": "rps"}, r"not one the Standard mode's autoscaler scales on \(cpu or memory\)"),
        ({"scale_metric": "cpu", "scale_target": 150}, "scale_target 150 is above 100 percent cpu"),
        ({"deployment_mode": "Serverless"}, "Input should be 'Standard' or 'Knative'"),
    ],
)
def test_a_scale_metric_or_mode_kserve_would_refuse_is_named(serving: dict[str, Any], message: str) -> None:
    with pytest.raises(ResourceSpecError, match=message) as caught:
        parse_resource_spec("iris", model("iris", serving=serving)["spec"])
    assert caught.value.field.startswith("spec.serving")


def test_a_knative_model_may_scale_on_requests_per_second_past_100() -> None:
    serving = {"deployment_mode": "Knative", "scale_metric": "rps", "scale_target": 500}
    _, policies = parse_resource_spec("iris", model("iris", serving=serving)["spec"])
    assert (policies.serving.metric.value, policies.serving.scale_target) == ("rps", 500)


def test_canary_traffic_percent_is_refused_for_a_standard_predictor(settings: Settings) -> None:
    with pytest.raises(ValueError, match="Knative mode only"):
        children.inference_service("iris", 2, CANDIDATE_URI, settings, Policies(), canary_percent=10)


# ---------------------------------------------------------------------------------------- the rollout steps


def test_the_shadow_step_is_the_stable_predictor_told_of_the_candidate_in_both_modes(
    settings: Settings,
) -> None:
    shadow = rollout(PROGRESSING, SHADOW, 0)
    for policies in (Policies(), KNATIVE):
        service = desired_inference_service("iris", record(1, STABLE_URI), shadow, settings, policies, None)
        predictor = service["spec"]["predictor"]
        assert predictor["model"]["storageUri"] == STABLE_URI
        assert env_of(service)[children.ROLLOUT_MODE_ENV] == "shadow"
        assert env_of(service)[children.CANDIDATE_URI_ENV] == CANDIDATE_URI
        assert "canaryTrafficPercent" not in predictor


def test_a_knative_canary_step_is_the_candidates_spec_with_its_share(settings: Settings) -> None:
    canary = rollout(PROGRESSING, CANARY, 10)
    standard = desired_inference_service("iris", record(1, STABLE_URI), canary, settings, Policies(), None)
    assert standard["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert env_of(standard)[children.CANARY_PERCENT_ENV] == "10"
    service = desired_inference_service(
        "iris", record(1, STABLE_URI), canary, settings, KNATIVE, stable_served(settings)
    )
    predictor = service["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == CANDIDATE_URI
    # the revision is the candidate's alone: its version labels its metrics, and it is told of no rollout
    assert env_of(service) == {children.MODEL_VERSION_ENV: "2"}
    assert service["metadata"]["labels"]["modelyard.io/version"] == "2"


def test_a_paused_knative_canary_takes_the_candidates_share_away(settings: Settings) -> None:
    canary = knative_canary(settings, 10)
    paused = rollout(PROGRESSING, CANARY, 10, paused=True)
    service = desired_inference_service("iris", record(1, STABLE_URI), paused, settings, KNATIVE, canary)
    assert service["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert service["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_promotion_gives_the_candidates_revision_all_traffic_at_once(settings: Settings) -> None:
    canary = knative_canary(settings, 50)
    promoted = rollout(PROMOTED, FULL, 100)
    service = desired_inference_service("iris", record(2, CANDIDATE_URI), promoted, settings, KNATIVE, canary)
    predictor = service["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    # the same revision template as the canary's: Knative makes no new revision, it only moves traffic
    assert predictor["model"] == canary["spec"]["predictor"]["model"]
    assert service["metadata"]["labels"] == canary["metadata"]["labels"]
    assert service["metadata"]["annotations"] == canary["metadata"]["annotations"]


def test_a_rollback_keeps_the_candidate_at_0_until_the_stable_spec_is_ready(settings: Settings) -> None:
    production = record(1, STABLE_URI)
    found = desired_inference_service(
        "iris", production, rollout(PROGRESSING, CANARY, 50), settings, KNATIVE, stable_served(settings)
    )
    knative_status(
        found,
        "iris-predictor-00003",
        "iris-predictor-00003",
        [
            {"revisionName": "iris-predictor-00003", "latestRevision": True, "percent": 50},
            {"revisionName": "iris-predictor-00002", "latestRevision": False, "percent": 50, "tag": "prev"},
        ],
    )
    rolled_back = rollout(ROLLED_BACK, CANARY, 50)
    first = desired_inference_service("iris", production, rolled_back, settings, KNATIVE, found)
    # the stable spec and canaryTrafficPercent 0 in one write: the previous rolled-out revision takes all
    assert first["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert first["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert env_of(first) == {children.MODEL_VERSION_ENV: "1"}

    # KServe has written it, Knative not yet made the new revision: still 0
    first["status"] = found["status"]
    second = desired_inference_service("iris", production, rolled_back, settings, KNATIVE, first)
    assert second["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # the new revision exists but is not ready (the latest ready one is still the candidate's)
    knative_status(
        first,
        "iris-predictor-00004",
        "iris-predictor-00003",
        [
            {"revisionName": "iris-predictor-00003", "latestRevision": True, "percent": 0},
            {"revisionName": "iris-predictor-00002", "latestRevision": False, "percent": 100, "tag": "prev"},
        ],
    )
    third = desired_inference_service("iris", production, rolled_back, settings, KNATIVE, first)
    assert third["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert inference_service_ready(first, third) == (
        False,
        "Knative has not yet routed 0% of requests to the InferenceService's latest revision, ready "
        "(status.components.predictor)",
    )
    # the stable spec's revision is ready and takes 0%: the share goes back to the latest revision
    knative_status(
        first,
        "iris-predictor-00004",
        "iris-predictor-00004",
        [
            {"revisionName": "iris-predictor-00004", "latestRevision": True, "percent": 0},
            {"revisionName": "iris-predictor-00002", "latestRevision": False, "percent": 100, "tag": "prev"},
        ],
    )
    assert inference_service_ready(first, third) == (True, "")
    fourth = desired_inference_service("iris", production, rolled_back, settings, KNATIVE, first)
    assert "canaryTrafficPercent" not in fourth["spec"]["predictor"]


def test_a_superseded_knative_canary_does_not_hand_the_old_candidate_all_traffic(
    settings: Settings,
) -> None:
    found = knative_canary(settings, 50)
    newer = {**rollout(PROGRESSING, SHADOW, 0), "candidate": 3, "candidateUri": "s3://modelyard/iris/3"}
    service = desired_inference_service("iris", record(1, STABLE_URI), newer, settings, KNATIVE, found)
    assert env_of(service)[children.CANDIDATE_VERSION_ENV] == "3"
    assert service["spec"]["predictor"]["canaryTrafficPercent"] == 0


def assert_plain_stable(service: dict[str, Any]) -> None:
    predictor = service["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == STABLE_URI
    assert env_of(service) == {children.MODEL_VERSION_ENV: "1"}
    assert "canaryTrafficPercent" not in predictor


def test_a_knative_canary_waits_for_a_rolled_out_revision(settings: Settings) -> None:
    """KServe splits canaryTrafficPercent only once a revision has taken all traffic; before that the
    candidate's spec would take everything, so the stable spec is written first."""
    canary = rollout(PROGRESSING, CANARY, 10)
    production = record(1, STABLE_URI)
    assert_plain_stable(desired_inference_service("iris", production, canary, settings, KNATIVE, None))
    found = children.inference_service("iris", 1, STABLE_URI, settings, KNATIVE)
    knative_status(
        found, "iris-predictor-00001", "iris-predictor-00001", everything_to("iris-predictor-00001"), None
    )
    assert_plain_stable(desired_inference_service("iris", production, canary, settings, KNATIVE, found))
    # once KServe reports a rolled-out revision, the canary starts
    started = desired_inference_service(
        "iris", production, canary, settings, KNATIVE, stable_served(settings)
    )
    assert started["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_a_knative_canary_after_the_shadow_step_splits_with_the_plain_stable_revision(
    settings: Settings,
) -> None:
    production = record(1, STABLE_URI)
    found = desired_inference_service(
        "iris", production, rollout(PROGRESSING, SHADOW, 0), settings, KNATIVE, stable_served(settings)
    )
    knative_status(
        found,
        "iris-predictor-00002",
        "iris-predictor-00002",
        everything_to("iris-predictor-00002"),
        "iris-predictor-00002",
    )
    canary = rollout(PROGRESSING, CANARY, 10)
    # the shadowing revision would mirror its share to the candidate: the plain stable spec first
    first = desired_inference_service("iris", production, canary, settings, KNATIVE, found)
    assert_plain_stable(first)
    assert first["metadata"]["annotations"][children.REPLACED_REVISION_ANNOTATION] == "iris-predictor-00002"
    # right after the write KServe still reports the shadowing revision ready with all traffic: it is the
    # revision the plain template replaced, so the canary waits
    knative_status(
        first,
        "iris-predictor-00002",
        "iris-predictor-00002",
        everything_to("iris-predictor-00002"),
        "iris-predictor-00002",
    )
    assert_plain_stable(desired_inference_service("iris", production, canary, settings, KNATIVE, first))
    # its revision is made but not ready: the shadowing one still serves, and the canary waits
    knative_status(
        first,
        "iris-predictor-00003",
        "iris-predictor-00002",
        everything_to("iris-predictor-00002"),
        "iris-predictor-00002",
    )
    assert_plain_stable(desired_inference_service("iris", production, canary, settings, KNATIVE, first))
    # it takes all traffic: the canary splits with it
    knative_status(
        first,
        "iris-predictor-00003",
        "iris-predictor-00003",
        everything_to("iris-predictor-00003"),
        "iris-predictor-00003",
    )
    started = desired_inference_service("iris", production, canary, settings, KNATIVE, first)
    assert started["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert started["spec"]["predictor"]["model"]["storageUri"] == CANDIDATE_URI


def test_a_newer_candidates_knative_canary_starts_at_0_until_its_revision_is_ready(
    settings: Settings,
) -> None:
    """Knative's latestRevision is the latest *ready* revision: until the newer candidate's is ready, its
    share would go to the superseded candidate's."""
    production = record(1, STABLE_URI)
    found = desired_inference_service(
        "iris", production, rollout(PROGRESSING, CANARY, 50), settings, KNATIVE, stable_served(settings)
    )
    split = [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 50},
        {"revisionName": "iris-predictor-00001", "latestRevision": False, "percent": 50, "tag": "prev"},
    ]
    knative_status(found, "iris-predictor-00002", "iris-predictor-00002", split)
    newer = {**rollout(PROGRESSING, CANARY, 10), "candidate": 3, "candidateUri": "s3://modelyard/iris/3"}
    first = desired_inference_service("iris", production, newer, settings, KNATIVE, found)
    assert first["spec"]["predictor"]["model"]["storageUri"] == "s3://modelyard/iris/3"
    assert first["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # KServe has written it; Knative has made the new revision, not ready yet: still 0
    held = [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 0},
        {"revisionName": "iris-predictor-00001", "latestRevision": False, "percent": 100, "tag": "prev"},
    ]
    knative_status(first, "iris-predictor-00003", "iris-predictor-00002", held)
    second = desired_inference_service("iris", production, newer, settings, KNATIVE, first)
    assert second["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # the newer candidate's revision is ready at 0%: it gets the step's share
    held[0]["revisionName"] = "iris-predictor-00003"
    knative_status(first, "iris-predictor-00003", "iris-predictor-00003", held)
    third = desired_inference_service("iris", production, newer, settings, KNATIVE, first)
    assert third["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_a_knative_canary_steps_analyses_wait_until_the_inference_service_carries_the_canary(
    settings: Settings,
) -> None:
    """Until the canary is written at its percent (the plain stable spec first, or the candidate held at
    0), the candidate answers none of the step's share and Prometheus holds only its shadow step's
    series: the step's looks analyse nothing, yet count, so the step's deadline bounds the wait."""
    production = record(1, STABLE_URI)
    canary = rollout(PROGRESSING, CANARY, 10)
    assert not canary_written(None, canary)
    shadowing = desired_inference_service(
        "iris", production, rollout(PROGRESSING, SHADOW, 0), settings, KNATIVE, stable_served(settings)
    )
    assert not canary_written(shadowing, canary)
    plain = desired_inference_service("iris", production, canary, settings, KNATIVE, shadowing)
    assert_plain_stable(plain)
    assert not canary_written(plain, canary)
    written = knative_canary(settings, 10)
    assert canary_written(written, canary)
    # the next step's percent is not written yet
    assert not canary_written(written, rollout(PROGRESSING, CANARY, 50))
    # a newer candidate's canary, held at 0 until its revision is ready
    newer = {**rollout(PROGRESSING, CANARY, 10), "candidate": 3, "candidateUri": "s3://modelyard/iris/3"}
    held = desired_inference_service("iris", production, newer, settings, KNATIVE, written)
    assert held["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert not canary_written(held, newer)
    assert not canary_written(written, newer)

    policy = RolloutPolicy(interval_seconds=60, analyses_per_step=3)
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def ago(seconds: int) -> str:
        return (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    step = {
        **canary,
        "startedAt": ago(600),
        "stepStartedAt": ago(120),
        "lastAnalysisAt": ago(60),
        "evidence": "Pass",
        "passes": 0,
    }
    looked = awaiting_canary(step, ago(0))
    assert (looked["lastAnalysisAt"], looked["evidence"], looked["passes"]) == (ago(0), "NotServed", 0)
    assert looked["message"] == (
        "canary (version 2 answers 10% of requests): the InferenceService does not split 10% to it yet "
        "(Knative mode: the canary is written once the stable version's own revision takes every "
        "request, at 0% until the candidate's revision is ready); no analysis until it does"
    )
    # the next look, on time: the wait was looked at, so the step's clock is not moved forward
    later = now + timedelta(seconds=60)
    assert step_clock(looked, policy, later, 2)["stepStartedAt"] == ago(120)


# ---------------------------------------------------------------------------------------- readiness


def test_knative_readiness_needs_the_latest_revision_ready_with_its_share(settings: Settings) -> None:
    service = knative_canary(settings, 10)
    traffic = [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 10},
        {"revisionName": "iris-predictor-00001", "latestRevision": False, "percent": 90, "tag": "prev"},
    ]
    knative_status(service, "iris-predictor-00002", "iris-predictor-00002", traffic)
    assert inference_service_ready(service, service) == (True, "")
    knative_status(service, "iris-predictor-00002", "iris-predictor-00001", traffic)
    assert inference_service_ready(service, service)[0] is False
    # the route says 10%, but Knative's configuration has not caught up with the Knative Service yet
    knative_status(service, "iris-predictor-00002", "iris-predictor-00002", traffic)
    service["status"]["conditions"][0]["status"] = "Unknown"
    assert inference_service_ready(service, service)[0] is False
    # a new template (the shadow step's) over the stable one: right after the write KServe still reports
    # the stable revision, ready with all traffic; it is the revision the template replaced, not its own
    shadow = desired_inference_service(
        "iris", record(1, STABLE_URI), rollout(PROGRESSING, SHADOW, 0), settings, KNATIVE,
        stable_served(settings),
    )  # fmt: skip
    assert shadow["metadata"]["annotations"][children.REPLACED_REVISION_ANNOTATION] == "iris-predictor-00001"
    knative_status(
        shadow, "iris-predictor-00001", "iris-predictor-00001", everything_to("iris-predictor-00001")
    )
    assert inference_service_ready(shadow, shadow)[0] is False
    knative_status(
        shadow, "iris-predictor-00002", "iris-predictor-00002", everything_to("iris-predictor-00002")
    )
    assert inference_service_ready(shadow, shadow) == (True, "")
    # a write that keeps the template keeps the annotation: no revision is made for it
    again = desired_inference_service(
        "iris", record(1, STABLE_URI), rollout(PROGRESSING, SHADOW, 0), settings, KNATIVE, shadow
    )
    assert again["metadata"]["annotations"] == shadow["metadata"]["annotations"]
    # a Standard InferenceService has no revisions: Ready is KServe's word
    standard = children.inference_service("iris", 1, STABLE_URI, settings, Policies())
    standard["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert inference_service_ready(standard, standard) == (True, "")
    elsewhere = children.inference_service("iris", 2, CANDIDATE_URI, settings, Policies())
    assert inference_service_ready(standard, elsewhere) == (
        False,
        f"the InferenceService does not point at {CANDIDATE_URI} yet",
    )


@pytest.mark.parametrize(("was", "fixed"), [("Knative", False), ("Serverless", False), ("Standard", True)])
def test_a_deployment_mode_kserve_recorded_is_not_changed_by_the_operator(
    settings: Settings, was: str, fixed: bool
) -> None:
    manifest = children.inference_service("iris", 1, STABLE_URI, settings, KNATIVE)
    found = {**manifest, "status": {"deploymentMode": was}}
    why = deployment_mode_fixed(found, "iris", DeploymentMode.KNATIVE)
    if not fixed:
        assert why is None
        return
    assert why == (
        "InferenceService iris runs in Standard mode and spec.serving.deployment_mode is Knative: KServe "
        "does not change a deployment mode; delete InferenceService iris (the operator makes it again, in "
        "Knative mode) or set the mode back"
    )
    # not reconciled yet
    assert deployment_mode_fixed({**manifest, "status": {}}, "iris", DeploymentMode.KNATIVE) is None


# ---------------------------------------------------------------------------------------- KServe's manager

KNATIVE_SERVICE = Kind("serving.knative.dev/v1", "Service")
AUTOSCALER_CONFIG = {
    # Knative's install has this ConfigMap; KServe reads it before it makes any Knative Service
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
    "data": {},
}


def write_knative_status(
    plane: Any, service: dict[str, Any], latest: str, traffic: list[dict[str, Any]]
) -> None:
    """The status Knative's controller writes on ``service`` once revision ``latest`` is ready and its
    route sends ``traffic`` (no Knative controller runs on the local control plane)."""
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    address = f"http://{name}.{namespace}.example.com"
    status = {
        "observedGeneration": service["metadata"]["generation"],
        "latestCreatedRevisionName": latest,
        "latestReadyRevisionName": latest,
        "url": address,
        "address": {"url": address},
        "traffic": traffic,
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            for kind in ("ConfigurationsReady", "Ready", "RoutesReady")
        ],
    }
    plane.kubectl(
        "patch", "ksvc", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


class KServe:
    """One namespace's InferenceService, applied as the operator applies it, and what KServe derives."""

    def __init__(self, plane: Any, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.cluster = Cluster(custom_objects_api(Path(plane.kubeconfig)).api_client)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.apply(INFERENCE_SERVICE, self.namespace, manifest)

    def inference_service(self) -> dict[str, Any]:
        return self.cluster.get(INFERENCE_SERVICE, "iris", self.namespace) or {}

    def knative_service(self) -> dict[str, Any] | None:
        return self.cluster.get(KNATIVE_SERVICE, "iris-predictor", self.namespace)

    def wait_for_traffic(self, traffic: list[dict[str, Any]]) -> dict[str, Any]:
        """The Knative Service once KServe has written ``traffic`` into its spec."""

        def written() -> dict[str, Any] | None:
            service = self.knative_service()
            return service if service and service["spec"].get("traffic") == traffic else None

        found: dict[str, Any] = wait_until(f"KServe to route {traffic}", written, timeout=60)
        return found

    def knative_reports(self, latest: str, traffic: list[dict[str, Any]]) -> None:
        """Stand-in for Knative's controller, which does not run here: the status it writes once revision
        ``latest`` is ready and its route sends ``traffic``. Nothing else of Knative's is imitated."""
        service = self.knative_service()
        assert service is not None
        write_knative_status(self.plane, service, latest, traffic)

    def wait_for_predictor_status(self, **expected: Any) -> dict[str, Any]:
        """The InferenceService once KServe has copied the Knative Service's status into it."""

        def copied() -> dict[str, Any] | None:
            service = self.inference_service()
            predictor = (service.get("status") or {}).get("components", {}).get("predictor", {})
            return service if all(predictor.get(key) == value for key, value in expected.items()) else None

        found: dict[str, Any] = wait_until(f"KServe to report {expected}", copied, timeout=60)
        return found


def revision_env(service: dict[str, Any]) -> dict[str, str]:
    """What the operator told the predictor, as it reached the Knative revision template's container."""
    (container,) = [
        container
        for container in service["spec"]["template"]["spec"]["containers"]
        if container["name"] == "kserve-container"
    ]
    env = container.get("env") or []
    return {item["name"]: item["value"] for item in env if item["name"].startswith("MODELYARD_")}


def revision_uris(service: dict[str, Any]) -> set[str]:
    """The model bundles the Knative revision template names (KServe's storage initializer fetches it)."""
    template = json.dumps(service["spec"]["template"])
    return {uri for uri in (STABLE_URI, CANDIDATE_URI) if uri in template}


@pytest.mark.cluster
@pytest.mark.slow
def test_kserve_turns_each_knative_step_into_the_knative_traffic_split_asked_for(
    namespace: str, model_crd: Any, settings: Settings
) -> None:
    """Through the real API server and KServe's manager: a Knative InferenceService becomes a Knative
    Service scaled by Knative's KPA; a canary step's canaryTrafficPercent becomes a split between the
    latest revision (the candidate's template) and the last rolled-out one; a rollback's first write sends
    the latest revision 0% and restores the stable template, and only once the stable template's revision
    is reported ready does the operator give the latest revision all traffic again.

    No Knative controller runs here: the revision status it would write (which revision is ready, what its
    route sends where) is written by ``KServe.knative_reports``; KServe's manager does the rest, reading
    its previous and latest rolled-out revisions from that status as it would on a cluster."""
    model_crd.kubectl("create", "namespace", "knative-serving", check=False)
    model_crd.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(AUTOSCALER_CONFIG))
    model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(SERVING_RUNTIME))
    kserve = KServe(model_crd, namespace)
    stable = record(1, STABLE_URI)

    first_write = desired_inference_service("iris", stable, None, settings, KNATIVE, None)
    kserve.apply(first_write)
    service = kserve.wait_for_traffic([{"latestRevision": True, "percent": 100}])
    # KServe's webhook accepted the mode and its controller reconciled the InferenceService in it
    accepted = kserve.inference_service()
    assert accepted["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert accepted["status"]["deploymentMode"] == "Knative"
    template = service["spec"]["template"]["metadata"]["annotations"]
    assert template["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert template["autoscaling.knative.dev/metric"] == "concurrency"
    assert template["autoscaling.knative.dev/target"] == "80"
    assert (template["autoscaling.knative.dev/min-scale"], template["autoscaling.knative.dev/max-scale"]) == (
        "1",
        "1",
    )
    assert revision_env(service) == {children.MODEL_VERSION_ENV: "1"}
    assert revision_uris(service) == {STABLE_URI}
    first = [{"revisionName": "iris-predictor-00001", "latestRevision": True, "percent": 100}]
    kserve.knative_reports("iris-predictor-00001", first)
    found = kserve.wait_for_predictor_status(latestRolledoutRevision="iris-predictor-00001")
    # KServe's ingress reconciler names the InferenceService's URL after the Knative route's domain
    assert found["status"]["url"] == f"http://iris.{namespace}.example.com"
    assert inference_service_ready(found, first_write) == (True, ""), found["status"]

    # a canary step: the candidate's template, 10% to it and 90% to the last rolled-out revision
    canary = rollout(PROGRESSING, CANARY, 10)
    kserve.apply(desired_inference_service("iris", stable, canary, settings, KNATIVE, found))
    prev = {"revisionName": "iris-predictor-00001", "latestRevision": False, "tag": "prev"}
    service = kserve.wait_for_traffic([{"latestRevision": True, "percent": 10}, {**prev, "percent": 90}])
    assert revision_env(service) == {children.MODEL_VERSION_ENV: "2"}
    assert revision_uris(service) == {CANDIDATE_URI}
    split = [
        {"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 10},
        {**prev, "percent": 90},
    ]
    kserve.knative_reports("iris-predictor-00002", split)
    found = kserve.wait_for_predictor_status(latestReadyRevision="iris-predictor-00002", traffic=split)
    # still the first revision: the candidate's never took all traffic
    assert found["status"]["components"]["predictor"]["latestRolledoutRevision"] == "iris-predictor-00001"

    # rolled back: the stable template, and the latest revision (still the candidate's until the new one
    # is ready) gets 0%
    rolled_back = rollout(ROLLED_BACK, CANARY, 10)
    held = desired_inference_service("iris", stable, rolled_back, settings, KNATIVE, found)
    assert held["spec"]["predictor"]["canaryTrafficPercent"] == 0
    kserve.apply(held)
    service = kserve.wait_for_traffic([{"latestRevision": True, "percent": 0}, {**prev, "percent": 100}])
    assert revision_env(service) == {children.MODEL_VERSION_ENV: "1"}
    assert revision_uris(service) == {STABLE_URI}
    # KServe's status still says what Knative last reported (the candidate's revision at 10%): held at 0
    again = desired_inference_service(
        "iris", stable, rolled_back, settings, KNATIVE, kserve.inference_service()
    )
    assert again["spec"]["predictor"]["canaryTrafficPercent"] == 0

    restored = [
        {"revisionName": "iris-predictor-00003", "latestRevision": True, "percent": 0},
        {**prev, "percent": 100},
    ]
    kserve.knative_reports("iris-predictor-00003", restored)
    found = kserve.wait_for_predictor_status(latestReadyRevision="iris-predictor-00003", traffic=restored)
    released = desired_inference_service("iris", stable, rolled_back, settings, KNATIVE, found)
    assert "canaryTrafficPercent" not in released["spec"]["predictor"]
    kserve.apply(released)
    kserve.wait_for_traffic([{"latestRevision": True, "percent": 100}])


# ---------------------------------------------------------------------------------------- the operator


class KnativeStatus:
    """Stand-in for Knative's controller, which does not run on the local control plane: for each
    generation of the Knative Services in ``namespace`` it writes the status Knative would once done, a
    revision per change of the template (ready at once, as kwok's pods are) and the route's traffic
    resolved from the spec (``latestRevision`` to the latest ready revision). It records each generation
    it answered, as (the revision's MODELYARD_ env, its traffic). Nothing here shifts traffic."""

    def __init__(self, plane: Any, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.cluster = Cluster(custom_objects_api(Path(plane.kubeconfig)).api_client)
        self.revisions: dict[str, list[tuple[str, str]]] = {}  # (template, revision), per Knative Service
        self.answered: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KnativeStatus:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for service in self.cluster.list(KNATIVE_SERVICE, self.namespace, {}):
                if (service.get("status") or {}).get("observedGeneration") != service["metadata"][
                    "generation"
                ]:
                    self._report(service)

    def _report(self, service: dict[str, Any]) -> None:
        name = service["metadata"]["name"]
        revisions = self.revisions.setdefault(name, [])
        template = json.dumps(service["spec"]["template"], sort_keys=True)
        if not revisions or revisions[-1][0] != template:  # Knative's Configuration: a revision per change
            revisions.append((template, f"{name}-{len(revisions) + 1:05d}"))
        latest = revisions[-1][1]
        traffic = [
            {**target, "revisionName": latest if target.get("latestRevision") else target["revisionName"]}
            for target in service["spec"].get("traffic") or []
        ]
        write_knative_status(self.plane, service, latest, traffic)
        self.answered.append((revision_env(service), traffic))


@pytest.fixture
def knative_operator(
    model_crd: Any, tmp_path: Path, s3: S3Service, prometheus: Prometheus
) -> Iterator[tuple[Harness, KnativeStatus]]:
    """A namespace of its own, with the operator analysing from the fixed series and the stand-in for
    Knative's status."""
    model_crd.kubectl("create", "namespace", "knative-serving", check=False)
    model_crd.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(AUTOSCALER_CONFIG))
    namespace = f"op-{uuid.uuid4().hex[:8]}"
    model_crd.create_namespace(namespace)
    harness = Harness(model_crd, namespace, tmp_path, s3)
    harness.install_settings()
    harness.start_operator(MODELYARD_OPERATOR__PROMETHEUS_URL=prometheus.url)
    try:
        with KnativeStatus(model_crd, namespace) as knative:
            yield harness, knative
    finally:
        harness.stop_operator()
        model_crd.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.cluster
@pytest.mark.slow
def test_the_operator_rolls_a_knative_candidate_back_without_handing_it_all_traffic(
    knative_operator: tuple[Harness, KnativeStatus], tmp_path: Path
) -> None:
    """The operator, KServe's manager and the stand-in for Knative's status (``KnativeStatus``): a bad
    candidate's canary (no shadow step) is Knative's 50% split, and its rollback first restores the stable
    template with the latest revision at 0%, then gives the latest revision (the stable template's) all
    traffic once KServe reports it ready."""
    harness, knative = knative_operator
    policy = {"shadow": False, "canary_steps": [50], "interval_seconds": 5, "analyses_per_step": 1}
    train_two_versions(harness, "bad", tmp_path, policy, serving={"deployment_mode": "Knative"})
    wait_until("RolledBack", lambda: rollout_of(harness, "bad").get("state") == "RolledBack", timeout=120)

    def released() -> bool:
        service = harness.get("inferenceservice", "bad") or {}
        return "canaryTrafficPercent" not in service["spec"]["predictor"]

    wait_until("canaryTrafficPercent to go", released, timeout=60)
    stable, candidate = {children.MODEL_VERSION_ENV: "1"}, {children.MODEL_VERSION_ENV: "2"}
    first, canary, restored = "bad-predictor-00001", "bad-predictor-00002", "bad-predictor-00003"
    everything = (stable, [{"revisionName": restored, "latestRevision": True, "percent": 100}])
    wait_until(
        "the restored revision to take all traffic",
        lambda: knative.answered[-1] == everything,
        seen=lambda: knative.answered,
    )
    split = [
        {"revisionName": canary, "latestRevision": True, "percent": 50},
        {"revisionName": first, "latestRevision": False, "percent": 50, "tag": "prev"},
    ]
    held = [
        {"revisionName": restored, "latestRevision": True, "percent": 0},
        {"revisionName": first, "latestRevision": False, "percent": 100, "tag": "prev"},
    ]
    answered = [
        entry for index, entry in enumerate(knative.answered) if entry not in knative.answered[:index]
    ]
    assert answered == [
        (stable, [{"revisionName": first, "latestRevision": True, "percent": 100}]),
        (candidate, split),
        (stable, held),
        everything,
    ]
    assert harness.model("bad")["status"]["servingVersion"] == 1
    # the Model is Ready again once KServe reports the restored revision taking all traffic
    harness.wait_for_condition("bad", "Ready", status="True")


@pytest.mark.cluster
@pytest.mark.slow
def test_the_operator_promotes_a_knative_candidate_through_shadow_and_knatives_canary(
    knative_operator: tuple[Harness, KnativeStatus], tmp_path: Path
) -> None:
    """A good candidate in Knative mode: the shadow step is the stable revision told of the candidate (it
    takes all traffic); the canary step first restores the plain stable revision (told of no rollout, so
    nothing is mirrored to the candidate), then writes a revision of the candidate's own template at 50%
    beside it; promotion is the same revision at 100%, with no new revision."""
    harness, knative = knative_operator
    policy = {"shadow": True, "canary_steps": [50], "interval_seconds": 5, "analyses_per_step": 1}
    train_two_versions(harness, "good", tmp_path, policy, serving={"deployment_mode": "Knative"})
    wait_until("Promoted", lambda: rollout_of(harness, "good").get("state") == "Promoted", timeout=120)
    candidate = {children.MODEL_VERSION_ENV: "2"}
    everything = (
        candidate,
        [{"revisionName": "good-predictor-00004", "latestRevision": True, "percent": 100}],
    )
    wait_until(
        "the candidate's revision to take all traffic",
        lambda: knative.answered[-1] == everything,
        seen=lambda: knative.answered,
    )
    answered = [
        entry for index, entry in enumerate(knative.answered) if entry not in knative.answered[:index]
    ]
    stable, shadow, plain, canary, promoted = answered
    assert stable == (
        {children.MODEL_VERSION_ENV: "1"},
        [{"revisionName": "good-predictor-00001", "latestRevision": True, "percent": 100}],
    )
    assert shadow[0][children.ROLLOUT_MODE_ENV] == "shadow"
    assert shadow[0][children.MODEL_VERSION_ENV] == "1"
    assert shadow[1] == [{"revisionName": "good-predictor-00002", "latestRevision": True, "percent": 100}]
    assert plain == (
        {children.MODEL_VERSION_ENV: "1"},
        [{"revisionName": "good-predictor-00003", "latestRevision": True, "percent": 100}],
    )
    assert canary == (
        candidate,
        [
            {"revisionName": "good-predictor-00004", "latestRevision": True, "percent": 50},
            {"revisionName": "good-predictor-00003", "latestRevision": False, "percent": 50, "tag": "prev"},
        ],
    )
    assert promoted == everything
    wait_until("servingVersion 2", lambda: harness.model("good")["status"]["servingVersion"] == 2)
