"""Training runs the console starts: `modelyard train --in-process`'s function, ``run_training``, in a
thread of the console's process, with its progress and outcome kept in memory for the page to poll.

A run's record lives as long as the console process; the version it publishes is in the registry like any
other. One run at a time: a second start while one runs is a Conflict, so a double click trains once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelyard.errors import Conflict, ModelyardError, NotFound, SpecError
from modelyard.settings import Settings
from modelyard.spec import ModelSpec, parse_spec

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    id: str
    model: str
    status: str = "running"  # running, published, rejected, failed
    step: str = "starting"
    done: int = 0
    total: int = 0
    message: str = ""
    version: int | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_spec_text(text: str, base_dir: Path) -> ModelSpec:
    """A ModelSpec from YAML text; relative data paths resolve against ``base_dir`` (the console's folder)."""
    if not text.strip():
        raise SpecError("the spec is empty: paste a model spec in YAML (see the README: Declaring a model)")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"the spec is not valid YAML: {exc}") from None
    return parse_spec(raw, source="the spec", base_dir=base_dir)


class TrainingRuns:
    """Runs started from the console, by id."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runs: dict[str, TrainingRun] = {}
        self._lock = threading.Lock()

    def start(self, spec: ModelSpec) -> TrainingRun:
        with self._lock:
            busy = [run for run in self._runs.values() if run.status == "running"]
            if busy:
                raise Conflict(f"training run {busy[0].id} of {busy[0].model} is still running: wait for it")
            run = TrainingRun(id=uuid.uuid4().hex[:12], model=spec.name)
            self._runs[run.id] = run
        threading.Thread(target=self._train, args=(run, spec), name=f"train-{run.id}", daemon=True).start()
        return run

    def get(self, run_id: str) -> TrainingRun:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no training run {run_id!r} in this console (runs are kept until it restarts)")
        return run

    def _train(self, run: TrainingRun, spec: ModelSpec) -> None:
        from modelyard.workflow import run_training

        def progress(step: str, done: int, total: int) -> None:
            run.step, run.done, run.total = step, done, total

        try:
            outcome = run_training(self._settings, spec, progress=progress)
        except ModelyardError as exc:
            run.status, run.message = "failed", exc.message
        except Exception as exc:  # a thread's failure must reach the page, not vanish into the log
            # its text can name hosts and users (a database error's does): the log has it, the page the type
            log.exception("training run %s failed", run.id)
            run.status = "failed"
            run.message = f"training failed ({type(exc).__name__}); the details are in the console's log"
        else:
            if outcome.published is not None:
                run.status, run.version = "published", outcome.published.version
                run.message = f"published {outcome.published.ref} ({outcome.published.stage.value})"
            else:
                run.status, run.message = "rejected", f"the gate rejected the run: {outcome.verdict.reason}"
        run.finished_at = time.time()
