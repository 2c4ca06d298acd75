"""The console beside the operator: a Model resource with a status on a real control plane (the chart's
CRD), its phase and Ready on the models list, and its conditions, current rollout, rollout history and last
analysis on the Monitoring page; and what the pages say when the API server cannot be reached."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.operator.crd import CHART_CRD, CRD_NAME
from modelyard.settings import load_settings
from modelyard.workflow import run_training

from ..serving.conftest import free_ports, send
from .conftest import RUNS, iris_spec, start_console, stop_console

MODEL = {
    "apiVersion": "modelyard.io/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "iris"},
    "spec": {
        "data": {"path": "/data/iris.csv"},
        "target": "species",
        "features": [
            {"name": name, "type": "numeric"}
            for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
        ],
    },
}


def _condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-01T10:00:00Z",
        "observedGeneration": 1,
    }


STATUS = {
    "observedGeneration": 1,
    "phase": "RollingOut",
    "conditions": [
        _condition("Trained", "True", "Trained", "Job iris-train-2 published iris@2 <b>(staging)</b> & more"),
        _condition("RolloutProgressing", "True", "CanaryStep", "iris@2 takes 10% of requests"),
        _condition("Ready", "True", "Ready", "InferenceService iris serves iris@1"),
    ],
    "versions": [
        {"version": 2, "stage": "staging", "storageUri": "s3://b/2", "score": 0.97, "createdAt": "12-01"},
        {"version": 1, "stage": "production", "storageUri": "s3://b/1", "createdAt": "11-30"},
    ],
    "servingVersion": 1,
    "rollout": {
        "candidate": 2,
        "stable": 1,
        "candidateUri": "s3://b/2",
        "state": "Progressing",
        "step": 1,
        "mode": "canary",
        "percent": 10,
        "passes": 0,
        "failures": 1,
        "startedAt": "2026-12-01T10:00:00Z",
        "failedChecks": ["agreement"],
        "message": "iris@2 takes 10% of requests <i>now</i>",
        "steps": [{"mode": "shadow", "percent": 0}, {"mode": "canary", "percent": 10}],
        "paused": False,
    },
    "url": "http://iris.models.example",
    "inferenceService": "iris",
    "lastAnalysis": {
        "verdict": "fail",
        "at": "2026-12-01T10:06:00Z",
        "stable": 1,
        "candidate": 2,
        "summary": "failed: agreement 0.62 < 0.8",
        "checks": [
            {"name": "error_ratio", "value": 0.5, "threshold": 1.5, "passed": True},
            {"name": "agreement", "value": 0.62, "threshold": 0.8, "passed": False},
            {"name": "live_accuracy_delta", "value": None, "threshold": -0.02, "passed": None},
        ],
    },
}


@pytest.fixture(scope="module")
def operator_console(
    control_plane: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A console with Kubernetes on, over a registry with iris@1 and a namespace with the Model iris."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART_CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    namespace = f"console-{uuid.uuid4().hex[:8]}"
    control_plane.create_namespace(namespace)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(MODEL))
    # a JSON patch, not a merge patch: a merge patch drops the nulls the CRD requires (a check without data)
    control_plane.kubectl(
        "patch", "model", "iris", "-n", namespace, "--subresource=status", "--type=json",
        "-p", json.dumps([{"op": "add", "path": "/status", "value": STATUS}]),
    )  # fmt: skip
    root = tmp_path_factory.mktemp("console-operator")
    outcome = run_training(load_settings(home=root / "home"), iris_spec(RUNS[0]))
    assert outcome.published is not None, outcome.verdict
    variables = {"MODELYARD_CONSOLE__KUBERNETES": "true", "MODELYARD_CONSOLE__NAMESPACE": namespace}
    url, process, _ = start_console(root, variables)
    deadline = time.monotonic() + 60  # the client's first discovery of the API server can take a while
    while not (operator := send("GET", url + "/api/models").json()["operator"])["connected"]:
        assert time.monotonic() < deadline, operator["note"]
        time.sleep(1)
    yield url, namespace
    stop_console(process)
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.cluster
def test_the_pages_show_the_model_resources_phase_rollout_and_last_analysis(
    operator_console: tuple[str, str], control_plane: Any, page: Any, tmp_path: Path
) -> None:
    url, namespace = operator_console
    page.goto(url + "/")
    assert "Model phase" in page.locator("#models thead").inner_text()
    row = page.locator("#models tbody tr").first
    assert row.locator("td.phase").inner_text() == "RollingOut"
    assert row.locator("td.ready [data-state]").inner_text() == "True"
    assert page.locator("#operator-note").count() == 0
    page.screenshot(path=str(tmp_path / "models-with-operator.png"), full_page=True)

    page.goto(url + "/models/iris/monitoring")
    assert page.locator("#phase").inner_text() == "RollingOut"
    assert "InferenceService iris serves iris@1" in page.locator("#model-resource").inner_text()
    conditions = page.locator("#conditions")
    assert "published iris@2 <b>(staging)</b> & more" in conditions.inner_text()  # text, not markup
    assert conditions.locator("b").count() == 0
    history = page.locator("#rollout-history tbody tr").all_inner_texts()
    assert [line.split("\t")[:2] for line in history] == [["v2", "staging"], ["v1", "production"]]
    rollout = {
        row.locator("th").inner_text(): row.locator("td").inner_text()
        for row in page.locator("#current-rollout tbody tr").all()
    }
    assert rollout == {
        "state": "Progressing",
        "candidate": "v2 (stable v1)",
        "mode": "canary, 10% of requests to the candidate",
        "step": "2 of 2",
        "paused": "no",
        "analyses": "0 passed in this step, 1 failed",
        "failed checks": "agreement",
        "reason it ended": "still in progress",
        "message": "iris@2 takes 10% of requests <i>now</i>",  # text, not markup
        "started (UTC)": "2026-12-01T10:00:00Z",
    }
    assert page.locator("#last-analysis h3").inner_text() == "Last analysis: fail"
    assert "Candidate v2" in page.locator("#last-analysis").inner_text()
    checks = {
        row.locator("th").inner_text(): row.locator("td").last.inner_text()
        for row in page.locator("#checks tbody tr").all()
    }
    assert checks == {"error_ratio": "passed", "agreement": "failed", "live_accuracy_delta": "no data"}
    page.screenshot(path=str(tmp_path / "monitoring-with-operator.png"), full_page=True)
    answer = send("GET", url + "/api/models/iris/monitoring").json()
    assert answer["operator"]["model"]["last_analysis"]["verdict"] == "fail"
    assert answer["operator"]["model"]["rollout"]["state"] == "Progressing"

    # a rollout that ended without a verdict, paused by a spec change: the page names why it ended
    ended = {"state": "RolledBack", "reason": "NoEvidence", "paused": True, "failedChecks": []}
    patch = [{"op": "add", "path": f"/status/rollout/{key}", "value": value} for key, value in ended.items()]
    control_plane.kubectl(
        "patch", "model", "iris", "-n", namespace, "--subresource=status", "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip
    page.goto(url + "/models/iris/monitoring")
    assert page.locator("#rollout-state").inner_text() == "RolledBack"
    table = page.locator("#current-rollout").inner_text()
    assert "reason it ended\tNoEvidence" in table
    assert "failed checks\tnone" in table
    assert "paused\tyes: the spec changed" in table
    # paused because KServe keeps the InferenceService's deployment mode: the page says so
    waiting = {"state": "Progressing", "reason": "DeploymentModeFixed", "paused": True}
    patch = [
        {"op": "add", "path": f"/status/rollout/{key}", "value": value} for key, value in waiting.items()
    ]
    control_plane.kubectl(
        "patch", "model", "iris", "-n", namespace, "--subresource=status", "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip
    page.goto(url + "/models/iris/monitoring")
    table = page.locator("#current-rollout").inner_text()
    assert "paused\tyes: KServe keeps the InferenceService's deployment mode" in table
    assert "reason it ended\tstill in progress" in table

    control_plane.kubectl("delete", "model", "iris", "-n", namespace)
    page.goto(url + "/models/iris/monitoring")
    note = page.locator("#operator-note").inner_text()
    expected = f"No Model resource iris in namespace {namespace}: the operator does not manage this model."
    assert note == expected


def _annotations(control_plane: Any, namespace: str, name: str) -> dict[str, str]:
    found = control_plane.kubectl("get", "model", name, "-n", namespace, "-o", "json")
    return dict(json.loads(found.stdout)["metadata"].get("annotations") or {})


@pytest.mark.cluster
def test_training_from_the_console_asks_the_operator_and_never_runs_in_its_pod(
    operator_console: tuple[str, str], control_plane: Any, page: Any
) -> None:
    from modelyard.operator.children import RETRAIN_ANNOTATION

    url, namespace = operator_console
    wine = {**MODEL, "metadata": {"name": "wine"}}
    frozen = {
        **MODEL,
        "metadata": {"name": "frozen"},
        "spec": {**MODEL["spec"], "training": {"retrain_on_alert": False}},
    }
    for resource in (wine, frozen):
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(resource))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(url + "/train")
    assert page.locator("#spec").count() == 0  # no spec to paste: runs are the operator's Jobs
    page.get_by_role("button", name="Retrain wine").click()
    page.locator("#message.ok").wait_for()
    assert f"asked the operator to retrain wine ({namespace}/wine@" in page.locator("#message").inner_text()
    requested = _annotations(control_plane, namespace, "wine")[RETRAIN_ANNOTATION]
    assert f"{namespace}/wine@{requested}" in page.locator("#message").inner_text()

    headers = {"X-Modelyard-Console": "1"}
    refusals = [
        (
            "/api/models/frozen/retrain",
            409,
            f"Model {namespace}/frozen has spec.training.retrain_on_alert: false",
        ),
        ("/api/models/nope/retrain", 404, f"no Model resource nope in namespace {namespace}"),
        ("/api/train", 409, "this console runs beside the operator (MODELYARD_CONSOLE__KUBERNETES=true)"),
    ]
    for path, status, message in refusals:
        answer = send("POST", url + path, b"name: iris", headers)
        assert (answer.status, answer.json()["error"].startswith(message)) == (status, True), answer.body
    assert RETRAIN_ANNOTATION not in _annotations(control_plane, namespace, "frozen")


def _kubeconfig(tmp_path: Path, port: int) -> Path:
    """A kubeconfig whose API server is https://127.0.0.1:``port``."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "someone", "user": {"token": "x"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "someone"}}],
                "current-context": "gone",
            }
        )
    )
    return kubeconfig


