"""Against a real Kubeflow Pipelines (and KServe) in a cluster: run with TEST_KFP=1 and
MODELYARD_PIPELINE__HOST pointing at the KFP API (e.g. a `kubectl port-forward` of ml-pipeline-ui)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from modelyard.pipeline import client
from modelyard.spec import load_spec

pytestmark = pytest.mark.kfp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def host() -> str:
    found = os.environ.get("MODELYARD_PIPELINE__HOST", "")
    if not found:
        pytest.fail("TEST_KFP=1 needs MODELYARD_PIPELINE__HOST, the KFP API endpoint")
    return found


def test_upload_twice_makes_a_new_version(host: str) -> None:
    first = client.upload(host, "modelyard-training-test")
    second = client.upload(host, "modelyard-training-test")
    assert first.kind == "pipeline" and second.kind == "pipeline version"


def test_run_trains_and_publishes_on_the_cluster(host: str) -> None:
    import kfp

    spec = load_spec(EXAMPLES / "iris.yaml", ["search.trials=2", "algorithms=[logistic_regression]"])
    submitted = client.run(host, spec, auto_deploy=False, inference_service="", namespace="kubeflow")
    api = kfp.Client(host=host)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        state = api.get_run(submitted.id).state
        if state in ("SUCCEEDED", "FAILED", "ERROR", "CANCELED"):
            break
        time.sleep(10)
    assert state == "SUCCEEDED"


def test_schedule_creates_a_recurring_run(host: str) -> None:
    import kfp

    spec = load_spec(EXAMPLES / "iris.yaml")
    submitted = client.schedule(
        host, spec, "0 3 * * *", auto_deploy=False, inference_service="", namespace="kubeflow"
    )
    api = kfp.Client(host=host)
    recurring = api.get_recurring_run(submitted.id)
    assert recurring.trigger.cron_schedule.cron == "0 0 3 * * *"
    api.delete_recurring_run(submitted.id)
