"""modelyard.processes: waiting for a server to be ready, stopping what a killed parent left running
(only a process whose command line still holds the argument its pid file recorded), and a JSON POST."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modelyard.processes import NotReady, post_json, record_pid, stop_leftover, wait_until_ready

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


class Answers(http.server.BaseHTTPRequestHandler):
    """Echoes a JSON document back, or answers a status with the body the path names."""

    def do_POST(self) -> None:
        document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, body = {
            "/echo": (200, json.dumps({"got": document, "type": self.headers["Content-Type"]})),
            "/refused": (400, json.dumps({"error": "no such feature"})),
            "/text": (503, "upstream down"),
            "/empty": (204, ""),
        }[self.path]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: object) -> None:
        pass


def test_post_json_answers_the_status_and_the_decoded_answer_or_its_text() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert post_json(f"{base}/echo", {"x": [1]}, timeout_s=10) == (
            200,
            {"got": {"x": [1]}, "type": "application/json"},
        )
        assert post_json(f"{base}/refused", {}, timeout_s=10) == (400, {"error": "no such feature"})
        assert post_json(f"{base}/text", {}, timeout_s=10) == (503, "upstream down")
        assert post_json(f"{base}/empty", {}, timeout_s=10) == (204, None)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(OSError):
        post_json(closed_url(), {}, timeout_s=10)
