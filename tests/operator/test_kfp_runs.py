"""`spec.training.runner: kfp`: which Models train through KFP, how a run is named and found again, and how
a KFP run's state reads as the Trained condition. A real Kubeflow Pipelines is needed for the end-to-end
test (`kfp` marker, TEST_KFP=1 and MODELYARD_PIPELINE__HOST)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from modelyard.errors import ModelyardError
from modelyard.operator import children, kfp_runs
from modelyard.operator.conditions import TRAINED, Conditions
from modelyard.operator.kfp_runs import (
    KfpRuns,
    answered_within,
    registry_run_id,
    run_name,
    trained_condition,
    uses_kfp,
)
from modelyard.operator.requests import request_to_answer
from modelyard.operator.resource import Runner, parse_resource_spec
from modelyard.registry import Registry
from modelyard.settings import Settings, load_settings

from ..monitoring.conftest import wait_until
from .conftest import StalledKfp

IRIS = Path(__file__).resolve().parents[2] / "examples" / "data" / "iris.csv"


def settings_with_host(host: str) -> Settings:
    current = load_settings()
    return current.model_copy(update={"pipeline": current.pipeline.model_copy(update={"host": host})})


@pytest.mark.parametrize(
    ("runner", "host", "expected"),
    [
        (Runner.KFP, "http://kfp:8888", True),
        (Runner.KFP, "", True),
        (Runner.AUTO, "http://kfp:8888", True),
        (Runner.AUTO, "", False),
        (Runner.JOB, "http://kfp:8888", False),
    ],
)
def test_kfp_trains_with_runner_kfp_and_with_auto_when_a_host_is_set(
    runner: Runner, host: str, expected: bool
) -> None:
    assert uses_kfp(runner, settings_with_host(host)) is expected


def test_a_run_is_named_as_its_job_would_be_and_its_registry_run_id_follows_from_its_status() -> None:
    assert run_name("iris", "abc123") == children.training_job_name("iris", "abc123") == "iris-train-abc123"
    requested = "2026-01-01T00:00:00.000000+00:00"
    assert run_name("iris", "abc123", requested) == children.retrain_job_name("iris", requested)
    assert run_name("iris", "abc123", requested) == run_name("iris", "abc123", requested)
    run = {"kind": "KFP", "name": "0b5e-uuid", "specHash": "abc123", "request": requested}
    assert registry_run_id("iris", run) == children.retrain_job_name("iris", requested)
    assert registry_run_id("iris", {**run, "request": None}) == "iris-train-abc123"


@pytest.mark.parametrize(
    ("state", "error", "expected"),
    [
        ("PENDING", "", (None, "Training", "KFP run r is pending")),
        ("RUNNING", "", (None, "Training", "KFP run r is running")),
        ("PAUSED", "", (None, "Training", "KFP run r is paused")),
        ("RUNTIME_STATE_UNSPECIFIED", "", (None, "Training", "KFP run r is runtime state unspecified")),
        ("CANCELING", "", (None, "Training", "KFP run r is canceling")),
        ("FAILED", "tune-3 OOMKilled", (False, "TrainingFailed", "KFP run r failed: tune-3 OOMKilled")),
        ("FAILED", "", (False, "TrainingFailed", "KFP run r failed: no error given")),
        ("CANCELED", "", (False, "RunCanceled", "KFP run r was canceled")),
        ("SKIPPED", "", (False, "RunCanceled", "KFP run r was skipped")),
    ],
)
def test_a_kfp_runs_state_reads_as_trained(state: str, error: str, expected: tuple[Any, str, str]) -> None:
    assert trained_condition("r", state, error) == expected


def test_a_run_that_succeeded_without_a_version_was_refused_by_the_gate() -> None:
    status, reason, message = trained_condition("r", "SUCCEEDED", "")
    assert (status, reason) == (False, "NothingPublished")
    assert message.startswith("KFP run r finished and published no version: the gate refused the model")


def model_body(name: str = "iris", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "annotations": annotations,
        },
        "spec": {
            "data": {"path": str(IRIS)},
            "target": "species",
            "algorithms": ["logistic_regression"],
            "search": {"strategy": "random", "trials": 2},
            "cv_folds": 2,
            "gate": {"min_score": 0.5},
            "training": {"runner": "kfp"},
        },
    }


def test_a_kfp_host_that_does_not_answer_is_a_condition_naming_it_and_no_run() -> None:
    body = model_body()
    spec, policies = parse_resource_spec("iris", body["spec"])
    conditions = Conditions(None, 1)
    said: list[tuple[str, str]] = []
    runs = KfpRuns(settings_with_host("http://127.0.0.1:9"))
    run = runs.current_run(
        body,
        None,
        spec,
        policies,
        conditions,
        lambda _body, reason, message, **_: said.append((reason, message)),
    )
    assert run is None
    trained = conditions.get(TRAINED)
    assert trained is not None and trained["status"] == "False" and trained["reason"] == "KfpUnreachable"
    assert trained["message"].startswith("cannot start a KFP run: ")
    assert trained["message"].startswith(
        "cannot start a KFP run: cannot reach Kubeflow Pipelines at http://127.0.0.1:9"
    )
    assert [reason for reason, _ in said] == ["KfpUnreachable"]


def test_runner_kfp_without_a_host_says_where_to_set_one() -> None:
    body = model_body()
    spec, policies = parse_resource_spec("iris", body["spec"])
    conditions = Conditions(None, 1)
    said: list[str] = []
    runs = KfpRuns(settings_with_host(""))
    run = runs.current_run(
        body, None, spec, policies, conditions, lambda _b, reason, _m, **_: said.append(reason)
    )
    assert run is None
    trained = conditions.get(TRAINED)
    assert trained is not None and (trained["status"], trained["reason"]) == ("False", "NoKfpHost")
    assert (
        trained["message"]
        == "runner kfp needs a KFP host: set MODELYARD_PIPELINE__HOST where the operator runs"
    )
    assert said == ["NoKfpHost"]


@pytest.mark.kfp
def test_a_kfp_run_is_started_once_and_its_version_found_by_its_name(tmp_path: Path) -> None:
    """Against a real KFP whose pipeline pods reach the same registry (MODELYARD_DATABASE_URL)."""
    host = os.environ["MODELYARD_PIPELINE__HOST"]
    settings = settings_with_host(host)
    name = f"kfp{uuid.uuid4().hex[:6]}"
    body = model_body(name)
    spec, policies = parse_resource_spec(name, body["spec"])
    runs = KfpRuns(settings)

    def say(*_: Any, **__: Any) -> None:
        return None

    first = runs.current_run(body, None, spec, policies, Conditions(None, 1), say)
    assert first is not None and first["kind"] == "KFP"
    again = runs.current_run(body, None, spec, policies, Conditions(None, 1), say)
    assert again is not None and again["name"] == first["name"], "a repeated start made a second run"
    with Registry(settings.database_url) as registry:
        deadline = time.monotonic() + 1800
        while True:
            conditions = Conditions(None, 1)
            published = runs.observe(
                body,
                first,
                first["specHash"],
                conditions,
                lambda model, run_id: next(
                    (r for r in registry.list_versions(model) if r.run_id == run_id), None
                ),
                say,
            )
            if published is not None:
                break
            trained = conditions.get(TRAINED)
            assert trained is None or trained["status"] != "False", trained
            assert time.monotonic() < deadline, "the KFP run published nothing in 30 minutes"
            time.sleep(10)
    assert published.run_id == run_name(name, first["specHash"])


def test_the_compiled_pipeline_hands_its_run_id_parameter_to_the_publish_step() -> None:
    """What the registry records for a KFP run: the pipeline's run_id reaches publish (the package the
    operator submits is compiled from the same definition; test_compile keeps this copy fresh)."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "pipelines" / "training.yaml"
    package = next(yaml.safe_load_all(path.read_text()))  # the IR, then its platform spec
    root = package["root"]
    assert root["inputDefinitions"]["parameters"]["run_id"]["defaultValue"] == ""
    publish = package["components"]["comp-publish"]["inputDefinitions"]["parameters"]["run_id"]
    assert publish["defaultValue"] == ""
    gate = package["components"]["comp-condition-3"]["dag"]["tasks"]["publish"]["inputs"]["parameters"]
    assert gate["run_id"] == {"componentInputParameter": "pipelinechannel--run_id"}