def test_an_unreachable_api_server_is_a_note_not_a_failed_page(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    kubeconfig = _kubeconfig(tmp_path, port)
    variables = {"MODELYARD_CONSOLE__KUBERNETES": "true", "KUBECONFIG": str(kubeconfig)}
    url, process, _ = start_console(tmp_path, variables)
    notes = []
    try:
        deadline = time.monotonic() + 60
        # while the first connection (made in the background at start) is still trying, a page says it
        # waited; once it has failed, the page names the reason
        while not notes or notes[-1] == "the API server did not answer within 5 s":
            assert time.monotonic() < deadline, notes
            operator = send("GET", url + "/api/models").json()["operator"]
            assert operator["connected"] is False
            notes.append(operator["note"])
    finally:
        stop_console(process)
    assert notes[-1].startswith("cannot read Model resources in namespace default: "), notes
    assert "Traceback" not in notes[-1]


def test_a_retrain_the_api_server_does_not_answer_is_a_503_that_says_to_look_first(tmp_path: Path) -> None:
    # a socket that accepts connections and never answers: the console's client waits on it
    with socket.create_server(("127.0.0.1", 0)) as silent:
        kubeconfig = _kubeconfig(tmp_path, silent.getsockname()[1])
        variables = {"MODELYARD_CONSOLE__KUBERNETES": "true", "KUBECONFIG": str(kubeconfig)}
        url, process, _ = start_console(tmp_path, variables)
        try:
            answer = send("POST", url + "/api/models/iris/retrain", b"", {"X-Modelyard-Console": "1"})
        finally:
            silent.close()  # the waiting client's connection is reset, so the console can stop
            stop_console(process)
    assert (answer.status, answer.json()["error"]) == (
        503,
        "cannot ask the operator to retrain iris: the API server did not answer within 5 s; the request may "
        "still reach it, so look at the Model's latest run on the Monitoring page before asking again",
    )
