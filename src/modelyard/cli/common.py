"""What every command module shares: the two consoles, error reporting, settings, the registry, JSON
output, progress displays and the model reference parameter."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from modelyard.errors import InvalidInput, ModelyardError
from modelyard.registry.refs import ModelRef, parse_model_ref
from modelyard.settings import Settings, load_settings

if TYPE_CHECKING:
    from modelyard.registry import Registry

out = Console(soft_wrap=True)
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a spec field: KEY=VALUE (dotted keys).")
]
MODEL_REF_HELP = "NAME (the production version, else the latest), NAME@VERSION, NAME@STAGE or NAME@latest."


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a ModelyardError into one red line on stderr and its exit code (1 unless the error says
    otherwise), instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ModelyardError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper


def settings() -> Settings:
    return load_settings()


def open_registry(current: Settings) -> Registry:
    from modelyard.registry import Registry

    return Registry(current.database_url)


def print_json(payload: Any) -> None:
    out.print_json(json.dumps(payload, default=str))


def model_ref(text: str) -> ModelRef:
    """A typer ``parser``: a bad reference is a usage error (exit 2) naming the problem."""
    try:
        return parse_model_ref(text)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.message) from None


@contextmanager
def byte_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar of bytes done out of bytes in all, with the speed."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@contextmanager
def step_progress() -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per training step (tune <algorithm>, evaluate, report)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        yield update


@contextmanager
def task_progress() -> Iterator[Callable[[Any], None]]:
    """One line per pipeline task: a spinner while it runs, then its status and time."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err
    ) as bars:
        running: dict[str, list[Any]] = {}  # a loop runs several tasks of one name
        marks = {"SUCCESS": "[green]done[/]", "FAILURE": "[red]failed[/]", "cached": "[cyan]cached[/]"}

        def on_event(event: Any) -> None:
            if event.status == "running":
                running.setdefault(event.task, []).append(bars.add_task(f"{event.task:<20} running", total=1))
                return
            queue = running.get(event.task)
            task_id = queue.pop(0) if queue else bars.add_task("", total=1)
            mark = marks.get(event.status, event.status)
            bars.update(task_id, description=f"{event.task:<20} {mark}", completed=1)
            bars.stop_task(task_id)

        yield on_event


def cell(value: Any) -> str:
    """A table cell: floats to 4 places, a dict as one ``key: value`` line per entry."""
    if isinstance(value, dict):
        return "\n".join(f"{k}: {cell(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)