def test_a_retraining_run_found_after_a_lost_status_write_is_adopted_and_kfp_not_asked_again() -> None:
    """A pass created the retraining run and its status write was lost (a crash, or a 409): the next pass
    starts from the spec run, finds the retraining run by its name, and makes it latestRun."""
    requested = "2026-01-01T00:00:00.000000+00:00"
    body = model_body(**{children.RETRAIN_ANNOTATION: requested})
    spec, policies = parse_resource_spec("iris", body["spec"])  # retrain_on_alert: true by default
    hash_ = children.spec_hash(spec)
    asked: list[str] = []

    def find_run(host: str, name: str) -> str | None:
        asked.append(name)
        return "kfp-run-of-the-alert" if name == run_name("iris", hash_, requested) else None

    runs = KfpRuns(settings_with_host("http://127.0.0.1:9"), find_run=find_run)
    spec_run = {"kind": "KFP", "name": "kfp-run-of-the-spec", "generation": 1, "trigger": "spec"}
    spec_run |= {"specHash": hash_, "startedAt": "2026-01-01T00:00:00Z"}
    said: list[str] = []

    def say(_body: Any, reason: str, _message: str, **_: Any) -> None:
        said.append(reason)

    adopted = runs.current_run(body, spec_run, spec, policies, Conditions(None, 1), say)
    assert adopted is not None
    assert (adopted["name"], adopted["request"], adopted["answeredRequest"]) == (
        "kfp-run-of-the-alert",
        requested,
        requested,
    )
    assert registry_run_id("iris", adopted) == children.retrain_job_name("iris", requested)
    assert asked == [run_name("iris", hash_, requested)] and said == []  # found, not started again
    again = runs.current_run(body, adopted, spec, policies, Conditions(None, 1), say)
    assert again == adopted and len(asked) == 1, "an answered request asked KFP again"


