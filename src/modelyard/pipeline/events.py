"""Task events: how a local run learns what its tasks are doing, from the tasks themselves.

Each step a component calls is wrapped by ``task_events``: when ``MODELYARD_PIPELINE__EVENTS_FILE`` is
set, it appends one JSON line when the step starts and one when it ends (succeeded, or failed with the
error's message). `modelyard train` and `modelyard score` set it to a file in the run's folder and follow
that file; on a cluster it is unset and a step writes nothing. The path travels in the environment, not
as a parameter, so it never enters a task's cache key.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from modelyard.errors import ModelyardError

P = ParamSpec("P")
T = TypeVar("T")

STARTED, SUCCEEDED, FAILED = "started", "succeeded", "failed"


@dataclass(frozen=True)
class TaskEvent:
    """One line of the events file: a task started, succeeded or failed (with its step's message)."""

    task: str
    state: str
    seconds: float = 0.0  # the step's run time, on success or failure
    message: str = ""
    item: str = ""  # the loop item a ParallelFor iteration works on, e.g. the algorithm a tune task tunes

    @property
    def status(self) -> str:
        """The task's status as `modelyard train` shows it: running, SUCCESS or FAILURE."""
        return {STARTED: "running", SUCCEEDED: "SUCCESS", FAILED: "FAILURE"}.get(self.state, self.state)

    def to_line(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode("utf-8")


def append_event(path: str, event: TaskEvent) -> None:
    """Append one line with a single write: tasks running at once share the file, and O_APPEND keeps
    each line whole."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, event.to_line())
    finally:
        os.close(descriptor)


def _events_file() -> str:
    from modelyard.settings import load_settings

    return load_settings().pipeline.events_file


def task_events(task: str, *, item: str | None = None) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Report the wrapped step as task ``task`` in the events file, when one is configured.

    ``item`` names the keyword argument whose value is the loop item (e.g. ``algorithm``).
    """

    def decorate(step: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(step)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            path = _events_file()
            if not path:
                return step(*args, **kwargs)
            label = str(kwargs.get(item, "")) if item else ""
            append_event(path, TaskEvent(task, STARTED, item=label))
            started = time.perf_counter()
            try:
                result = step(*args, **kwargs)
            except Exception as exc:
                # A ModelyardError says what went wrong in words; anything else is named by its type.
                message = exc.message if isinstance(exc, ModelyardError) else f"{type(exc).__name__}: {exc}"
                seconds = round(time.perf_counter() - started, 3)
                append_event(path, TaskEvent(task, FAILED, seconds, message, label))
                raise
            append_event(
                path, TaskEvent(task, SUCCEEDED, round(time.perf_counter() - started, 3), item=label)
            )
            return result

        return run

    return decorate


def parse_event(line: str) -> TaskEvent | None:
    """A line of the events file as a TaskEvent; None for a line that is not one."""
    try:
        fields = json.loads(line)
        return TaskEvent(**fields) if isinstance(fields, dict) else None
    except (json.JSONDecodeError, TypeError):
        return None


class EventFollower:
    """A thread that reads the events file as the tasks append to it, and hands each new event on.

    Only complete lines are read: a task may be halfway through its write when the file is looked at.
    ``stop()`` reads what is left once the run is over, so no event is lost.
    """

    POLL_SECONDS = 0.1

    def __init__(self, path: Path, on_event: Callable[[TaskEvent], None]) -> None:
        self.path = path
        self.events: list[TaskEvent] = []
        self._on_event = on_event
        self._offset = 0
        self._pending = b""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="modelyard-task-events", daemon=True)

    def start(self) -> EventFollower:
        self._thread.start()
        return self

    def stop(self) -> list[TaskEvent]:
        self._done.set()
        self._thread.join()
        return self.events

    def _follow(self) -> None:
        while not self._done.wait(self.POLL_SECONDS):
            self._read()
        self._read()

    def _read(self) -> None:
        for event in self._new_events():
            self.events.append(event)
            self._on_event(event)

    def _new_events(self) -> Iterator[TaskEvent]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            event = parse_event(line.decode("utf-8", errors="replace"))
            if event is not None:
                yield event
