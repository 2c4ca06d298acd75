"""What the operator makes is what the chart makes: an InferenceService and a training Job built from the
settings the chart gives the operator get the chart's own predictor's and Job's service account, security
contexts, resources and the release labels its NetworkPolicies admit; a schedule's pod only asks for a
run, as the chart's least-privileged account. The training pod's Secret and ConfigMap are required, its
database key is the chart's, and long Model names keep distinct children."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from modelyard.operator import children
from modelyard.operator.resource import Policies
from modelyard.settings import ServingSettings, Settings, load_settings

from ..chart.conftest import named, of_kind, rendered


def operator_settings(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the chart's operator pod runs with: its env and its ConfigMap's keys."""
    for key in [key for key in os.environ if key.startswith("MODELYARD_")]:
        monkeypatch.delenv(key)
    (container,) = named(objects, "Deployment", "modelyard-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    config = named(objects, "ConfigMap", "modelyard-config")["data"]
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    return load_settings()


def admitted_by_the_network_policies(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The labels a client pod needs to reach Postgres and the object store."""
    selectors = [
        peer["podSelector"].get("matchLabels", {})  # an empty selector admits every pod of the namespace
        for policy in of_kind(objects, "NetworkPolicy")
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer
    ]
    assert selectors, "the chart renders no NetworkPolicy to compare with"
    merged: dict[str, str] = {}
    for selector in selectors:
        merged.update(selector)
    return merged


def test_an_operator_built_inference_service_is_the_charts_own_predictor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = rendered("01-bundled")
    settings = operator_settings(objects, monkeypatch)
    ours = children.inference_service("iris", 1, "s3://modelyard/iris/1", settings, Policies())
    theirs = named(objects, "InferenceService", "iris")
    predictor, expected = ours["spec"]["predictor"], theirs["spec"]["predictor"]
    assert predictor["serviceAccountName"] == expected["serviceAccountName"] == "modelyard-serving"
    assert predictor["securityContext"] == expected["securityContext"]
    assert predictor["labels"] == expected["labels"]
    assert admitted_by_the_network_policies(objects).items() <= predictor["labels"].items()
    assert predictor["automountServiceAccountToken"] is False
    assert predictor["model"]["resources"] == expected["model"]["resources"]
    assert predictor["model"]["runtime"] == expected["model"]["runtime"]


def test_a_models_own_resources_win_over_the_charts_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = operator_settings(rendered("01-bundled"), monkeypatch)
    policies = Policies.model_validate({"serving": {"resources": {"limits": {"memory": "3Gi"}}}})
    model = children.inference_service("iris", 1, "s3://b/iris/1", settings, policies)["spec"]["predictor"]
    assert model["model"]["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "3Gi"},
    }


def test_an_operator_built_training_job_is_the_charts_own_training_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = rendered("01-bundled")
    settings = operator_settings(objects, monkeypatch)
    job = children.training_job("iris", "abc", settings, Policies())
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    cron = named(objects, "CronJob", "modelyard-train-iris")["spec"]["jobTemplate"]["spec"]["template"]
    (expected,) = cron["spec"]["containers"]
    assert pod["spec"]["serviceAccountName"] == "modelyard-jobs"  # no token: it deploys nothing
    assert pod["spec"]["securityContext"] == cron["spec"]["securityContext"]
    assert container["securityContext"] == expected["securityContext"]
    assert container["image"] == expected["image"]
    assert container["resources"] == expected["resources"]
    assert container["envFrom"] == expected["envFrom"]
    assert admitted_by_the_network_policies(objects).items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training"


def test_the_training_pods_secrets_are_required_and_the_database_key_is_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELYARD_PIPELINE__DATABASE_SECRET", "external-db")
    monkeypatch.setenv("MODELYARD_PIPELINE__DATABASE_SECRET_KEY", "url")
    job = children.training_job("iris", "abc", load_settings(), Policies())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["MODELYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "external-db", "key": "url"}
    assert "optional" not in json.dumps(container), "a missing Secret or ConfigMap must stop the pod"
    run_id = env["MODELYARD_PIPELINE__RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert run_id == "metadata.labels['batch.kubernetes.io/job-name']"


def train_args(local: bool, local_in_process: bool) -> list[str]:
    settings = load_settings()
    operator = settings.operator.model_copy(update={"local": local, "local_in_process": local_in_process})
    job = children.training_job("iris", "abc", settings.model_copy(update={"operator": operator}), Policies())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def test_a_cluster_pod_trains_in_process_and_a_local_job_on_kfp_local_unless_told_otherwise() -> None:
    spec = f"{children.SPEC_MOUNT}/{children.SPEC_FILE}"
    in_process = ["train", "--spec", spec, "--in-process", "--json"]
    assert train_args(local=False, local_in_process=False) == in_process
    assert train_args(local=False, local_in_process=True) == in_process
    assert train_args(local=True, local_in_process=False) == ["train", "--spec", spec, "--json"]
    assert train_args(local=True, local_in_process=True) == in_process


def test_the_charts_config_map_names_the_database_key_its_own_jobs_read() -> None:
    objects = rendered("02-external")
    config = named(objects, "ConfigMap", "modelyard-config")["data"]
    migrate = named(objects, "Job", "modelyard-migrate")["spec"]["template"]["spec"]["containers"][0]
    ref = next(v for v in migrate["env"] if v["name"] == "MODELYARD_DATABASE_URL")["valueFrom"][
        "secretKeyRef"
    ]
    assert config["MODELYARD_PIPELINE__DATABASE_SECRET_KEY"] == ref["key"]
    assert config["MODELYARD_PIPELINE__DATABASE_SECRET"] == ref["name"]


def test_long_model_names_that_share_a_beginning_keep_distinct_children() -> None:
    first, second = "a" * 58 + "-one", "a" * 58 + "-two"
    for name_of, limit in (
        (children.spec_config_map_name, 63),
        (lambda model: children.training_job_name(model, "0123456789"), 63),
        (lambda model: children.retrain_job_name(model, "2026-12-02T05:00:00Z"), 63),
        (children.schedule_name, 52),
    ):
        ours, theirs = name_of(first), name_of(second)
        assert ours != theirs
        assert len(ours) <= limit and len(theirs) <= limit
    assert children.spec_config_map_name("iris") == "iris-spec"
    assert children.schedule_name("iris") == "iris-retrain"


def test_the_env_the_operator_gives_the_predictor_names_serving_settings() -> None:
    names = [
        children.MODEL_VERSION_ENV,
        children.CANDIDATE_URI_ENV,
        children.CANDIDATE_VERSION_ENV,
        children.ROLLOUT_MODE_ENV,
        children.CANARY_PERCENT_ENV,
    ]
    for name in names:
        assert name.startswith("MODELYARD_SERVING__"), name
        assert name.removeprefix("MODELYARD_SERVING__").lower() in ServingSettings.model_fields, name


def test_a_schedules_cron_job_asks_the_operator_for_a_run_as_the_charts_least_privileged_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = rendered("01-bundled")
    settings = operator_settings(objects, monkeypatch)
    cron = children.schedule_cron_job("iris", "models", "0 3 * * *", settings)
    assert cron["metadata"]["name"] == children.schedule_name("iris")
    spec = cron["spec"]
    assert (spec["schedule"], spec["concurrencyPolicy"], spec["startingDeadlineSeconds"]) == (
        "0 3 * * *",
        "Forbid",
        300,
    )
    job = spec["jobTemplate"]
    # not a run of the Model: the operator's runs are the Jobs with its model label
    assert children.MODEL_LABEL not in job["metadata"]["labels"]
    assert job["metadata"]["labels"][children.SCHEDULE_LABEL] == "iris"
    pod = job["spec"]["template"]
    # the release's selectors find it (as they find a training pod); it is labelled as what it is
    assert admitted_by_the_network_policies(objects).items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"][children.COMPONENT_LABEL] == "schedule"
    assert pod["metadata"]["labels"][children.SCHEDULE_LABEL] == "iris"
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == children.SCHEDULE_REQUEST_RESOURCES
    assert container["command"] == ["modelyard"]
    assert container["args"] == ["request-run", "iris", "--namespace", "models"]
    # a refused request (its own exit code) fails the Job at once, the Failed condition naming the code
    assert job["spec"]["podFailurePolicy"] == {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container["name"],
                    "operator": "In",
                    "values": [children.REQUEST_REFUSED_EXIT_CODE],
                },
            }
        ]
    }
    assert container["image"] == settings.pipeline.image
    # it trains nothing: no spec, no Secret, no ConfigMap, no database
    assert "envFrom" not in container and all("valueFrom" not in variable for variable in container["env"])
    assert all(set(volume) == {"name", "emptyDir"} for volume in pod["spec"]["volumes"])
    training = children.training_job("iris", "abc", settings, Policies())["spec"]["template"]["spec"]
    assert pod["spec"]["securityContext"] == training["securityContext"]
    assert container["securityContext"] == training["containers"][0]["securityContext"]

    account = pod["spec"]["serviceAccountName"]
    assert account == "modelyard-schedule" != training["serviceAccountName"]
    assert pod["spec"]["automountServiceAccountToken"] is True  # its token is how it asks
    assert named(objects, "ServiceAccount", account)["automountServiceAccountToken"] is False
    (binding,) = [
        binding
        for binding in of_kind(objects, "RoleBinding")
        if any(subject["name"] == account for subject in binding["subjects"])
    ]
    role = named(objects, "Role", binding["roleRef"]["name"])
    assert role["rules"] == [{"apiGroups": ["modelyard.io"], "resources": ["models"], "verbs": ["patch"]}]


def test_a_requests_job_is_named_for_its_trigger_and_carries_its_annotation() -> None:
    requested = "2026-12-02T03:00:00.000000+00:00"
    scheduled = children.training_job(
        "iris", "abc", load_settings(), Policies(), request=requested, trigger=children.SCHEDULE
    )
    meta = scheduled["metadata"]
    assert meta["name"] == children.retrain_job_name("iris", requested, children.SCHEDULE)
    assert meta["name"].startswith("iris-schedule-")
    assert meta["labels"][children.TRIGGER_LABEL] == "schedule"
    assert meta["annotations"] == {
        children.SPEC_HASH_ANNOTATION: "abc",
        children.SCHEDULE_ANNOTATION: requested,
    }
    alerted = children.training_job("iris", "abc", load_settings(), Policies(), request=requested)
    assert (
        alerted["metadata"]["name"].startswith("iris-alert-") and alerted["metadata"]["name"] != meta["name"]
    )
    assert alerted["metadata"]["annotations"][children.RETRAIN_ANNOTATION] == requested
