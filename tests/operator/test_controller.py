"""The controller's decisions that need no control plane: which Job is the current spec's run, when a
rollout waits for its spec, how the step deadline counts, and what ends a paused rollout."""

from __future__ import annotations

from typing import Any

from modelyard.operator import children
from modelyard.operator.controller import current_job, paused_for_spec


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


def test_a_rollout_waits_while_the_spec_is_not_its_own_and_resumes_when_the_spec_is_reverted() -> None:
    rollout = {"candidate": 2, "specHash": "a"}
    assert paused_for_spec(rollout, "b") is True
    assert paused_for_spec(rollout, "a") is False  # reverted: B's run, still the newest, does not matter
    assert paused_for_spec({"candidate": 2, "specHash": None}, "b") is False  # an older operator's rollout
