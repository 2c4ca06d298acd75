"""The Model CRD: generated from the pydantic models, checked in to the chart, and enforced by a real API
server; what the schema cannot say is caught by parse_resource_spec, naming the field."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.operator.crd import CHART_CRD, render_crd, structural
from modelyard.operator.resource import ResourceSpecError, parse_resource_spec
from modelyard.spec import Algorithm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "iris-model.yaml"


def model(name: str = "iris", **spec: Any) -> dict[str, Any]:
    body = {"data": {"path": "/data/iris.csv"}, "target": "species", **spec}
    return {"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": body}


def test_the_checked_in_crd_is_what_the_models_generate() -> None:
    assert CHART_CRD.read_text() == render_crd(), "the chart's CRD is stale: run `make crd`"


def test_the_spec_schema_carries_the_model_specs_constraints() -> None:
    version = yaml.safe_load(render_crd())["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert "name" not in props, "the Model's own name is the model's name"
    assert spec["required"] == ["data", "target"]
    assert props["cv_folds"] == {"type": "integer", "maximum": 20, "minimum": 2}
    assert props["algorithms"]["items"]["enum"] == [a.value for a in Algorithm]
    assert props["holdout"]["exclusiveMinimum"] is True
    assert props["data"]["properties"]["path"]["nullable"] is True
    assert set(props) >= {"training", "serving", "rollout"}
    assert "additionalProperties" not in json.dumps(spec["properties"]["data"])


def test_structural_refuses_a_union_the_api_server_cannot_express() -> None:
    with pytest.raises(ValueError, match="only X-or-null unions"):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})


def test_the_example_model_parses() -> None:
    resource = yaml.safe_load(EXAMPLE.read_text())
    spec, policies = parse_resource_spec(resource["metadata"]["name"], resource["spec"])
    assert spec.name == "iris"
    assert policies.serving.min_replicas >= 1


@pytest.mark.parametrize(
    ("name", "spec", "field", "message"),
    [
        ("iris", {"data": {"path": "a.csv", "table": "t"}}, "spec.data", "give exactly one of"),
        ("iris.v2", {}, "metadata.name", "should match pattern"),
        ("iris", {"serving": {"min_replicas": 3, "max_replicas": 2}}, "spec.serving", "below min_replicas"),
        ("iris", {"rollout": {"canary_steps": [50, 10]}}, "spec.rollout.canary_steps", "must increase"),
        (
            "iris",
            {"serving": {"resources": {"limits": {"gpu": "1"}}}},
            "spec.serving.resources.limits",
            "'gpu': only cpu and memory",
        ),
        ("iris", {"features": [{"name": "species", "type": "numeric"}]}, "spec", "cannot also be a feature"),
        (
            "iris",
            {"training": {"schedule": "61 3 * * *"}},
            "spec.training.schedule",
            "'61 3 \\* \\* \\*': minute 61 is out of range 0-59",
        ),
        (
            "iris",
            {"training": {"schedule": "0 3 * * 7"}},
            "spec.training.schedule",
            "day of week 7 is out of",
        ),
        ("iris", {"training": {"schedule": "0 3 * foo *"}}, "spec.training.schedule", "month 'foo' is not a"),
        (
            "iris",
            {"training": {"schedule": "0 3 mon * *"}},
            "spec.training.schedule",
            "'mon' is not a number$",
        ),
        ("iris", {"training": {"schedule": "0 9-5 * * *"}}, "spec.training.schedule", "'9-5' is not a value"),
        ("iris", {"training": {"schedule": "*/0 * * * *"}}, "spec.training.schedule", "a step is a positive"),
        (
            "iris",
            {"rollout": {"interval_seconds": 60, "analyses_per_step": 3, "progress_deadline_seconds": 120}},
            "spec.rollout",
            r"progress_deadline_seconds 120 is shorter than the 240 s a step needs \(\(analyses_per_step "
            r"\+ 1\) x interval_seconds: its analyses, and one look that may find the candidate not served",
        ),
    ],
)
def test_what_the_schema_cannot_say_names_the_field(
    name: str, spec: dict[str, Any], field: str, message: str
) -> None:
    body = model(name, **spec)
    with pytest.raises(ResourceSpecError, match=message) as caught:
        parse_resource_spec(name, body["spec"])
    assert caught.value.field == field
    assert caught.value.message.startswith(field)


@pytest.mark.parametrize(
    "schedule", ["0 3 * * 0", "*/15 9-17 ? JAN-JUN mon-fri", "5/10 0,12 1-31/2 * SAT", "@weekly"]
)
def test_a_schedule_the_cron_job_controller_takes_is_taken(schedule: str) -> None:
    _, policies = parse_resource_spec("iris", model("iris", training={"schedule": schedule})["spec"])
    assert policies.training.schedule == schedule


# ---------------------------------------------------------------- the real API server


@pytest.mark.cluster
def test_the_api_server_accepts_a_valid_model_and_prints_its_columns(model_crd: Any, namespace: str) -> None:
    resource = yaml.safe_load(EXAMPLE.read_text())
    model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(resource))
    table = model_crd.kubectl("get", "models", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SERVING", "PHASE", "READY", "AGE"]
    assert table[1].split()[0] == "iris"


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cv_folds": 1}, "spec.cv_folds: Invalid value: 1: spec.cv_folds in body should be greater than or"),
        ({"algorithms": ["xgboost"]}, 'spec.algorithms[0]: Unsupported value: "xgboost"'),
        ({"data": {"path": "a.csv", "format": "json"}}, "spec.data.format in body should match"),
        ({"serving": {"max_replicas": 0}}, "spec.serving.max_replicas: Invalid value: 0"),
        ({"rollout": {"strategy": "blue-green"}}, 'unknown field "spec.rollout.strategy"'),
        ({"rollout": {"inconclusive_limit": 0}}, "spec.rollout.inconclusive_limit: Invalid value: 0"),
        (
            {"rollout": {"progress_deadline_seconds": 5}},
            "spec.rollout.progress_deadline_seconds: Invalid value: 5",
        ),
        ({"training": {"schedule": "every day"}}, "spec.training.schedule in body should match"),
    ],
)
def test_the_api_server_refuses_an_invalid_model_naming_the_field(
    model_crd: Any, namespace: str, spec: dict[str, Any], message: str
) -> None:
    result = model_crd.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=json.dumps(model(**spec)), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.cluster
def test_a_model_without_data_is_refused(model_crd: Any, namespace: str) -> None:
    body = model()
    del body["spec"]["data"]
    result = model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(body), check=False)
    assert "spec.data: Required value" in result.stderr, result.stderr


def every_status_field() -> dict[str, Any]:
    """A status with every field the controller writes, a rollout and an analysis among them."""
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "InferenceService iris serves iris@1",
        "lastTransitionTime": "2026-12-02T05:00:00Z",
        "observedGeneration": 2,
    }
    return {
        "observedGeneration": 2,
        "phase": "RollingOut",
        "conditions": [condition],
        "latestRun": {
            "kind": "Job",
            "name": "iris-alert-0123456789",
            "generation": 2,
            "trigger": "alert",
            "specHash": "abcdef0123",
            "startedAt": "2026-12-02T05:00:00Z",
            "request": "2026-12-02T04:59:00.000000+00:00",
            "answeredRequest": "2026-12-02T04:59:00.000000+00:00",
            "answeredSchedule": "2026-12-02T03:00:00.000000+00:00",
        },
        "versions": [
            {
                "version": 2,
                "stage": "staging",
                "storageUri": "s3://b/iris/2",
                "score": 0.95,
                "createdAt": "2026-12-02T05:00:00Z",
            }
        ],
        "servingVersion": 1,
        "url": "http://iris.example",
        "inferenceService": "iris",
        "lastAnalysis": {
            "verdict": "fail",
            "at": "2026-12-02T05:01:00Z",
            "stable": 1,
            "candidate": 2,
            "summary": "agreement 40.0% of 100 shadowed rows (minimum 80%)",
            "checks": [
                {"name": "agreement", "value": 0.4, "threshold": 0.8, "passed": False},
                {"name": "live_accuracy_delta", "value": None, "threshold": -0.02, "passed": None},
            ],
        },
        "rollout": {
            "candidate": 2,
            "stable": 1,
            "candidateUri": "s3://b/iris/2",
            "state": "RolledBack",
            "step": 1,
            "mode": "canary",
            "percent": 10,
            "passes": 0,
            "failures": 1,
            "startedAt": "2026-12-02T05:00:00Z",
            "lastAnalysisAt": "2026-12-02T05:01:00Z",
            "failedChecks": ["agreement"],
            "message": "agreement failed",
            "steps": [{"mode": "shadow", "percent": 0}, {"mode": "canary", "percent": 10}],
            "stepStartedAt": "2026-12-02T05:00:30Z",
            "inconclusive": 0,
            "evidence": "Fail",
            "specHash": "abcdef0123",
            "paused": False,
            "reason": "RolledBack",
        },
    }


def test_the_status_model_holds_every_field_the_controller_writes() -> None:
    from modelyard.operator.crd import ModelStatus

    ModelStatus.model_validate(every_status_field())
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ModelStatus.model_validate({**every_status_field(), "analysis": {}})


def test_a_status_field_this_operator_refuses_is_dropped_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What an operator of another version wrote is no crash loop: the rest of the status is kept."""
    from modelyard.operator.controller import readable_status

    status = every_status_field()
    status["rollout"]["evidence"] = "Maybe"
    status["rollout"]["strategy"] = "blue-green"
    status["conditions"].append({"type": "Trained"})  # lacks the rest
    status["lastAnalysis"]["verdict"] = "maybe"  # a required field: the analysis goes
    with caplog.at_level(logging.WARNING, logger="modelyard.operator.controller"):
        kept = readable_status(status, "Model ns/iris")
    expected = every_status_field()
    del expected["rollout"]["evidence"]
    del expected["lastAnalysis"]
    assert kept == expected
    lines = caplog.messages
    assert any(
        line.startswith("Model ns/iris: status.rollout.evidence dropped: String should match pattern")
        for line in lines
    )
    assert any("status.rollout.strategy dropped: Extra inputs are not permitted" in line for line in lines)
    assert any("status.conditions.1 dropped" in line for line in lines)
    assert any("status.lastAnalysis dropped" in line for line in lines)
    assert readable_status(every_status_field(), "Model ns/iris") == every_status_field()


@pytest.mark.cluster
def test_the_api_server_keeps_every_status_field_the_controller_writes(
    model_crd: Any, namespace: str
) -> None:
    model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model()))
    found = json.loads(model_crd.kubectl("get", "model", "iris", "-n", namespace, "-o", "json").stdout)
    status = every_status_field()
    found["status"] = status
    # replaced, as the controller writes it (a merge patch would read a null as "remove")
    model_crd.kubectl("replace", "-n", namespace, "--subresource=status", "-f", "-", stdin=json.dumps(found))
    found = json.loads(model_crd.kubectl("get", "model", "iris", "-n", namespace, "-o", "json").stdout)
    assert found["status"] == status, "the CRD's schema pruned a status field"
