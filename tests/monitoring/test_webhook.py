"""The retrain webhook: payload checks, idempotency in the registry, cooldown, in-flight runs, HTTP."""

from __future__ import annotations

import copy
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from modelyard.errors import InvalidInput
from modelyard.monitoring.webhook import RetrainWebhook, parse_notification, serve_webhook
from modelyard.registry.db import create_engine_for, upgrade
from modelyard.registry.tables import RetrainTrigger

PAYLOAD = json.loads((Path(__file__).parent / "testdata" / "alertmanager-v4.json").read_text())


class RecordingLauncher:
    """A launcher that records the runs it is asked for instead of training."""

    def __init__(self, fail: bool = False) -> None:
        self.started: list[str] = []
        self.in_flight: set[str] = set()
        self.fail = fail
        self.release = threading.Event()
        self.release.set()

    def start(self, model: str) -> str:
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("no KFP host reachable")
        self.started.append(model)
        return f"run-{len(self.started)}"

    def running(self, model: str) -> bool:
        return model in self.in_flight


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The registry database, embedded and on a real PostgreSQL: the unique key decides on both."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()


def rows(engine: Engine) -> list[RetrainTrigger]:
    with engine.connect() as connection:
        return list(connection.execute(select(RetrainTrigger).order_by(RetrainTrigger.id)).all())  # type: ignore[arg-type]


def payload(**alert_changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(PAYLOAD)
    document["alerts"][0].update(alert_changes)
    return document


def test_a_firing_alert_starts_one_run_and_a_repeat_starts_none(engine: Engine) -> None:
    launcher = RecordingLauncher()
    webhook = RetrainWebhook(engine, launcher, cooldown=timedelta(0))
    first = webhook.handle(payload())
    webhook.wait()
    second = webhook.handle(payload())
    webhook.wait()
    assert [d.outcome for d in first] == ["starting"]
    assert [d.outcome for d in second] == ["duplicate"]
    assert launcher.started == ["iris"]
    (row,) = rows(engine)
    assert (row.model, row.outcome, row.run_id, row.alertname) == (
        "iris",
        "started",
        "run-1",
        "ModelyardFeatureDrift",
    )


def test_resolved_alerts_and_notifications_start_nothing(engine: Engine) -> None:
    launcher = RecordingLauncher()
    webhook = RetrainWebhook(engine, launcher)
    resolved = payload(status="resolved")
    resolved["status"] = "resolved"
    assert webhook.handle(resolved) == []
    assert launcher.started == [] and rows(engine) == []


def test_cooldown_and_in_flight_skip_a_new_alert_of_the_same_model(engine: Engine) -> None:
    launcher = RecordingLauncher()
    clock = [datetime(2026, 12, 1, 12, tzinfo=UTC)]
    webhook = RetrainWebhook(engine, launcher, cooldown=timedelta(hours=1), now=lambda: clock[0])
    webhook.handle(payload())
    webhook.wait()
    later = payload(fingerprint="bbbb", startsAt="2026-12-01T12:10:00Z")
    assert [d.outcome for d in webhook.handle(later)] == ["cooldown"]
    clock[0] += timedelta(hours=2)
    launcher.in_flight.add("iris")
    again = payload(fingerprint="cccc", startsAt="2026-12-01T14:00:00Z")
    assert [d.outcome for d in webhook.handle(again)] == ["in_flight"]
    launcher.in_flight.clear()
    last = payload(fingerprint="dddd", startsAt="2026-12-01T14:05:00Z")
    assert [d.outcome for d in webhook.handle(last)] == ["starting"]
    webhook.wait()
    assert launcher.started == ["iris", "iris"]
    assert [r.outcome for r in rows(engine)] == ["started", "cooldown", "in_flight", "started"]


def test_two_alerts_of_one_model_in_one_notification_start_one_run(engine: Engine) -> None:
    launcher = RecordingLauncher()
    webhook = RetrainWebhook(engine, launcher)
    document = payload()
    second = copy.deepcopy(document["alerts"][0])
    second["fingerprint"] = "ffff"
    second["labels"]["feature"] = "petal_width"
    document["alerts"].append(second)
    assert [d.outcome for d in webhook.handle(document)] == ["starting", "cooldown"]
    webhook.wait()
    assert launcher.started == ["iris"]


def test_a_failed_launch_is_recorded_with_its_reason(engine: Engine) -> None:
    webhook = RetrainWebhook(engine, RecordingLauncher(fail=True))
    webhook.handle(payload())
    webhook.wait()
    (row,) = rows(engine)
    assert row.outcome == "failed" and row.detail == "RuntimeError: no KFP host reachable"


def test_an_alert_without_a_model_label_is_skipped(engine: Engine) -> None:
    document = payload()
    del document["alerts"][0]["labels"]["model"]
    (decision,) = RetrainWebhook(engine, RecordingLauncher()).handle(document)
    assert decision.outcome == "no_model" and rows(engine) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("version"), "version: missing"),
        (lambda d: d.update(version="3"), "version: expected '4'"),
        (lambda d: d.update(groupKey=7), "groupKey: must be a string, got 7"),
        (lambda d: d.update(status="sleeping"), "status: must be 'firing' or 'resolved'"),
        (lambda d: d.update(alerts={}), "alerts: must be a list"),
        (lambda d: d["alerts"].append("x"), r"alerts\[1\]: must be an object"),
        (lambda d: d["alerts"][0].pop("fingerprint"), r"alerts\[0\].fingerprint: missing"),
        (lambda d: d["alerts"][0].update(fingerprint="a b"), r"alerts\[0\].fingerprint: must be 1 to 64"),
        (
            lambda d: d["alerts"][0].update(startsAt="yesterday"),
            r"alerts\[0\].startsAt: not an RFC 3339 time",
        ),
        (
            lambda d: d["alerts"][0].update(startsAt="2026-12-01T12:00:00"),
            r"alerts\[0\].startsAt: needs a time zone",
        ),
        (lambda d: d["alerts"][0]["labels"].update(model=3), r"alerts\[0\].labels.model: must be a string"),
        (lambda d: d["alerts"][0].pop("labels"), r"alerts\[0\].labels: missing"),
    ],
)
def test_a_malformed_payload_names_its_field(change: Any, message: str) -> None:
    document = copy.deepcopy(PAYLOAD)
    change(document)
    with pytest.raises(InvalidInput, match=message):
        parse_notification(document)


