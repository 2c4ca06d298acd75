"""Run the pipelines on this machine with `kfp.local`, as `modelyard train` and `modelyard score` do.

Every task runs as a subprocess of this Python (SubprocessRunner without a venv: modelyard is installed
here), forked from a warm process that has imported the tasks' libraries (`modelyard.pipeline.warm`;
MODELYARD_PIPELINE__WARM_TASKS=false starts each the way kfp.local does), with task outputs under
MODELYARD_HOME/pipelines and KFP's local cache enabled. KFP's own log is kept in a file; the caller
gets one event per task start, finish and cache hit instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from modelyard.cpus import available_cpus
from modelyard.errors import ModelyardError
from modelyard.pipeline.steps import fail_reason, spec_to_yaml
from modelyard.pipeline.warm import warm_task_processes
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '?(?P<task>[\w.-]+)'?")
_FAILED = re.compile(r"Task '?(?P<task>[\w.-]+)'? finished with status (?P<status>FAILURE)")
# The task's own process prints this when it succeeds. kfp.local's "finished" line is not reliable: loop
# iterations run in threads that reset the root logger under each other, and some of those lines are lost.
_SUCCEEDED = re.compile(r"Wrote executor output file to .*/(?P<task>[\w.-]+)/executor_output\.json")


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


# kfp.local runs at most two iterations of a dsl.ParallelFor at once (its ParallelExecutor's cap).
LOCAL_LOOP_PARALLELISM = 2

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
        # kfp.local runs loop iterations in threads, all printing here; reentrant for an on_event that prints
        self._lock = threading.RLock()
        self.lines: list[str] = []
        self.events: list[TaskEvent] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
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
        for pattern, status in ((_FAILED, "FAILURE"), (_SUCCEEDED, "SUCCESS"), (_STARTED, "running")):
            match = pattern.search(line)
            if match:
                event = TaskEvent(match["task"], status)
                self.events.append(event)
                self._on_event(event)
                return


def export_settings(settings: Settings) -> None:
    """Hand resolved settings to the task subprocesses through their environment."""
    os.environ["MODELYARD_HOME"] = str(settings.home)
    os.environ["MODELYARD_DATABASE_URL"] = settings.database_url
    os.environ["MODELYARD_STORE_URI"] = settings.store_uri
    s3 = settings.s3
    for name, value in (
        ("AWS_ENDPOINT_URL", s3.endpoint_url),
        ("AWS_ACCESS_KEY_ID", s3.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key),
        ("AWS_REGION", s3.region),
    ):
        if value is not None:
            os.environ[name] = value
    os.environ["MODELYARD_PIPELINE__TUNE_JOBS"] = str(settings.pipeline.tune_jobs or local_tune_jobs())


def local_tune_jobs() -> int:
    """CV processes per tune task on this machine: its cores shared by the loop iterations run at once."""
    return max(1, available_cpus() // LOCAL_LOOP_PARALLELISM)


@contextlib.contextmanager
def _captured_stdout(tap: _LineTap) -> Iterator[None]:
    """Redirect stdout to the tap, and leave the root logger as it was found.

    kfp.local swaps the root logger's handlers per task and restores them afterwards; loop iterations
    run in threads, so one thread can restore another's handler, which writes to the tap. Left in place,
    it would write to a closed log file after the run.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stdout(tap):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class PipelineRun(NamedTuple):
    """A finished local run: the pipeline's output, KFP's log file, and the task events seen."""

    output: Any
    log_file: Path
    events: list[TaskEvent]


def run_pipeline_locally(
    pipeline_func: Callable[..., Any],
    arguments: dict[str, Any],
    settings: Settings,
    *,
    run_name: str,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> PipelineRun:
    """Run a pipeline with kfp.local (subprocesses, cache on); PipelineFailed naming the failed step.

    KFP's own output goes to ``MODELYARD_HOME/pipelines/logs/<run_name>-<time>.log``; ``on_event`` gets
    one TaskEvent per task start, finish and cache hit.
    """
    from kfp import local

    export_settings(settings)
    root = settings.home / "pipelines"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{run_name}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}.log"
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
        warm = warm_task_processes(log) if settings.pipeline.warm_tasks else contextlib.nullcontext()
        try:
            with warm, _captured_stdout(tap):
                task = pipeline_func(**arguments)
        except Exception as exc:  # kfp.local raises RuntimeError for a failed task
            raise _failure(exc, tap, log_file) from exc
    return PipelineRun(task.output, log_file, tap.events)


def run_training_locally(
    settings: Settings,
    spec: ModelSpec,
    *,
    auto_deploy: bool = False,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> LocalRun:
    """Run the training pipeline with kfp.local; return the run's summary (the pipeline's output)."""
    from modelyard.pipeline.training import training_pipeline

    run = run_pipeline_locally(
        training_pipeline,
        {"spec_yaml": spec_to_yaml(spec), "auto_deploy": auto_deploy},
        settings,
        run_name=spec.name,
        on_event=on_event,
    )
    return LocalRun(json.loads(run.output), run.log_file, run.events, len(spec.algorithms))


def _failure(exc: Exception, tap: _LineTap, log_file: Path) -> PipelineFailed:
    failed = next((e.task for e in reversed(tap.events) if e.status == "FAILURE"), None)
    reasons = fail_reason(tap.lines)
    if reasons:
        message = "\n".join(f"{reason['step']}: {reason['message']}" for reason in reasons)
    else:
        message = f"{_ANSI.sub('', str(exc))}{_last_error(tap.lines)}\n(full log: {log_file})"
    return PipelineFailed(message, failed_task=failed, log_file=log_file)


def _last_error(lines: list[str]) -> str:
    """The last exception line a task printed (its traceback's final line), when there is one."""
    for line in reversed(lines):
        text = line.strip()
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*", text) and ":" in text:
            return f"\n{text}"
    return ""
