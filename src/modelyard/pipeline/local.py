"""Run the training pipeline on this machine with `kfp.local`, as `modelyard train` does.

Every task runs as a subprocess of this Python (SubprocessRunner without a venv: modelyard is installed
here), with task outputs under MODELYARD_HOME/pipelines and KFP's local cache enabled. KFP's own log is
kept in a file; the caller gets one event per task start, finish and cache hit instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.errors import ModelyardError
from modelyard.pipeline.steps import fail_reason, spec_to_yaml
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '?(?P<task>[\w.-]+)'?")
_FINISHED = re.compile(r"Task '?(?P<task>[\w.-]+)'? finished with status (?P<status>[A-Z]+)")
_CACHED = re.compile(r"Task '?(?P<task>[\w.-]+)'? cache hit")


@dataclass(frozen=True)
class TaskEvent:
    task: str
    status: str  # running, SUCCESS, FAILURE, cached


class PipelineFailed(ModelyardError):
    """A task of the local run failed; carries the steps' own error messages when they gave one."""

    status_code = 422

    def __init__(self, message: str, *, failed_task: str | None, log_file: Path) -> None:
        super().__init__(message)
        self.failed_task = failed_task
        self.log_file = log_file


# Tasks whose work KFP's cache can reuse; the others never cache (see training.py).
CACHEABLE_TASKS = ("ingest", "validate", "split", "tune", "select", "evaluate")


@dataclass
class LocalRun:
    summary: dict[str, Any]
    log_file: Path
    events: list[TaskEvent] = field(default_factory=list)
    algorithms: int = 0

    @property
    def cached_tasks(self) -> list[str]:
        """Cacheable tasks this run did not execute: kfp.local served their outputs from its cache."""
        executed = [event.task for event in self.events if event.status == "running"]
        expected = {task: self.algorithms if task == "tune" else 1 for task in CACHEABLE_TASKS}
        return [task for task, count in expected.items() for _ in range(count - executed.count(task))]


class _LineTap(io.TextIOBase):
    """A stdout stand-in: writes KFP's output to the log file and turns its task lines into events."""

    def __init__(self, log: io.TextIOBase, on_event: Callable[[TaskEvent], None]) -> None:
        self._log = log
        self._on_event = on_event
        self._pending = ""
        self.lines: list[str] = []
        self.events: list[TaskEvent] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def _line(self, line: str) -> None:
        self.lines.append(line)
        for pattern, status in ((_CACHED, "cached"), (_FINISHED, None), (_STARTED, "running")):
            match = pattern.search(line)
            if match:
                event = TaskEvent(match["task"], status or match["status"])
                self.events.append(event)
                self._on_event(event)
                return


def export_settings(settings: Settings) -> None:
    """Hand resolved settings to the task subprocesses through their environment."""
    os.environ["MODELYARD_HOME"] = str(settings.home)
    os.environ["MODELYARD_DATABASE_URL"] = settings.database_url
    os.environ["MODELYARD_STORE_URI"] = settings.store_uri


@contextlib.contextmanager
def _captured_stdout(tap: _LineTap) -> Iterator[None]:
    with contextlib.redirect_stdout(tap):
        yield


def run_training_locally(
    settings: Settings,
    spec: ModelSpec,
    *,
    auto_deploy: bool = False,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> LocalRun:
    """Run the training pipeline with kfp.local; return the run's summary (the pipeline's output)."""
    from kfp import local

    from modelyard.pipeline.training import training_pipeline

    export_settings(settings)
    root = settings.home / "pipelines"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{spec.name}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}.log"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=True,
        raise_on_error=True,
    )
    with log_file.open("w", encoding="utf-8") as log, warnings.catch_warnings():
        # The component image has modelyard installed, as this Python does: KFP's warning does not apply.
        warnings.filterwarnings(
            "ignore", message="You may be attemping to run a task", category=RuntimeWarning
        )
        tap = _LineTap(log, on_event or (lambda _event: None))
        try:
            with _captured_stdout(tap):
                task = training_pipeline(spec_yaml=spec_to_yaml(spec), auto_deploy=auto_deploy)
        except Exception as exc:  # kfp.local raises RuntimeError for a failed task
            raise _failure(exc, tap, log_file) from exc
    return LocalRun(json.loads(task.output), log_file, tap.events, len(spec.algorithms))


def _failure(exc: Exception, tap: _LineTap, log_file: Path) -> PipelineFailed:
    failed = next((e.task for e in reversed(tap.events) if e.status == "FAILURE"), None)
    reasons = fail_reason(tap.lines)
    if reasons:
        message = "\n".join(f"{reason['step']}: {reason['message']}" for reason in reasons)
    else:
        message = f"{_ANSI.sub('', str(exc))} (see {log_file})"
    return PipelineFailed(message, failed_task=failed, log_file=log_file)
