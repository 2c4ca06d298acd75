"""A KFP task process whose step succeeded skips the interpreter's teardown, and only then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TASK = """
import atexit, sys
from pathlib import Path

# Registered before the step's handler, so it runs after it: printed only when teardown is not skipped.
atexit.register(lambda: print("TEARDOWN", flush=True))

from modelyard.pipeline.steps import reporting_errors

@reporting_errors
def step():
    return "done"

print("step", step())  # not flushed on purpose: a skipped teardown must still flush stdout
mode, output_file = sys.argv[1], Path(sys.argv[2])
if mode in ("written", "raises"):
    output_file.write_text("{}")
if mode == "raises":
    raise RuntimeError("the executor failed after the step")
"""


def _task(tmp_path: Path, mode: str, *, kfp_runtime: bool = True) -> subprocess.CompletedProcess[str]:
    output_file = tmp_path / "executor_output.json"
    executor_input = json.dumps({"outputs": {"outputFile": str(output_file)}})
    env = {key: value for key, value in os.environ.items() if key != "_KFP_RUNTIME"}
    if kfp_runtime:
        env["_KFP_RUNTIME"] = "true"
    command = [sys.executable, "-c", TASK, mode, str(output_file), "--executor_input", executor_input]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_task_whose_outputs_are_written_exits_0_without_teardown(tmp_path: Path) -> None:
    done = _task(tmp_path, "written")
    assert done.returncode == 0, done.stderr
    assert "step done" in done.stdout
    assert "TEARDOWN" not in done.stdout


@pytest.mark.parametrize(
    ("mode", "returncode"),
    [("raises", 1), ("not-written", 0)],
    ids=["uncaught-exception-keeps-its-exit-code", "no-output-file-exits-normally"],
)
def test_a_task_that_failed_or_wrote_nothing_exits_as_python_would(
    tmp_path: Path, mode: str, returncode: int
) -> None:
    done = _task(tmp_path, mode)
    assert done.returncode == returncode, done.stderr
    assert "TEARDOWN" in done.stdout
    if mode == "raises":
        assert "RuntimeError: the executor failed after the step" in done.stderr


def test_outside_a_kfp_task_nothing_changes(tmp_path: Path) -> None:
    done = _task(tmp_path, "written", kfp_runtime=False)
    assert done.returncode == 0, done.stderr
    assert "TEARDOWN" in done.stdout
