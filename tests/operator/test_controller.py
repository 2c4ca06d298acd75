"""The controller's decisions that need no control plane: which Job is the current spec's run, which
requests for a run start none (a schedule's while a run is in flight), what a schedule's failed request
is told as, when a rollout waits (for its
spec, for an InferenceService that cannot be written), how the step deadline counts, and what ends a
paused rollout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelyard.operator import children
from modelyard.operator.controller import (
    DEPLOYMENT_MODE_FIXED,
    current_job,
    job_in_flight,
    paused_for_spec,
    rollout_pause,
    schedule_request_failed,
    spec_run_failed,
    step_clock,
)
from modelyard.operator.requests import Refusal, refusal
from modelyard.operator.resource import RolloutPolicy


def job(name: str, spec_hash: str | None, request: str | None = None) -> dict[str, Any]:
    annotations = {} if spec_hash is None else {children.SPEC_HASH_ANNOTATION: spec_hash}
    if request is not None:
        annotations[children.RETRAIN_ANNOTATION] = request
    return {"metadata": {"name": name, "annotations": annotations}}


def test_after_a_spec_revert_the_run_is_the_newest_job_of_the_current_spec_not_the_newest_job() -> None:
    jobs = [job("iris-train-a", "a"), job("iris-train-b", "b")]  # oldest first: A, then B, then back to A
    assert current_job(jobs, "a") == jobs[0]
    assert current_job(jobs, "b") == jobs[1]
    assert current_job(jobs, "c") is None


def test_a_retraining_is_its_specs_run_and_an_unannotated_schedule_job_counts_as_current() -> None:
    retrained = job("iris-alert-1", "a", request="2026-01-01")
    jobs = [job("iris-train-a", "a"), job("iris-train-b", "b"), retrained]
    assert current_job(jobs, "a") == retrained
    old_schedule = job("iris-retrain-1", None)
    assert current_job([*jobs, old_schedule], "b") == old_schedule


def finished(name: str, condition: str) -> dict[str, Any]:
    return {**job(name, "a"), "status": {"conditions": [{"type": condition, "status": "True"}]}}


def test_the_job_in_flight_is_the_newest_that_has_not_finished() -> None:
    assert job_in_flight([finished("iris-train-a", "Complete"), finished("iris-alert-1", "Failed")]) is None
    assert (
        job_in_flight([job("iris-train-a", "a"), finished("iris-alert-1", "Complete")]) == "Job iris-train-a"
    )
    assert job_in_flight([job("iris-train-a", "a"), job("iris-alert-1", "a")]) == "Job iris-alert-1"
    assert job_in_flight([]) is None


def test_a_schedule_request_while_a_run_is_in_flight_is_skipped_and_answered_an_alert_is_not() -> None:
    def nothing_in_flight() -> None:
        return None

    def in_flight() -> str:
        return "Job iris-train-a"

    def not_asked() -> str:
        raise AssertionError("an alert asked which run is in flight")

    assert refusal(children.SCHEDULE, "t1", True, nothing_in_flight) is None
    assert refusal(children.SCHEDULE, "t1", False, nothing_in_flight) is None  # a schedule is no alert
    assert refusal(children.SCHEDULE, "t1", True, in_flight) == Refusal(
        "ScheduleSkipped",
        "schedule request t1 skipped: Job iris-train-a is still in flight (no runs pile up; the next "
        "scheduled time asks again)",
        answered=True,
    )
    # alerts keep their behaviour: a run in flight does not stop one; retrain_on_alert false ignores it
    assert refusal(children.ALERT, "t1", True, not_asked) is None
    assert refusal(children.ALERT, "t1", False, not_asked) == Refusal(
        "RetrainIgnored",
        "retraining requested (t1), but spec.training.retrain_on_alert is false",
        answered=False,
    )


def failed_request(reason: str, message: str) -> dict[str, Any]:
    failed = {"type": "Failed", "status": "True", "reason": reason, "message": message}
    return {
        "metadata": {"name": "iris-retrain-29420000"},
        "spec": {"template": {"spec": {"serviceAccountName": "default"}}},
        "status": {"conditions": [{**failed, "type": "FailureTarget"}, failed]},
    }


def test_a_failed_schedule_request_names_the_role_only_when_the_api_server_refused_it() -> None:
    refused = failed_request(
        "PodFailurePolicy",
        f"Container request-run for pod models/iris-retrain-29420000-x7k2p failed with exit code "
        f"{children.REQUEST_REFUSED_EXIT_CODE} matching FailJob rule at index 0",
    )
    assert schedule_request_failed(refused) == (
        "Job iris-retrain-29420000 of the schedule failed to ask for a run: PodFailurePolicy: Container "
        "request-run for pod models/iris-retrain-29420000-x7k2p failed with exit code 3 matching FailJob "
        "rule at index 0; the API server refused it: its ServiceAccount default needs patch on "
        "models.modelyard.io (see its pod's log (kubectl logs job/iris-retrain-29420000))"
    )
    # a deadline, an image that cannot be pulled, no API server: the pod's log says which
    for reason, message in (
        ("DeadlineExceeded", "Job was active longer than specified deadline"),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
    ):
        assert schedule_request_failed(failed_request(reason, message)) == (
            f"Job iris-retrain-29420000 of the schedule failed to ask for a run: {reason}: {message}; see "
            "its pod's log (kubectl logs job/iris-retrain-29420000)"
        )


def test_a_rollout_waits_while_the_spec_is_not_its_own_and_resumes_when_the_spec_is_reverted() -> None:
    rollout = {"candidate": 2, "specHash": "a"}
    assert paused_for_spec(rollout, "b") is True
    assert paused_for_spec(rollout, "a") is False  # reverted: B's run, still the newest, does not matter
    assert paused_for_spec({"candidate": 2, "specHash": None}, "b") is False  # an older operator's rollout


MODE_FIXED = "InferenceService iris runs in Standard mode and spec.serving.deployment_mode is Knative: ..."


def test_a_rollout_waits_while_its_inference_service_cannot_be_written_and_a_new_spec_comes_first() -> None:
    """KServe keeps an InferenceService's deployment mode: while the operator cannot write it, the
    rollout is neither judged nor promoted (the cluster would go on serving the step it was at)."""
    rollout = {"candidate": 2, "specHash": "a", "paused": False, "reason": None}
    assert rollout_pause(rollout, "a", None) == (False, None)
    assert rollout_pause(rollout, "a", MODE_FIXED) == (True, DEPLOYMENT_MODE_FIXED)
    # the candidate of an older spec waits for the new spec's run, whatever the mode: no reason recorded
    assert rollout_pause(rollout, "b", MODE_FIXED) == (True, None)
    assert rollout_pause(rollout, "b", None) == (True, None)
    # the mode set back, or the InferenceService deleted (nothing found: nothing fixed): it resumes
    paused = {**rollout, "paused": True, "reason": DEPLOYMENT_MODE_FIXED}
    assert rollout_pause(paused, "a", None) == (False, None)


POLICY = RolloutPolicy(interval_seconds=60, analyses_per_step=3)  # the step's deadline: 360 s
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: int) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_rollout_an_older_operator_started_starts_its_steps_clock_now_not_at_its_start() -> None:
    rollout = {"candidate": 2, "startedAt": ago(3600), "lastAnalysisAt": ago(50), "stepStartedAt": None}
    assert step_clock(rollout, POLICY, NOW, 2)["stepStartedAt"] == ago(0)


def test_the_time_no_operator_looked_does_not_count_against_the_steps_deadline() -> None:
    """An operator away 5 minutes comes back to a step 400 s old, past its 360 s deadline: the 238 s
    nobody looked (300 s since the last look, less one interval and the slack) are not counted."""
    rollout = {"candidate": 2, "startedAt": ago(400), "lastAnalysisAt": ago(300), "stepStartedAt": ago(400)}
    moved = step_clock(rollout, POLICY, NOW, 2)
    assert moved["stepStartedAt"] == ago(400 - 238)
    assert POLICY.step_deadline_seconds == 360


def test_a_look_on_time_leaves_the_steps_clock_alone_and_it_never_starts_in_the_future() -> None:
    on_time = {"candidate": 2, "startedAt": ago(400), "lastAnalysisAt": ago(61), "stepStartedAt": ago(400)}
    assert step_clock(on_time, POLICY, NOW, 2) == on_time
    resumed = {"candidate": 2, "startedAt": ago(900), "lastAnalysisAt": ago(800), "stepStartedAt": ago(5)}
    assert step_clock(resumed, POLICY, NOW, 2)["stepStartedAt"] == ago(0)  # resumed from a pause


def test_a_paused_rollout_ends_when_its_new_specs_run_fails_not_while_it_trains_or_cannot_start() -> None:
    paused = {"candidate": 2, "specHash": "a", "paused": True}
    run_b = {"name": "iris-train-b", "specHash": "b"}
    failed = {"type": "Trained", "status": "False", "reason": "TrainingFailed", "message": "exit 1"}
    training = {**failed, "status": "Unknown", "reason": "Training"}
    assert spec_run_failed(paused, run_b, "b", failed) is True
    assert spec_run_failed(paused, run_b, "b", training) is False
    assert spec_run_failed(paused, run_b, "b", None) is False
    # KFP unreachable: the run is still spec A's, and Trained False says the new one could not start
    assert spec_run_failed(paused, {"name": "kfp-a", "specHash": "a"}, "b", failed) is False
    assert spec_run_failed({**paused, "paused": False}, run_b, "b", failed) is False
    # paused because the InferenceService cannot be written, not for a spec: a failed run ends nothing
    mode_fixed = {**paused, "specHash": "b", "reason": DEPLOYMENT_MODE_FIXED}
    assert spec_run_failed(mode_fixed, run_b, "b", failed) is False