def test_an_answered_request_stays_answered_across_a_later_spec_run() -> None:
    requested = "2026-01-01T00:00:00.000000+00:00"
    retrained = {"kind": "KFP", "name": "r", "specHash": "old", "request": requested}
    assert request_to_answer(retrained, requested) is None
    assert request_to_answer({**retrained, "request": None, "answeredRequest": requested}, requested) is None
    assert request_to_answer({**retrained, "request": None}, requested) == requested
    assert request_to_answer(None, requested) == requested
    assert request_to_answer(retrained, None) is None


def test_a_schedule_request_is_a_kfp_run_of_its_own_that_retrain_on_alert_does_not_stop() -> None:
    """The schedule's CronJob asked (its annotation) and an alert did, on a Model that refuses alerts: the
    schedule's run is a KFP run named for it, trigger schedule; the alert is ignored. Found by name here
    (a stand-in for KFP's lookup), so no KFP is asked to create one."""
    alerted, scheduled = "2026-01-01T00:00:00.000000+00:00", "2026-01-02T03:00:00.000000+00:00"
    body = model_body(**{children.RETRAIN_ANNOTATION: alerted, children.SCHEDULE_ANNOTATION: scheduled})
    body["spec"]["training"]["retrain_on_alert"] = False
    spec, policies = parse_resource_spec("iris", body["spec"])
    hash_ = children.spec_hash(spec)
    asked: list[str] = []

    def find_run(host: str, name: str) -> str | None:
        asked.append(name)
        return f"kfp-id-of-{name}"

    # the spec's run is over: a schedule request starts a run (one in flight would skip it)
    runs = KfpRuns(
        settings_with_host("http://127.0.0.1:9"), find_run=find_run, run_state=lambda *_: "SUCCEEDED"
    )
    spec_run = {"kind": "KFP", "name": "kfp-run-of-the-spec", "generation": 1, "trigger": "spec"}
    spec_run |= {"specHash": hash_, "startedAt": "2026-01-01T00:00:00Z"}
    said: list[str] = []

    def say(_body: Any, reason: str, _message: str, **_: Any) -> None:
        said.append(reason)

    run = runs.current_run(body, spec_run, spec, policies, Conditions(None, 1), say)
    expected = run_name("iris", hash_, scheduled, children.SCHEDULE)
    assert expected == children.retrain_job_name("iris", scheduled, children.SCHEDULE)
    assert expected.startswith("iris-schedule-")
    assert asked == [expected] and said == ["RetrainIgnored"]
    assert run is not None
    assert (run["name"], run["trigger"], run["request"]) == (f"kfp-id-of-{expected}", "schedule", scheduled)
    assert run["answeredSchedule"] == scheduled and "answeredRequest" not in run
    assert registry_run_id("iris", run) == expected
    again = runs.current_run(body, run, spec, policies, Conditions(None, 1), say)
    assert again == run and len(asked) == 1, "an answered schedule request asked KFP again"


