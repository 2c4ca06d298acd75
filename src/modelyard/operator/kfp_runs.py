"""Training through Kubeflow Pipelines: `spec.training.runner: kfp` (or `auto` with
``MODELYARD_PIPELINE__HOST`` set) starts a run of the training pipeline through ``kfp.Client``
(modelyard.pipeline.client) instead of a Job, and follows it with ``get_run``.

A run is named as its Job would be (``<model>-train-<hash>``, ``<model>-alert-<hash>``,
``<model>-schedule-<hash>``), and that name is the run id the pipeline's publish step records with the
version, so the run's version is found in the registry as a Job's is. Before a run is created, KFP is
asked for one of that name: a handler repeated after a crash finds the first run instead of starting a
second. ``status.latestRun.name`` holds KFP's own run id. ``status.latestRun.answeredRequest`` and
``.answeredSchedule`` hold the newest retraining and schedule requests answered, carried on to later runs:
a request not answered there is started or, when its run exists (a status write lost to a crash or a
conflict), adopted as the run; an answered one asks KFP nothing more. A schedule's request while the run
is in flight (KFP's state for it is not a final one) is skipped (modelyard.operator.requests).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from modelyard.errors import ModelyardError
from modelyard.operator import children
from modelyard.operator.conditions import PUBLISHED, TRAINED, Conditions
from modelyard.operator.requests import answered_requests, answering, refusal, request_to_answer
from modelyard.operator.resource import Policies, Runner
from modelyard.registry.records import ModelVersionRecord
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

KIND = "KFP"
SUCCEEDED, FAILED, CANCELED, SKIPPED = "SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"

Say = Callable[..., None]
# states in which a KFP run is over (V2beta1RuntimeState's names): any other is a run in flight
FINISHED_STATES = frozenset({SUCCEEDED, FAILED, CANCELED, SKIPPED})
# Longest a reconcile waits for one answer from KFP. kfp.Client sets no timeout, so a host that takes the
# connection and never answers would hold the Model's reconciles, and its deletion, for ever.
KFP_ANSWER_TIMEOUT_S = 60.0
# A host whose answer was given up on is asked nothing more until it comes, or this many timeouts have
# passed (a connection dropped without a word never ends): one waiting thread per period, not per reconcile.
SHUT_OUT_TIMEOUTS = 10
_Answer = TypeVar("_Answer")
# host -> when each call to it that was given up on began, while that call still waits
_given_up: dict[str, list[float]] = {}
_given_up_lock = threading.Lock()


def answered_within(host: str, timeout_s: float, call: Callable[[], _Answer]) -> _Answer:
    """``call()``'s answer from KFP at ``host``, or a ModelyardError once ``timeout_s`` passed without one.
    A call given up on goes on, on its thread, until its connection ends; meanwhile ``host`` is asked
    nothing more (a ModelyardError at once) for up to SHUT_OUT_TIMEOUTS x ``timeout_s``."""
    began = time.monotonic()
    with _given_up_lock:
        waiting = _given_up.get(host)
        if waiting and began - max(waiting) < SHUT_OUT_TIMEOUTS * timeout_s:
            waited = began - min(waiting)
            raise ModelyardError(f"Kubeflow Pipelines at {host} has not answered for {waited:.0f} s")
    answers: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
    over = threading.Event()  # set with the answer (under the lock), or when the caller gives up

    def ask() -> None:
        try:
            answer: tuple[bool, Any] = (True, call())
        except BaseException as exc:  # handed to the caller, who raises it
            answer = (False, exc)
        with _given_up_lock:
            answers.put(answer)
            if over.is_set():  # given up on: the host may be asked again
                _given_up[host].remove(began)
                if not _given_up[host]:
                    del _given_up[host]
            over.set()

    threading.Thread(target=ask, name=f"modelyard-kfp {host}", daemon=True).start()
    if not over.wait(timeout_s):
        with _given_up_lock:
            if not over.is_set():
                over.set()
                _given_up.setdefault(host, []).append(began)
                raise ModelyardError(f"Kubeflow Pipelines at {host} did not answer within {timeout_s:g} s")
    answered, answer = answers.get()
    if answered:
        return answer  # type: ignore[no-any-return]
    raise answer


def uses_kfp(runner: Runner, settings: Settings) -> bool:
    """Whether a Model with this runner trains through KFP: kfp always, auto when a KFP host is set."""
    return runner is Runner.KFP or (runner is Runner.AUTO and bool(settings.pipeline.host))


def run_name(model: str, spec_hash: str, request: str | None = None, trigger: str = children.ALERT) -> str:
    """The run's name in KFP and its run id in the registry: its Job's name."""
    if request is None:
        return children.training_job_name(model, spec_hash)
    return children.retrain_job_name(model, request, trigger)


def registry_run_id(model: str, run: dict[str, Any]) -> str:
    """The run id the version of ``run`` (a status.latestRun of kind KFP) is registered under."""
    return run_name(model, run["specHash"], run.get("request"), run.get("trigger") or children.ALERT)


def trained_condition(name: str, state: str, error: str) -> tuple[bool | None, str, str]:
    """Trained's status, reason and message for a run in ``state`` that published no version (yet)."""
    if state == SUCCEEDED:
        return (
            False,
            "NothingPublished",
            f"KFP run {name} finished and published no version: the gate refused the model (see the run)",
        )
    if state == FAILED:
        return False, "TrainingFailed", f"KFP run {name} failed: {error or 'no error given'}"
    if state in (CANCELED, SKIPPED):
        return False, "RunCanceled", f"KFP run {name} was {state.lower()}"
    return None, "Training", f"KFP run {name} is {state.lower().replace('_', ' ')}"


