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

The server is ``python -m modelyard.pipeline.warm SOCKET``. It forks only from its one Python thread,
and exits when its parent closes its stdin (or dies), terminating the tasks it still runs. A task's
process differs from a new interpreter's in what is settled before it starts: what Python reads from
the environment at start-up (PYTHONHASHSEED, PYTHONWARNINGS, PYTHONPATH) and what the preloaded
libraries read at import (OMP_NUM_THREADS, for one) come from the server's environment, which is the
run's. Tasks whose container sets such variables should run with ``MODELYARD_PIPELINE__WARM_TASKS=false``.
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

EXECUTOR_MODULE = "kfp.dsl.executor_main"
# What the tasks of the training and scoring pipelines import. The server imports them with the
# environment the tasks get, so modules that read it at import see the same values.
PRELOADED_MODULES = (
    EXECUTOR_MODULE,
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
                for line in self._process.stdout:  # READY, after anything a preloaded module printed
                    if line.strip() == READY:
                        self._ready = True
                        break
                    self._log.write(line)
                else:
                    self._ready = False
                    self._log.write(
                        f"modelyard: the warm task server exited ({self._stop()}) before it was "
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
            cwd = str(Path.cwd())
            request = {
                "argv": ["--component_module_path", str(module), *executor_arguments],
                # PWD: as the launcher's shell exports it
                "env": {**os.environ, **(env_vars or {}), **_RUNTIME_ENV, "PWD": cwd},
                "cwd": cwd,
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
            with open(output, errors="replace") as lines:  # noqa: PTH123 - a pipe, not a path
                for line in lines:
                    print(line, end="")
            print("\n")  # as kfp.local does after a task's output
            outcome = _receive_all(connection).decode().split()
        match outcome:
            case ["exit", code] if code.isdigit():
                return int(code)
            case ["signal", number] if number.isdigit():
                # the launcher's shell would report 128 + N; say which, as the shell would print it
                print(f"modelyard: the task's process was killed by {_signal_name(int(number))}")
                return 128 + int(number)
        print("modelyard: the warm task server exited while the task ran")
        return 1

    def close(self) -> None:
        """Stop the server (it terminates the tasks it still runs) and remove its folder."""
        self._stop()
        if self._process.stdout is not None:
            self._process.stdout.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _stop(self) -> int:
        """End the server: its stdin closed, SIGTERM if it does not end, SIGKILL as a last resort."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:  # still preloading (never ready), it reads its stdin only once it serves
            return self._process.wait(timeout=10 if self._ready else 0.01)
        except subprocess.TimeoutExpired:
            self._process.terminate()
        try:
            return self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
        return self._process.wait()


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


def _signal_name(number: int) -> str:
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


# The server side.


@dataclass
class _Task:
    pid: int
    connection: socket.socket


def serve(socket_path: str) -> None:
    """Listen on ``socket_path``, preload, print READY, and fork a child per task until stdin closes."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # Ctrl-C reaches the tasks themselves (one process group); the server ends when its parent closes stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    announce, sys.stdout = sys.stdout, sys.stderr  # what preloaded modules print goes to the run's log
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_path)  # before preloading: a path this system refuses fails at once
        listener.listen(64)
        _preload()
        _serve(listener, announce)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            Path(socket_path).unlink()
            Path(socket_path).parent.rmdir()  # the client's folder, if it died without removing it


def _preload() -> None:
    for name in PRELOADED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # a task that needs it gets the error itself, and its traceback
            print(f"modelyard: warm task server: cannot preload {name}: {error}", file=sys.stderr)
    # Imported for what it imports; kept, runpy would warn that it runs a module already imported.
    sys.modules.pop(EXECUTOR_MODULE, None)


def _serve(listener: socket.socket, announce: IO[str]) -> None:
    # SIGCHLD wakes the loop through this pipe; the handler itself has nothing to do
    children_ended, wake = os.pipe()
    os.set_blocking(children_ended, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    selector.register(children_ended, selectors.EVENT_READ)
    tasks: dict[int, _Task] = {}  # by pid
    print(READY, file=announce, flush=True)
    try:
        while True:
            for key, _events in selector.select():
                if key.fileobj is sys.stdin:
                    if not os.read(key.fd, 4096):
                        return
                elif key.fileobj is listener:
                    task = _start_task(listener, selector, tasks, (children_ended, wake))
                    if task is not None:
                        tasks[task.pid] = task
                        selector.register(task.connection, selectors.EVENT_READ, task)
                elif key.fileobj == children_ended:
                    with contextlib.suppress(BlockingIOError):
                        os.read(children_ended, 4096)
                    _report_ended(tasks, selector)
                elif isinstance(key.data, _Task):
                    _client_hung_up(key.data, tasks, selector)
    finally:
        for task in tasks.values():
            _kill(task.pid)


def _start_task(
    listener: socket.socket,
    selector: selectors.BaseSelector,
    tasks: Mapping[int, _Task],
    server_fds: tuple[int, int],
) -> _Task | None:
    connection, _address = listener.accept()
    try:
        request, task_output = _receive_request(connection)
    except (OSError, ValueError) as error:
        print(f"modelyard: warm task server: bad request: {error}", file=sys.stderr)
        connection.close()
        return None
    # No signal handler of the server's may run in the child before it has its own.
    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                for fd in server_fds:
                    os.close(fd)
                listener.close()
                selector.close()
                for task in tasks.values():
                    task.connection.close()
                connection.close()
                _run_task(request, task_output, handled)
            finally:
                os._exit(1)  # never back into the server's loop, whatever happened above
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    os.close(task_output)
    return _Task(pid, connection)


def _receive_request(connection: socket.socket) -> tuple[dict[str, Any], int]:
    connection.settimeout(5)  # the client sends it at once; the server waits for nothing else meanwhile
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


def _report_ended(tasks: dict[int, _Task], selector: selectors.BaseSelector) -> None:
    """Reap every child that has ended, and tell its client how."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        task = tasks.pop(pid, None)
        if task is None:
            continue
        if task.connection.fileno() in selector.get_map():
            selector.unregister(task.connection)
        if os.WIFSIGNALED(status):
            outcome = f"signal {os.WTERMSIG(status)}"
        else:
            outcome = f"exit {os.waitstatus_to_exitcode(status)}"
        with contextlib.suppress(OSError), task.connection:
            task.connection.sendall(outcome.encode())


def _client_hung_up(task: _Task, tasks: Mapping[int, _Task], selector: selectors.BaseSelector) -> None:
    """End a task whose client hung up (a client sends nothing after its request). The event is stale
    when the task ended, and was reported, earlier in the same batch of events."""
    if task.pid in tasks:
        selector.unregister(task.connection)
        _kill(task.pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def _run_task(request: dict[str, Any], task_output: int, blocked: set[signal.Signals]) -> NoReturn:
    """In the forked child: become the task's process, run kfp's executor, and exit with its code."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in blocked:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(task_output, 1)
        os.dup2(task_output, 2)
        os.close(task_output)
        # the same encodings and error handlers as the server's, which Python chose for pipes as here
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own, for its lifetime
        sys.stdout = _text_stream(1, sys.__stdout__)
        sys.stderr = _text_stream(2, sys.__stderr__)
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
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code & 0xFF)  # what exit() keeps of it


def _text_stream(fd: int, like: IO[str] | None) -> IO[str]:
    encoding = getattr(like, "encoding", None)
    errors = getattr(like, "errors", None)
    return open(fd, "w", buffering=1, encoding=encoding, errors=errors, closefd=False)


def _run_executor() -> int:
    """Run kfp's executor as ``python -m`` would: non-daemon threads joined, then atexit handlers;
    its exit code."""
    try:
        runpy.run_module(EXECUTOR_MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_request:
        code = _exit_code(exit_request.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException as error:
        sys.last_type, sys.last_value, sys.last_traceback = type(error), error, error.__traceback__
        sys.excepthook(type(error), error, error.__traceback__)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter does before atexit
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