def test_a_schedule_request_while_the_run_is_in_flight_is_skipped_answered_and_not_started_later() -> None:
    """The spec's KFP run is still running when the schedule asks: no run is started (KFP is asked its
    state, not for a run), ScheduleSkipped names the run in flight, and the request is answered, so the
    run ending does not start it; the next request, with the run over, starts one."""
    scheduled = "2026-01-02T03:00:00.000000+00:00"
    body = model_body(**{children.SCHEDULE_ANNOTATION: scheduled})
    spec, policies = parse_resource_spec("iris", body["spec"])
    hash_ = children.spec_hash(spec)
    states = {"kfp-run-of-the-spec": "RUNNING"}
    asked: list[str] = []

    def find_run(host: str, name: str) -> str | None:
        asked.append(name)
        return f"kfp-id-of-{name}"

    runs = KfpRuns(
        settings_with_host("http://127.0.0.1:9"), find_run=find_run, run_state=lambda _host, id_: states[id_]
    )
    spec_run = {"kind": "KFP", "name": "kfp-run-of-the-spec", "generation": 1, "trigger": "spec"}
    spec_run |= {"specHash": hash_, "startedAt": "2026-01-01T00:00:00Z"}
    said: list[tuple[str, str]] = []

    def say(_body: Any, reason: str, message: str, **_: Any) -> None:
        said.append((reason, message))

    skipped = runs.current_run(body, spec_run, spec, policies, Conditions(None, 1), say)
    assert skipped == {**spec_run, "answeredSchedule": scheduled}
    assert asked == []
    assert said == [
        (
            "ScheduleSkipped",
            f"schedule request {scheduled} skipped: KFP run iris-train-{hash_} (kfp-run-of-the-spec, running)"
            " is still in flight (no runs pile up; the next scheduled time asks again)",
        )
    ]
    states["kfp-run-of-the-spec"] = "SUCCEEDED"
    assert runs.current_run(body, skipped, spec, policies, Conditions(None, 1), say) == skipped
    assert asked == [] and len(said) == 1, "a skipped request started a run when the run in flight ended"

    later = "2026-01-03T03:00:00.000000+00:00"
    body["metadata"]["annotations"][children.SCHEDULE_ANNOTATION] = later
    started = runs.current_run(body, skipped, spec, policies, Conditions(None, 1), say)
    assert started is not None
    assert (started["trigger"], started["request"], started["answeredSchedule"]) == ("schedule", later, later)
    assert asked == [run_name("iris", hash_, later, children.SCHEDULE)]


def test_each_triggers_answered_request_is_carried_across_the_others_runs() -> None:
    """An alert's run after a schedule's keeps the schedule's request answered, and the other way round: a
    request is answered once, whichever came last."""
    alerted, scheduled = "2026-01-01T00:00:00.000000+00:00", "2026-01-02T03:00:00.000000+00:00"
    body = model_body(**{children.SCHEDULE_ANNOTATION: scheduled})
    spec, policies = parse_resource_spec("iris", body["spec"])
    hash_ = children.spec_hash(spec)
    asked: list[str] = []

    def find_run(host: str, name: str) -> str | None:
        asked.append(name)
        return f"id-{len(asked)}"

    runs = KfpRuns(
        settings_with_host("http://127.0.0.1:9"), find_run=find_run, run_state=lambda *_: "SUCCEEDED"
    )
    spec_run = {"kind": "KFP", "name": "s", "generation": 1, "trigger": "spec", "specHash": hash_}
    spec_run["startedAt"] = "2026-01-01T00:00:00Z"

    def say(*_: Any, **__: Any) -> None:
        return None

    scheduled_run = runs.current_run(body, spec_run, spec, policies, Conditions(None, 1), say)
    body["metadata"]["annotations"][children.RETRAIN_ANNOTATION] = alerted
    alerted_run = runs.current_run(body, scheduled_run, spec, policies, Conditions(None, 1), say)
    assert alerted_run is not None and alerted_run["trigger"] == "alert"
    assert (alerted_run["answeredRequest"], alerted_run["answeredSchedule"]) == (alerted, scheduled)
    assert request_to_answer(alerted_run, scheduled, children.SCHEDULE) is None
    assert runs.current_run(body, alerted_run, spec, policies, Conditions(None, 1), say) == alerted_run
    assert len(asked) == 2, asked