@dataclass
class KfpRuns:
    """Starts and follows the KFP runs of Models, against ``settings.pipeline.host``."""

    settings: Settings
    # KFP's run id for a run name (host, name); None: modelyard.pipeline.client.find_run
    find_run: Callable[[str, str], str | None] | None = None
    # a KFP run's state by its id (host, id); None: modelyard.pipeline.client.run_state's
    run_state: Callable[[str, str], str] | None = None
    answer_timeout_s: float = KFP_ANSWER_TIMEOUT_S

    def current_run(
        self,
        body: dict[str, Any],
        recorded: dict[str, Any] | None,
        spec: ModelSpec,
        policies: Policies,
        conditions: Conditions,
        say: Say,
    ) -> dict[str, Any] | None:
        """The run that trains the current spec (started here if there is none), or None when KFP cannot
        be reached and nothing was recorded; Trained says why."""
        meta = body["metadata"]
        hash_ = children.spec_hash(spec)
        run = dict(recorded) if recorded and recorded.get("kind") == KIND else None
        answered = answered_requests(run)
        if not self.settings.pipeline.host:
            message = "runner kfp needs a KFP host: set MODELYARD_PIPELINE__HOST where the operator runs"
            if conditions.set(TRAINED, False, "NoKfpHost", message):
                say(body, "NoKfpHost", message, warning=True)
            return run
        try:
            if run is None or run.get("specHash") != hash_:
                run = answering(self._start(body, spec, hash_, None, say), answered)
            annotations = meta.get("annotations") or {}
            for trigger, annotation in children.REQUEST_ANNOTATIONS.items():
                request = request_to_answer(run, annotations.get(annotation), trigger)
                if not request:
                    continue
                # the run in flight, if any, is the one this pass left so far: KFP is asked its state
                in_flight = partial(self._in_flight, meta["name"], run)
                refused = refusal(trigger, request, policies.training.retrain_on_alert, in_flight)
                if refused is not None:
                    say(body, refused.reason, refused.message)
                    if refused.answered:
                        answered[trigger] = request
                        run = answering(run, answered)
                    continue
                # _start finds before it creates: a run a lost status write left behind is adopted
                answered[trigger] = request
                run = answering(self._start(body, spec, hash_, request, say, trigger), answered)
        except ModelyardError as exc:
            message = f"cannot start a KFP run: {exc.message}"
            if conditions.set(TRAINED, False, "KfpUnreachable", message):
                say(body, "KfpUnreachable", message, warning=True)
        return run

    def observe(
        self,
        body: dict[str, Any],
        run: dict[str, Any] | None,
        spec_hash: str,
        conditions: Conditions,
        published_by: Callable[[str, str], ModelVersionRecord | None],
        say: Say,
    ) -> ModelVersionRecord | None:
        """The version the run published, if any; Trained and Published say how the run stands. A run of
        another spec (``spec_hash``'s could not start) is not followed: Trained keeps saying why, and its
        version is not this spec's."""
        if run is None or run.get("specHash") != spec_hash:
            return None
        model = body["metadata"]["name"]
        name = registry_run_id(model, run)
        published = published_by(model, name)
        if published is not None:
            message = f"KFP run {name} published {published.ref} ({published.stage.value})"
            if conditions.set(TRAINED, True, "Trained", message):
                say(body, "Trained", message)
            conditions.set(PUBLISHED, True, "Published", f"{published.ref} at {published.storage_uri}")
            return published
        from modelyard.pipeline.client import run_state

        host = self.settings.pipeline.host
        try:
            state = self._ask(partial(run_state, host, run["name"]))
        except ModelyardError as exc:
            conditions.set(TRAINED, None, "KfpUnreachable", f"cannot follow KFP run {name}: {exc.message}")
            return None
        status, reason, message = trained_condition(name, state.state, state.error)
        if conditions.set(TRAINED, status, reason, message) and status is False:
            say(body, reason, message, warning=True)
        return None

    def _in_flight(self, model: str, run: dict[str, Any]) -> str | None:
        """``run`` (a status.latestRun of kind KFP) named, unless KFP says it is over."""
        from modelyard.pipeline.client import run_state

        host = self.settings.pipeline.host
        if self.run_state is not None:
            state = self._ask(partial(self.run_state, host, run["name"]))
        else:
            state = self._ask(partial(run_state, host, run["name"])).state
        if state in FINISHED_STATES:
            return None
        return f"KFP run {registry_run_id(model, run)} ({run['name']}, {state.lower()})"

    def _find(self, name: str) -> str | None:
        from modelyard.pipeline.client import find_run

        return self._ask(partial(self.find_run or find_run, self.settings.pipeline.host, name))

    def _ask(self, call: Callable[[], _Answer]) -> _Answer:
        return answered_within(self.settings.pipeline.host, self.answer_timeout_s, call)

    def _start(
        self,
        body: dict[str, Any],
        spec: ModelSpec,
        hash_: str,
        request: str | None,
        say: Say,
        trigger: str = children.ALERT,
    ) -> dict[str, Any]:
        """The run for the spec (``request`` None) or for a ``request`` of ``trigger``: found, or started."""
        from modelyard.pipeline.client import run

        meta = body["metadata"]
        trigger = children.SPEC if request is None else trigger
        name = run_name(meta["name"], hash_, request, trigger)
        run_id = self._find(name)
        if run_id is None:
            # a run created after its answer was given up on is found by its name on the next look
            submitted = self._ask(
                partial(
                    run,
                    self.settings.pipeline.host,
                    spec,
                    auto_deploy=False,
                    inference_service="",
                    namespace=meta["namespace"],
                    run_name=name,
                )
            )
            run_id = submitted.id
            message = f"KFP run {name} ({run_id}) trains {meta['name']}: {submitted.url}"
            say(body, children.STARTED_REASONS[trigger], message)
        started: dict[str, Any] = {
            "kind": KIND,
            "name": run_id,
            "generation": int(meta.get("generation", 1)),
            "trigger": trigger,
            "specHash": hash_,
            "startedAt": _now(),
        }
        if request is not None:
            started["request"] = request
        return started


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
