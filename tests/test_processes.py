"""modelyard.processes: waiting for a server to be ready, and stopping what a killed parent left running
(only a process whose command line still holds the argument its pid file recorded)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modelyard.processes import NotReady, record_pid, stop_leftover, wait_until_ready

from .conftest import waiting_process
from .serving.conftest import free_ports


def closed_url() -> str:
    (port,) = free_ports(1)
    return f"http://127.0.0.1:{port}/ready"


def test_a_server_that_exits_before_it_is_ready_is_not_ready_with_its_exit_code() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(NotReady) as raised:
        wait_until_ready(closed_url(), process, 600, "the server")
    assert raised.value.message == "the server exited 3 before it was ready"


def test_a_server_waited_for_while_stopping_is_not_ready() -> None:
    process = waiting_process()
    stopping = threading.Event()
    stopping.set()
    try:
        with pytest.raises(NotReady) as raised:
            wait_until_ready(closed_url(), process, 600, "the predictor", stopping)
        assert raised.value.message == "the predictor was stopped before it was ready"
    finally:
        process.kill()
        process.communicate()


def test_a_leftover_is_stopped_only_while_its_command_line_holds_the_argument_recorded(
    tmp_path: Path,
) -> None:
    ours = waiting_process("--config.file=/ours.yml")
    other = waiting_process("--config.file=/theirs.yml")
    try:
        record_pid(tmp_path / "other.pid", other, "--config.file=/ours.yml")
        assert stop_leftover(tmp_path / "other.pid") is None
        assert other.poll() is None, "a process the pid file does not name as ours was stopped"
        assert not (tmp_path / "other.pid").exists()

        record_pid(tmp_path / "ours.pid", ours, "--config.file=/ours.yml")
        assert stop_leftover(tmp_path / "ours.pid") == ours.pid
        assert ours.wait(30) == -signal.SIGTERM
        assert not (tmp_path / "ours.pid").exists()
        assert stop_leftover(tmp_path / "ours.pid") is None  # no file: nothing to stop
    finally:
        for process in (ours, other):
            process.kill()
            process.communicate()
