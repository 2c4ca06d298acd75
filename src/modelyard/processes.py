"""Server processes this machine starts (`modelyard up`'s model server, `modelyard operator --local`'s
predictors and Prometheus, the tests' servers): waiting until one says it is ready (a GET that answers
200), stopping one, and a pid file by which a later start finds and stops one that a killed parent left
running. A pid file records an argument of the process's command line too, and only a process whose
``/proc/<pid>/cmdline`` still holds it is stopped, so a pid the system gave to another program is left
alone (where there is no ``/proc``, nothing is)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from modelyard.errors import ModelyardError

POLL_S = 0.2
STOP_TIMEOUT_S = 20.0


class NotReady(ModelyardError):
    """A server exited, or did not answer in time, before it said it was ready."""


def answers_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def post_json(url: str, document: Any, timeout_s: float) -> tuple[int, Any]:
    """POST ``document`` as JSON: (the status, the answer decoded from JSON, or its text when it is not
    JSON). OSError (urllib's URLError) when nothing answers."""
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as exc:  # an answer all the same: 4xx and 5xx carry a body
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode("utf-8", "replace")


def wait_until_ready(
    url: str,
    process: subprocess.Popen[bytes],
    timeout_s: float,
    what: str,
    stopping: threading.Event | None = None,
) -> None:
    """Return once a GET of ``url`` answers 200. NotReady, its message starting with ``what``, when
    ``process`` exits first, ``timeout_s`` passes or ``stopping`` is set; the caller stops the process."""
    deadline = time.monotonic() + timeout_s
    while not answers_ok(url):
        code = process.poll()
        if code is not None:
            raise NotReady(f"{what} exited {code} before it was ready")
        if stopping is not None and stopping.is_set():
            raise NotReady(f"{what} was stopped before it was ready")
        if time.monotonic() > deadline:
            raise NotReady(f"{what} was not ready within {timeout_s:g} s")
        time.sleep(POLL_S)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, and SIGKILL when it has not exited within ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def record_pid(pid_file: Path, process: subprocess.Popen[bytes], argument: str) -> None:
    """Write ``process``'s pid and ``argument`` (one of its command line's, naming it as ours) to
    ``pid_file``, for ``stop_leftover``."""
    pid_file.write_text(json.dumps({"pid": process.pid, "argument": argument}) + "\n")


def runs_with(pid: int, argument: str) -> bool:
    """Whether process ``pid`` runs with ``argument`` on its command line (a zombie's is empty)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argument.encode() in arguments


def recorded_pid(pid_file: Path) -> tuple[int, str] | None:
    """The pid and argument ``pid_file`` records (``record_pid``); None when it records none."""
    try:
        recorded = json.loads(pid_file.read_text())
        return int(recorded["pid"]), str(recorded["argument"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_pid(pid_file: Path, process: subprocess.Popen[bytes]) -> None:
    """Remove ``pid_file`` if it still records ``process``: a later start may have stopped it as a
    leftover and recorded its own, which must stay findable."""
    recorded = recorded_pid(pid_file)
    if recorded is not None and recorded[0] == process.pid:
        pid_file.unlink(missing_ok=True)


def stop_leftover(pid_file: Path, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the process ``pid_file`` names if it still runs with the argument recorded, and remove the
    file; the pid stopped, or None."""
    recorded = recorded_pid(pid_file)
    if recorded is None:
        return None
    pid, argument = recorded
    stopped = None
    if runs_with(pid, argument):
        stopped = pid
        for sent, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
            try:
                os.kill(pid, sent)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while runs_with(pid, argument) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if not runs_with(pid, argument):
                break
    pid_file.unlink(missing_ok=True)
    return stopped
