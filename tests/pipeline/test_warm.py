"""Warm task processes: kfp.local's tasks forked from a server that has imported their libraries.

These run real tasks through kfp's executor_main, in real forks of a real server process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kfp.local import subprocess_task_handler

from modelyard.pipeline import components
from modelyard.pipeline.warm import (
    WarmTaskServer,
    launcher_script,
    task_arguments,
    warm_task_processes,
)

# A lightweight component's source, as kfp ships it. It reports what its process looks like.
TASK_SOURCE = """
import kfp
from kfp import dsl
from kfp.dsl import *
from typing import *

def report(mode: str) -> str:
    import json, os, signal, subprocess, sys, threading, time
    preloaded = "pandas" in sys.modules  # before this task imports anything
    import numpy
    started = time.time()
    print("task says hello", flush=True)
    if mode == "raise":
        raise ValueError("the step failed on purpose")
    if mode == "exit-3":
        sys.exit(3)
    if mode == "exit-2**31":
        sys.exit(2**31)  # exit() keeps the low byte: 0
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode in ("sleep", "helper"):
        if mode == "helper":  # a helper left running, its output elsewhere; the task itself ends
            helper = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pid = helper.pid
        else:
            pid = os.getpid()
        open(os.environ["PID_FILE"], "w").write(str(pid))
        if mode == "sleep":
            time.sleep(120)
    if mode == "thread":  # a non-daemon thread: the interpreter waits for it before exiting
        def late() -> None:
            time.sleep(0.5)
            open(os.environ["THREAD_FILE"], "w").write("finished")
        threading.Thread(target=late).start()
    if mode == "overlap":
        time.sleep(1)
    return json.dumps({
        "pid": os.getpid(), "parent": os.getppid(), "cwd": os.getcwd(), "preloaded": preloaded,
        "env": {key: os.environ.get(key) for key in ("TASK_VAR", "DROPPED_VAR", "_KFP_RUNTIME", "PWD")},
        "random": float(numpy.random.random()), "started": started, "ended": time.time(),
    })
