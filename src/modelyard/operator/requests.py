"""Requests for a run: the Model's REQUEST_ANNOTATIONS (a retraining alert's, the schedule's), and which
of them start one, the same for either runner (a Job or a KFP run).

A request is answered once. ``status.latestRun`` records the newest answered request of each trigger
(``answeredRequest``, ``answeredSchedule``), carried on to later runs, besides the request of the run
itself. A request that starts no run is refused with an Event: an alert on a Model that refuses alerts
(left unanswered, as before), and a schedule's request that arrives while a run is in flight. That one
is skipped and counted as answered, as a CronJob with concurrencyPolicy Forbid or a KFP recurring run at
its max_concurrency skips a time: runs do not pile up, and the run in flight ending does not start it
late; the next scheduled time asks again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelyard.operator import children

# where status.latestRun records the newest request of each trigger that was answered
ANSWERED_FIELDS = {children.ALERT: "answeredRequest", children.SCHEDULE: "answeredSchedule"}
SCHEDULE_SKIPPED = "ScheduleSkipped"
RETRAIN_IGNORED = "RetrainIgnored"


def answered_request(run: dict[str, Any] | None, trigger: str = children.ALERT) -> str | None:
    """The newest request of ``trigger`` (alert or schedule) that ``run`` (a status.latestRun) records as
    answered: carried from an earlier run, or its own (a run an older operator recorded has no trigger
    for its request: an alert's)."""
    if not run:
        return None
    own = run.get("request") if (run.get("trigger") or children.ALERT) == trigger else None
    return run.get(ANSWERED_FIELDS[trigger]) or own


def request_to_answer(
    run: dict[str, Any] | None, request: str | None, trigger: str = children.ALERT
) -> str | None:
    """The Model's ``request`` (its annotation for ``trigger``), unless the recorded run answered it
    already."""
    return request if request and request != answered_request(run, trigger) else None


def answered_requests(run: dict[str, Any] | None) -> dict[str, str]:
    """Each trigger's newest request that ``run`` (a status.latestRun) records as answered."""
    return {trigger: value for trigger in ANSWERED_FIELDS if (value := answered_request(run, trigger))}


def answering(run: dict[str, Any], answered: dict[str, str]) -> dict[str, Any]:
    """``run``, recording the requests ``answered`` (by trigger)."""
    return {**run, **{ANSWERED_FIELDS[trigger]: value for trigger, value in answered.items()}}


@dataclass(frozen=True)
class Refusal:
    """Why a request starts no run: the Event's reason and message, and whether it counts as answered
    (a skipped schedule time is not asked again; an ignored alert starts a run if alerts are allowed)."""

    reason: str
    message: str
    answered: bool


def refusal(
    trigger: str, request: str, retrain_on_alert: bool, in_flight: Callable[[], str | None]
) -> Refusal | None:
    """Why ``request``, not answered yet, of ``trigger`` starts no run, or None when it starts one.
    ``in_flight`` names the Model's run that has not finished (None: none); asked only of a schedule's
    request, as it may cost a call to KFP."""
    if trigger == children.ALERT and not retrain_on_alert:
        message = f"retraining requested ({request}), but spec.training.retrain_on_alert is false"
        return Refusal(RETRAIN_IGNORED, message, answered=False)
    if trigger == children.SCHEDULE and (running := in_flight()) is not None:
        message = (
            f"schedule request {request} skipped: {running} is still in flight (no runs pile up; "
            "the next scheduled time asks again)"
        )
        return Refusal(SCHEDULE_SKIPPED, message, answered=True)
    return None