def test_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidInput, match="the payload must be a JSON object"):
        parse_notification([1])


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_over_http_202_then_duplicate_and_400_naming_the_field(engine: Engine) -> None:
    launcher = RecordingLauncher()
    launcher.release.clear()  # the launch blocks: the answer must not wait for it
    webhook = RetrainWebhook(engine, launcher)
    server = serve_webhook(webhook, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, answer = post(f"{base}/alerts", json.dumps(PAYLOAD).encode())
        assert status == 202 and answer["decisions"][0]["outcome"] == "starting"
        assert launcher.started == []  # still launching
        launcher.release.set()
        webhook.wait()
        status, answer = post(f"{base}/alerts", json.dumps(PAYLOAD).encode())
        assert status == 202 and answer["decisions"][0]["outcome"] == "duplicate"
        broken = copy.deepcopy(PAYLOAD)
        del broken["alerts"][0]["startsAt"]
        status, answer = post(f"{base}/alerts", json.dumps(broken).encode())
        assert (status, answer) == (400, {"error": "alerts[0].startsAt: missing"})
        status, answer = post(f"{base}/alerts", b"{not json")
        assert status == 400 and answer["error"].startswith("the body is not JSON")
        status, answer = post(f"{base}/elsewhere", b"{}")
        assert status == 404
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as health:
            assert health.status == 200
        assert launcher.started == ["iris"] and len(rows(engine)) == 1  # nothing lost, nothing doubled
    finally:
        server.shutdown()
        server.server_close()