"""


def _command(tmp_path: Path, mode: str, name: str = "task") -> tuple[list[str], Path]:
    output_file = tmp_path / name / "executor_output.json"
    output_file.parent.mkdir(parents=True)
    executor_input = {
        "inputs": {"parameterValues": {"mode": mode}},
        "outputs": {
            "parameters": {"Output": {"outputFile": str(tmp_path / name / "Output")}},
            "outputFile": str(output_file),
        },
    }
    script = launcher_script().replace("python3", sys.executable)
    arguments = ["--executor_input", json.dumps(executor_input), "--function_to_execute", "report"]
    return ["sh", "-ec", script, TASK_SOURCE, *arguments], output_file


def _returned(output_file: Path) -> dict[str, Any]:
    output = json.loads(output_file.read_text())
    return dict(json.loads(output["parameterValues"]["Output"]))


@contextlib.contextmanager
def _server(log: io.StringIO | None = None) -> Iterator[WarmTaskServer]:
    with tempfile.TemporaryFile("w+") as log_file:
        server = WarmTaskServer(log_file)
        try:
            yield server
        finally:
            server.close()
            if log is not None:
                log_file.seek(0)
                log.write(log_file.read())


def _run(server: WarmTaskServer, command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = server.run(command, env)
    assert code is not None, "the server did not take the task"
    return code, printed.getvalue()


def test_the_launcher_matches_the_pipelines_components() -> None:
    container = components.tune.component_spec.implementation.container
    assert container is not None
    compiled = [*container.command, *container.args]
    assert compiled[:3] == ["sh", "-ec", launcher_script()]
    # as kfp.local runs it: python3 replaced by this interpreter
    run_here = subprocess_task_handler.replace_python_executable(compiled, sys.executable)
    source, arguments = task_arguments(run_here, sys.executable) or ("", [])
    assert "def tune(" in source
    assert arguments[0] == "--executor_input"
    assert arguments[-2:] == ["--function_to_execute", "tune"]


@pytest.mark.parametrize(
    "command",
    [
        ["sh", "-c", "echo hello"],
        ["sh", "-ec", "python3 -m kfp.dsl.executor_main", "source"],
        ["python3", "-m", "kfp.dsl.executor_main", "--executor_input", "{}"],
    ],
    ids=["another-shell-command", "another-script", "no-shell"],
)
def test_commands_other_than_kfps_launcher_are_not_taken(command: list[str]) -> None:
    assert task_arguments(command, sys.executable) is None


def test_launcher_run_with_another_python_is_not_taken(tmp_path: Path) -> None:
    command, _output = _command(tmp_path, "ok")
    assert task_arguments(command, sys.executable) is not None
    assert task_arguments(command, "/usr/bin/python3.9") is None


@pytest.fixture(scope="module")
def shared_server() -> Iterator[WarmTaskServer]:
    """One server for the tests that need nothing special of it: preloading takes seconds."""
    with _server() as server:
        assert server.ready()
        yield server


def test_a_task_runs_in_a_fork_of_the_warm_server_with_its_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPPED_VAR", "seen by the server only")
    with _server() as server:
        assert server.ready()
        monkeypatch.delenv("DROPPED_VAR")
        monkeypatch.chdir(tmp_path)
        command, output_file = _command(tmp_path, "ok")
        code, printed = _run(server, command, {"TASK_VAR": "from kfp"})
        server_pid = server._process.pid
    assert code == 0, printed
    assert "task says hello" in printed
    assert "Warning" not in printed and "Traceback" not in printed
    returned = _returned(output_file)
    assert returned["parent"] == server_pid  # forked by the server, not started by us
    assert returned["preloaded"] is True
    assert returned["cwd"] == str(tmp_path)
    assert returned["env"] == {
        "TASK_VAR": "from kfp",
        "DROPPED_VAR": None,
        "_KFP_RUNTIME": "true",
        "PWD": str(tmp_path),
    }


@pytest.mark.parametrize(
    ("mode", "code", "message"),
    [
        ("raise", 1, "ValueError: the step failed on purpose"),
        ("exit-3", 3, "task says hello"),
        ("exit-2**31", 0, "task says hello"),
        ("killed", 128 + 9, "modelyard: the task's process was killed by signal 9 (SIGKILL)"),
    ],
)
def test_a_task_ends_with_the_exit_code_a_new_process_would_have(
    shared_server: WarmTaskServer, tmp_path: Path, mode: str, code: int, message: str
) -> None:
    command, output_file = _command(tmp_path, mode)
    returned_code, printed = _run(shared_server, command)
    assert returned_code == code
    assert message in printed
    if mode == "raise":
        assert "Traceback (most recent call last)" in printed
    assert not output_file.exists()
    # and the server goes on serving
    assert _run(shared_server, _command(tmp_path, "ok", "next")[0])[0] == 0


def test_concurrent_tasks_run_at_once_each_with_its_own_output_and_random_state(
    shared_server: WarmTaskServer, tmp_path: Path
) -> None:
    results: dict[str, int | None] = {}
    commands = {name: _command(tmp_path, "overlap", name) for name in ("first", "second")}

    def run(name: str) -> None:
        results[name] = shared_server.run(commands[name][0], None)

    with contextlib.redirect_stdout(io.StringIO()):
        threads = [threading.Thread(target=run, args=(name,)) for name in commands]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert results == {"first": 0, "second": 0}
    first, second = (_returned(output_file) for _command, output_file in commands.values())
    assert first["pid"] != second["pid"]
    assert first["random"] != second["random"]
    assert max(first["started"], second["started"]) < min(first["ended"], second["ended"])


def test_a_task_exits_once_its_non_daemon_threads_have_finished(
    shared_server: WarmTaskServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_file = tmp_path / "thread"
    monkeypatch.setenv("THREAD_FILE", str(thread_file))
    code, printed = _run(shared_server, _command(tmp_path, "thread")[0])
    assert code == 0, printed
    assert thread_file.read_text() == "finished"


def test_a_task_is_done_when_its_process_ends_not_when_a_helper_it_left_does(
    shared_server: WarmTaskServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "helper"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    code, printed = _run(shared_server, _command(tmp_path, "helper")[0])
    helper = int(pid_file.read_text())
    try:
        assert code == 0, printed
        assert not _gone_within(helper, 0)  # still sleeping: the task's end was not waiting for it
    finally:
        os.kill(helper, 9)


@contextlib.contextmanager
def _raw_request(
    server: WarmTaskServer, tmp_path: Path, mode: str, pid_file: Path
) -> Iterator[socket.socket]:
    """Start a task as the client does, but hand over the connection: the caller decides when to hang up
    (the task's output pipe stays open for the block)."""
    command, _output = _command(tmp_path, mode)
    source, arguments = task_arguments(command, sys.executable) or ("", [])
    module = tmp_path / "ephemeral_component.py"
    module.write_text(source)
    request = {
        "argv": ["--component_module_path", str(module), *arguments],
        "env": {**os.environ, "PID_FILE": str(pid_file)},
        "cwd": str(tmp_path),
    }
    read_end, write_end = os.pipe()
    connection = socket.socket(socket.AF_UNIX)
    connection.connect(server.socket_path)
    payload = json.dumps(request).encode()
    socket.send_fds(connection, [len(payload).to_bytes(4, "big")], [write_end])
    connection.sendall(payload)
    os.close(write_end)
    try:
        yield connection
    finally:
        connection.close()
        os.close(read_end)


def test_a_client_that_hangs_up_gets_its_task_killed(shared_server: WarmTaskServer, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with _raw_request(shared_server, tmp_path, "sleep", pid_file) as connection:
        pid = int(_wait_for(pid_file).read_text())
        connection.close()
    # the connection is closed: the server kills the task
    assert _gone_within(pid, 20)
    assert _run(shared_server, _command(tmp_path, "ok", "next")[0])[0] == 0


STALE_HANG_UP = """
import os, selectors, socket, subprocess, time
from modelyard.pipeline import warm

selector = selectors.DefaultSelector()
client, connection = socket.socketpair()
child = subprocess.Popen(["true"])
while os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
    time.sleep(0.01)
task = warm._Task(child.pid, connection)
tasks = {child.pid: task}
selector.register(connection, selectors.EVENT_READ, task)
client.close()
batch = selector.select(timeout=10)  # the hang-up, seen in the same batch as the task's end
warm._report_ended(tasks, selector)  # reaps the task and closes its connection
for key, _events in batch:
    warm._client_hung_up(key.data, tasks, selector)
print("serving on", len(batch), tasks)
"""


def test_a_task_ending_as_its_client_hangs_up_leaves_the_server_serving() -> None:
    # in a process of its own: the server reaps any child of its process
    done = subprocess.run(
        [sys.executable, "-c", STALE_HANG_UP], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "serving on 1 {}"


def test_output_printed_before_ready_goes_to_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('a sitecustomize that talks')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    log = io.StringIO()
    with _server(log) as server:
        assert server.ready()
        assert _run(server, _command(tmp_path, "ok")[0])[0] == 0
    assert "a sitecustomize that talks" in log.getvalue()


def test_closing_the_server_terminates_the_tasks_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    results: list[tuple[int, str]] = []
    with _server() as server:
        command, _output = _command(tmp_path, "sleep")
        thread = threading.Thread(target=lambda: results.append(_run(server, command)))
        thread.start()
        pid = int(_wait_for(pid_file).read_text())
    thread.join(timeout=30)
    assert _gone_within(pid, 20)
    code, printed = results[0]
    assert code == 1
    assert "the warm task server exited while the task ran" in printed


def test_a_server_that_cannot_start_leaves_tasks_to_new_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket path longer than AF_UNIX allows: the server fails before it is ready.
    too_deep = tmp_path / ("d" * 120)
    too_deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(too_deep))
    log_file = tmp_path / "run.log"
    command, output_file = _command(tmp_path, "ok")
    printed = io.StringIO()
    with log_file.open("w") as log, warm_task_processes(log) as server:
        assert server is not None
        assert not server.ready()
        with contextlib.redirect_stdout(printed):
            code = subprocess_task_handler.run_local_subprocess(command)
    assert code == 0, printed.getvalue()
    assert "task says hello" in printed.getvalue()
    assert _returned(output_file)["preloaded"] is False  # a new interpreter ran it
    log_text = log_file.read_text()
    assert "AF_UNIX path too long" in log_text
    assert "the warm task server exited (1) before it was ready; every task runs in a new process" in log_text


def test_the_hook_is_in_place_only_inside_the_block(tmp_path: Path) -> None:
    original = subprocess_task_handler.run_local_subprocess
    printed = io.StringIO()
    with (tmp_path / "run.log").open("w") as log, warm_task_processes(log):
        assert subprocess_task_handler.run_local_subprocess is not original
        with contextlib.redirect_stdout(printed):
            code = subprocess_task_handler.run_local_subprocess(["sh", "-c", "echo plain; exit 4"])
    assert subprocess_task_handler.run_local_subprocess is original
    assert code == 4  # not a component launcher: kfp's own function ran it
    assert "plain" in printed.getvalue()


def _wait_for(path: Path, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    return path


def _gone_within(pid: int, timeout: float) -> bool:
    """Whether the process ended (a zombie nobody has reaped yet counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
