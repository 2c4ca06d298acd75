"""Run the pipelines on this machine with `kfp.local`, as `modelyard train` and `modelyard score` do.

Each run gets a folder, ``MODELYARD_HOME/pipelines/runs/<name>-<time>/``, and a process of its own,
``python -m modelyard.pipeline.local_runner FOLDER``, which runs the pipeline with kfp.local as kfp ships
it: SubprocessRunner without a venv (a new interpreter per task; modelyard is installed here), task
outputs and KFP's cache under ``MODELYARD_HOME/pipelines``. Everything KFP and the tasks print goes to
``kfp.log`` in the folder, so this process's own output stays the command's. The steps append their
start and end to ``events.jsonl`` there (`modelyard.pipeline.events`); a thread here follows that file
and hands each event to the caller, and the pipeline's output comes back in ``output.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from modelyard.cpus import available_cpus
from modelyard.errors import ModelyardError
from modelyard.pipeline.events import FAILED, STARTED, EventFollower, TaskEvent
from modelyard.pipeline.steps import spec_to_yaml
from modelyard.settings import Settings, to_environment
from modelyard.spec import ModelSpec

__all__ = [
    "LocalRun",
    "PipelineFailed",
    "PipelineRun",
    "TaskEvent",
    "run_pipeline_locally",
    "run_training_locally",
]

TRAINING_PIPELINE = "modelyard.pipeline.training:training_pipeline"
# kfp.local runs at most two iterations of a dsl.ParallelFor at once (its ParallelExecutor's cap).
LOCAL_LOOP_PARALLELISM = 2
# Tasks whose work KFP's cache can reuse; the others never cache (see training.py).
CACHEABLE_TASKS = ("prepare", "tune")
LOG_LINES_SHOWN = 5  # of a failed run's log, when no step said why it failed


class PipelineFailed(ModelyardError):
    """A task of the local run failed; carries the steps' own error messages when they gave one."""

    status_code = 422

    def __init__(self, message: str, *, failed_task: str | None, log_file: Path) -> None:
        super().__init__(message)
        self.failed_task = failed_task
        self.log_file = log_file


class PipelineRun(NamedTuple):
    """A finished local run: the pipeline's output, KFP's log file, and the tasks' events."""

    output: Any
    log_file: Path
    events: list[TaskEvent]


@dataclass
class LocalRun:
    summary: dict[str, Any]
    log_file: Path
    events: list[TaskEvent] = field(default_factory=list)
    algorithms: int = 0

    @property
    def cached_tasks(self) -> list[str]:
        """Cacheable tasks this run did not execute: kfp.local served their outputs from its cache."""
        started = [event.task for event in self.events if event.state == STARTED]
        expected = {task: self.algorithms if task == "tune" else 1 for task in CACHEABLE_TASKS}
        return [task for task, count in expected.items() for _ in range(count - started.count(task))]


def task_environment(settings: Settings) -> dict[str, str]:
    """The resolved settings, as the environment the task processes read them from, with the tune jobs
    this machine's cores allow when the settings leave them to the run (0)."""
    tune_jobs = str(settings.pipeline.tune_jobs or local_tune_jobs())
    return {**to_environment(settings), "MODELYARD_PIPELINE__TUNE_JOBS": tune_jobs}


def local_tune_jobs() -> int:
    """CV processes per tune task on this machine: its cores shared by the loop iterations run at once."""
    return max(1, available_cpus() // LOCAL_LOOP_PARALLELISM)


def run_pipeline_locally(
    pipeline: str,
    arguments: dict[str, Any],
    settings: Settings,
    *,
    run_name: str,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> PipelineRun:
    """Run ``pipeline`` ("module:function") with kfp.local; PipelineFailed naming the failed step.

    ``on_event`` gets each task's events as the tasks write them.
    """
    root = settings.home.resolve() / "pipelines"
    folder = root / "runs" / f"{run_name}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    folder.mkdir(parents=True)
    request = {"pipeline": pipeline, "arguments": arguments, "pipeline_root": str(root)}
    (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
    events_file, log_file = folder / "events.jsonl", folder / "kfp.log"
    environment = {
        **os.environ,
        **task_environment(settings),
        "MODELYARD_PIPELINE__EVENTS_FILE": str(events_file),
    }
    follower = EventFollower(events_file, on_event or (lambda _event: None)).start()
    try:
        with log_file.open("wb") as log:
            runner = subprocess.Popen(
                [sys.executable, "-m", "modelyard.pipeline.local_runner", str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
            try:
                code = runner.wait()
            finally:
                if runner.poll() is None:  # interrupted: do not leave the run behind
                    runner.terminate()
                    runner.wait()
    finally:
        events = follower.stop()
    if code != 0:
        raise _failure(code, events, log_file)
    output = json.loads((folder / "output.json").read_text(encoding="utf-8"))
    return PipelineRun(output, log_file, events)


def run_training_locally(
    settings: Settings,
    spec: ModelSpec,
    *,
    auto_deploy: bool = False,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> LocalRun:
    """Run the training pipeline with kfp.local; return the run's summary (the pipeline's output)."""
    run = run_pipeline_locally(
        TRAINING_PIPELINE,
        {"spec_yaml": spec_to_yaml(spec), "auto_deploy": auto_deploy},
        settings,
        run_name=spec.name,
        on_event=on_event,
    )
    return LocalRun(json.loads(run.output), run.log_file, run.events, len(spec.algorithms))


def _failure(code: int, events: list[TaskEvent], log_file: Path) -> PipelineFailed:
    failed = [event for event in events if event.state == FAILED]
    if failed:
        message = "\n".join(f"{event.task}: {event.message}" for event in failed)
        return PipelineFailed(message, failed_task=failed[0].task, log_file=log_file)
    # No step failed: the run broke around the steps (KFP itself, a component's own code).
    lines = [
        line for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
    ]
    tail = "\n".join(lines[-LOG_LINES_SHOWN:])
    return PipelineFailed(
        f"the local pipeline run failed (exit code {code}); the end of its log, {log_file}:\n{tail}",
        failed_task=None,
        log_file=log_file,
    )
