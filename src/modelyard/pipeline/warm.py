"""Warm task processes for kfp.local: every task is forked from one process that has already imported
what tasks use.

kfp.local's SubprocessRunner starts each task as ``sh -ec '... python3 -m kfp.dsl.executor_main ...'``:
a new interpreter that imports pandas, scikit-learn and SciPy again, 1.5 to 2 s of every task on two
cores, for the fourteen or so tasks of a training run. Here a server process imports them once, and forks
one child per task. The child is what the task's subprocess would have been: kfp's ``executor_main``
with the task's arguments, environment and working directory, its output going where kfp reads it, and
its exit code the task's status.

kfp.local has no runner hook, so for the duration of a run ``warm_task_processes`` replaces
``kfp.local.subprocess_task_handler.run_local_subprocess``, the function that starts a task's process.
Commands other than kfp's launcher of a lightweight component, and every task when the server cannot
start, go to kfp's own function.

The server is ``python -m modelyard.pipeline.warm SOCKET``. It forks only from its single thread, and
exits when its parent closes its stdin (or dies), terminating the tasks it still runs.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import os
import runpy
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

# What the tasks of the training and scoring pipelines import. The server imports them with the
# environment the tasks get, so modules that read it at import see the same values.
PRELOADED_MODULES = (
    "kfp.dsl.executor_main",
    "pandas",
    "joblib",
    "modelyard.pipeline.steps",
    "modelyard.pipeline.scoring_steps",
    "modelyard.data.loading",
    "modelyard.data.validation",
    "modelyard.training.candidates",
    "modelyard.training.tuning",
    "modelyard.training.evaluation",
    "modelyard.training.train",
    "modelyard.training.report",
    "modelyard.gating",
    "modelyard.registry",
    "modelyard.publishing",
)

EXECUTOR_MODULE = "kfp.dsl.executor_main"
READY = "ready"
# kfp's launcher runs the executor with this set; kfp reads it at import to skip what only compiling needs
_RUNTIME_ENV = {"_KFP_RUNTIME": "true"}
_LENGTH = struct.Struct("!I")
_MOST_REQUEST_BYTES = 64 * 1024 * 1024


@functools.cache
def launcher_script() -> str:
    """kfp's ``sh -ec`` script that writes a lightweight component's source to a file and runs it."""
    from kfp import dsl

    def probe() -> None:
        pass

    probe.__annotations__.clear()  # this module's annotations are strings, which kfp would read as types
    component = dsl.component(probe, base_image="python:3.11", install_kfp_package=False)
    container = component.component_spec.implementation.container
    assert container is not None
    return str(container.command[2])


def task_arguments(full_command: Sequence[str], python: str) -> tuple[str, list[str]] | None:
    """The component's source and its executor's arguments, when ``full_command`` is kfp's launcher
    run with ``python``; None for any other command."""
    expected = launcher_script().replace("python3", python)
    if len(full_command) < 4 or list(full_command[:3]) != ["sh", "-ec", expected]:
        return None
    return full_command[3], list(full_command[4:])


class WarmTaskServer:
    """The client side: starts the server, and runs tasks in it."""

    def __init__(self, log: IO[str]) -> None:
        self._log = log
        self._folder = Path(tempfile.mkdtemp(prefix="modelyard-warm-"))
        self.socket_path = str(self._folder / "tasks.sock")
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, self.socket_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **_RUNTIME_ENV},
            text=True,
        )
        self._ready: bool | None = None
        self._ready_lock = threading.Lock()

    def ready(self) -> bool:
        """Wait for the server's preloading; False, with the reason in the log, if it did not start."""
        with self._ready_lock:
            if self._ready is None:
                assert self._process.stdout is not None
                self._ready = self._process.stdout.readline().strip() == READY
                if not self._ready:
                    self._log.write(
                        f"modelyard: the warm task server exited ({self._process.wait()}) before it was "
                        "ready; every task runs in a new process\n"
                    )
            return self._ready

    def run(self, full_command: Sequence[str], env_vars: Mapping[str, str] | None) -> int | None:
        """Run one task as kfp.local would, printing its output; its exit code, or None when this
        command is not a task the server runs (the caller starts it the usual way)."""
        arguments = task_arguments(full_command, sys.executable)
        if arguments is None or not self.ready():
            return None
        source, executor_arguments = arguments
        program = Path(tempfile.mkdtemp(prefix="modelyard-task-"))
        try:
            module = program / "ephemeral_component.py"
            module.write_text(source, encoding="utf-8")
            request = {
                "argv": ["--component_module_path", str(module), *executor_arguments],
                "env": {**os.environ, **(env_vars or {}), **_RUNTIME_ENV},
                "cwd": str(Path.cwd()),
            }
            return self._run(request)
        finally:
            shutil.rmtree(program, ignore_errors=True)

    def _run(self, request: dict[str, Any]) -> int | None:
        output, task_output = os.pipe()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            try:
                connection.connect(self.socket_path)
                payload = json.dumps(request).encode()
                socket.send_fds(connection, [_LENGTH.pack(len(payload))], [task_output])
                connection.sendall(payload)
            except OSError as error:
                os.close(output)
                self._log.write(f"modelyard: the warm task server is gone ({error}); a new process runs it\n")
                return None
            finally:
                os.close(task_output)
            with open(output, encoding=None, errors="replace") as lines:  # noqa: PTH123 - a pipe, not a path
                for line in lines:
                    print(line, end="")
            print("\n")  # as kfp.local does after a task's output
            status = _receive_all(connection).decode().strip()
        if not status.lstrip("-").isdigit():
            print("modelyard: the warm task server exited while the task ran")
            return 1
        return int(status)

    def close(self) -> None:
        """Stop the server (it terminates the tasks it still runs) and remove its socket."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        shutil.rmtree(self._folder, ignore_errors=True)


@contextlib.contextmanager
def warm_task_processes(log: IO[str]) -> Iterator[WarmTaskServer | None]:
    """Run the kfp.local tasks started inside this block as forks of a warm server.

    Yields None, and changes nothing, when this kfp has no ``run_local_subprocess`` to replace.
    """
    from kfp.local import subprocess_task_handler

    start_process = getattr(subprocess_task_handler, "run_local_subprocess", None)
    if start_process is None:
        log.write("modelyard: this kfp has no run_local_subprocess; every task runs in a new process\n")
        yield None
        return
    launcher_script()  # here, not inside the run: kfp cannot define a component while it runs a pipeline
    server = WarmTaskServer(log)

    def run_local_subprocess(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        code = server.run(full_command, env_vars)
        return start_process(full_command, env_vars) if code is None else code

    subprocess_task_handler.run_local_subprocess = run_local_subprocess
    try:
        yield server
    finally:
        subprocess_task_handler.run_local_subprocess = start_process
        server.close()


def _receive_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


# The server side.


@dataclass
class _Task:
    pid: int
    connection: socket.socket
    exited: int  # read end of a pipe only the child holds open: end of file when it exits


def serve(socket_path: str) -> None:
    """Preload, listen on ``socket_path``, print READY, and fork a child per task until stdin closes."""
    for name in PRELOADED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # a task that needs it gets the error itself, and its traceback
            print(f"modelyard: warm task server: cannot preload {name}: {error}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    tasks: dict[int, _Task] = {}  # by the fd of its `exited` pipe
    print(READY, flush=True)
    try:
        while True:
            for key, _events in selector.select():
                if key.fileobj is sys.stdin:
                    if not os.read(key.fd, 4096):
                        return
                elif key.fileobj is listener:
                    task = _start_task(listener, selector, tasks)
                    if task is not None:
                        tasks[task.exited] = task
                        selector.register(task.exited, selectors.EVENT_READ)
                        selector.register(task.connection, selectors.EVENT_READ, task)
                elif isinstance(key.data, _Task):  # the client hung up before its task ended
                    selector.unregister(key.data.connection)
                    _kill(key.data.pid)
                else:
                    task = tasks.pop(key.fd)
                    _report_exit(task, selector)
    finally:
        for task in tasks.values():
            _kill(task.pid)


def _start_task(
    listener: socket.socket, selector: selectors.BaseSelector, tasks: Mapping[int, _Task]
) -> _Task | None:
    connection, _address = listener.accept()
    try:
        request, task_output = _receive_request(connection)
    except (OSError, ValueError) as error:
        print(f"modelyard: warm task server: bad request: {error}", file=sys.stderr)
        connection.close()
        return None
    exited, child_holds = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener.close()
        selector.close()
        for task in tasks.values():
            task.connection.close()
            os.close(task.exited)
        connection.close()
        os.close(exited)
        _run_task(request, task_output)  # never returns
    os.close(child_holds)
    os.close(task_output)
    return _Task(pid, connection, exited)


def _receive_request(connection: socket.socket) -> tuple[dict[str, Any], int]:
    connection.settimeout(30)
    header, fds, _flags, _address = socket.recv_fds(connection, _LENGTH.size, 1)
    if len(fds) != 1 or len(header) != _LENGTH.size:
        for fd in fds:
            os.close(fd)
        raise ValueError("expected a length and the task's output descriptor")
    (length,) = _LENGTH.unpack(header)
    if length > _MOST_REQUEST_BYTES:
        os.close(fds[0])
        raise ValueError(f"a request of {length} bytes")
    payload = bytearray()
    while len(payload) < length:
        chunk = connection.recv(length - len(payload))
        if not chunk:
            os.close(fds[0])
            raise ValueError("the request ended early")
        payload += chunk
    connection.settimeout(None)
    return json.loads(payload), fds[0]


def _report_exit(task: _Task, selector: selectors.BaseSelector) -> None:
    selector.unregister(task.exited)
    if task.connection.fileno() in selector.get_map():
        selector.unregister(task.connection)
    os.close(task.exited)
    _pid, status = os.waitpid(task.pid, 0)
    with contextlib.suppress(OSError), task.connection:
        task.connection.sendall(str(os.waitstatus_to_exitcode(status)).encode())


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def _run_task(request: dict[str, Any], task_output: int) -> NoReturn:
    """In the forked child: become the task's process, run kfp's executor, and exit with its code."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(task_output, 1)
        os.dup2(task_output, 2)
        os.close(task_output)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin, for its lifetime
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = str(Path.cwd())  # as `python -m` sets it
        if "numpy" in sys.modules:  # its global generator would be the same in every fork
            sys.modules["numpy"].random.seed()
        sys.argv = [EXECUTOR_MODULE, *request["argv"]]  # run_module puts the module's path first
        code = _run_executor()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_executor() -> int:
    """Run kfp's executor as ``python -m`` would, atexit handlers included; its exit code."""
    try:
        runpy.run_module(EXECUTOR_MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_request:
        code = _exit_code(exit_request.code)
    except BaseException as error:
        sys.last_type, sys.last_value, sys.last_traceback = type(error), error, error.__traceback__
        sys.excepthook(type(error), error, error.__traceback__)
        code = 1
    atexit._run_exitfuncs()
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