def test_a_spec_change_with_kfp_down_keeps_saying_so_and_the_old_specs_run_is_not_followed() -> None:
    body = model_body()
    spec, policies = parse_resource_spec("iris", body["spec"])
    old_run = {"kind": "KFP", "name": "kfp-run-a", "generation": 1, "trigger": "spec", "specHash": "a"}
    old_run["startedAt"] = "2026-01-01T00:00:00Z"
    conditions = Conditions(None, 2)
    runs = KfpRuns(settings_with_host("http://127.0.0.1:9"))

    def say(*_: Any, **__: Any) -> None:
        return None

    run = runs.current_run(body, old_run, spec, policies, conditions, say)
    assert run == old_run  # the new spec's run could not start

    def published_by(model: str, run_id: str) -> None:
        raise AssertionError(f"the old spec's run {run_id} was followed")

    assert runs.observe(body, run, children.spec_hash(spec), conditions, published_by, say) is None
    trained = conditions.get(TRAINED)
    assert trained is not None and (trained["status"], trained["reason"]) == ("False", "KfpUnreachable")


def test_a_kfp_host_that_holds_its_answers_is_given_up_on_and_not_asked_again_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kfp.Client has no timeout: without one of the operator's own, such a host would hold the Model's
    reconciles, and its deletion, for ever."""
    import kfp  # noqa: F401 - imported here, so that the 1 s below is the host's

    monkeypatch.setattr(kfp_runs, "_given_up", {})
    body = model_body()
    spec, policies = parse_resource_spec("iris", body["spec"])
    kfp_host = StalledKfp(hold_s=60)
    try:
        runs = KfpRuns(settings_with_host(kfp_host.url), answer_timeout_s=1)

        def trained_message() -> str:
            conditions = Conditions(None, 1)
            assert runs.current_run(body, None, spec, policies, conditions, lambda *_, **__: None) is None
            trained = conditions.get(TRAINED)
            assert trained is not None and trained["reason"] == "KfpUnreachable"
            return str(trained["message"])

        unreachable = f"cannot start a KFP run: Kubeflow Pipelines at {kfp_host.url}"
        assert trained_message() == f"{unreachable} did not answer within 1 s"
        wait_until(lambda: kfp_host.held == 1, "the request given up on to reach the host", 30)
        # still held: the host is not asked again meanwhile
        assert trained_message().startswith(f"{unreachable} has not answered for ")
        assert kfp_host.held == 1

        kfp_host.release()  # it answers (a 503), and later requests at once
        message = wait_until(
            lambda: "has not answered" not in (found := trained_message()) and found,
            "the host to be asked again",
            30,
        )
        assert message.startswith(f"{unreachable}: (503)")
        assert kfp_host.held == 2
    finally:
        kfp_host.close()


def test_a_host_whose_answer_never_comes_is_asked_again_after_ten_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection dropped without a word never ends: the host cannot stay shut out for ever."""
    monkeypatch.setattr(kfp_runs, "_given_up", {})
    never = threading.Event()
    try:
        with pytest.raises(ModelyardError, match=r"^Kubeflow Pipelines at h did not answer within 0.1 s$"):
            answered_within("h", 0.1, never.wait)
        with pytest.raises(ModelyardError, match=r"^Kubeflow Pipelines at h has not answered for \d+ s$"):
            answered_within("h", 0.1, lambda: "not asked")
        assert answered_within("elsewhere", 0.1, lambda: "answered") == "answered"
        started = time.monotonic()
        answer = wait_until(lambda: _answer_or_none("h"), "the host to be asked again", 30)
        assert answer == "answered"
        assert time.monotonic() - started >= kfp_runs.SHUT_OUT_TIMEOUTS * 0.1 - 0.2
    finally:
        never.set()
    # the calls given up on have ended: nothing of them is kept
    wait_until(lambda: not kfp_runs._given_up, "the given-up calls to end", 30)


def _answer_or_none(host: str) -> str | None:
    try:
        return answered_within(host, 0.1, lambda: "answered")
    except ModelyardError:
        return None
