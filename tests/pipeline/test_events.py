"""Task events: what a step writes to the run's events file, and how a local run follows it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from modelyard.errors import DataValidationError
from modelyard.pipeline.events import EventFollower, TaskEvent, append_event, task_events
from modelyard.pipeline.local import PipelineFailed, run_pipeline_locally
from modelyard.settings import Settings


@task_events("tune", item="algorithm")
def tuned(data: str, *, algorithm: str) -> str:
    return f"{algorithm} on {data}"


@task_events("prepare")
def invalid(data: str) -> None:
    raise DataValidationError(["column 'x' is missing"], source=data)


@task_events("decide")
def broken() -> None:
    raise KeyError("petal_width")


@pytest.fixture
def events_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("MODELYARD_PIPELINE__EVENTS_FILE", str(path))
    return path


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_step_reports_its_start_and_success_with_its_loop_item(events_file: Path) -> None:
    assert tuned("train.parquet", algorithm="knn") == "knn on train.parquet"
    started, succeeded = lines(events_file)
    assert started == {"task": "tune", "state": "started", "seconds": 0.0, "message": "", "item": "knn"}
    assert (succeeded["task"], succeeded["state"], succeeded["item"]) == ("tune", "succeeded", "knn")
    assert isinstance(succeeded["seconds"], float) and succeeded["seconds"] >= 0


def test_a_failing_step_s_event_names_the_step_and_its_message(events_file: Path) -> None:
    with pytest.raises(DataValidationError):
        invalid("iris.csv")
    failed = lines(events_file)[-1]
    assert (failed["task"], failed["state"]) == ("prepare", "failed")
    assert failed["message"] == "iris.csv failed validation with 1 problem(s):\n  - column 'x' is missing"


def test_an_unexpected_exception_is_named_by_its_type(events_file: Path) -> None:
    with pytest.raises(KeyError):
        broken()
    assert lines(events_file)[-1]["message"] == "KeyError: 'petal_width'"


def test_without_an_events_file_a_step_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELYARD_PIPELINE__EVENTS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tuned("d", algorithm="svm") == "svm on d"
    assert list(tmp_path.iterdir()) == []


def test_the_follower_hands_on_whole_lines_only_and_misses_nothing_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    seen: list[TaskEvent] = []
    first = threading.Event()

    def on_event(event: TaskEvent) -> None:
        seen.append(event)
        first.set()

    follower = EventFollower(path, on_event).start()  # the file does not exist yet
    append_event(str(path), TaskEvent("fingerprint", "started"))
    assert first.wait(5)
    half = TaskEvent("fingerprint", "succeeded", 1.5).to_line()
    with path.open("ab") as handle:  # a task halfway through its write, then a line that is not an event
        handle.write(half[:10])
        handle.flush()
        time.sleep(3 * EventFollower.POLL_SECONDS)
        assert len(seen) == 1
        handle.write(half[10:] + b"not json\n")
    append_event(str(path), TaskEvent("prepare", "failed", 0.2, "prepare broke"))
    events = follower.stop()
    assert events == seen
    assert [(e.task, e.status) for e in events] == [
        ("fingerprint", "running"),
        ("fingerprint", "SUCCESS"),
        ("prepare", "FAILURE"),
    ]
    assert events[-1].message == "prepare broke"


@pytest.mark.parametrize("settings", ["sqlite-file"], indirect=True)
def test_a_run_that_fails_outside_the_steps_shows_the_end_of_its_log(settings: Settings) -> None:
    with pytest.raises(PipelineFailed) as caught:
        run_pipeline_locally("modelyard.pipeline.training:no_such_pipeline", {}, settings, run_name="broken")
    assert caught.value.failed_task is None
    assert caught.value.message.startswith(
        "the local pipeline run failed (exit code 1); the end of its log, "
    )
    assert "AttributeError" in caught.value.message and "no_such_pipeline" in caught.value.message
    assert caught.value.log_file.name == "kfp.log" and caught.value.log_file.is_file()
