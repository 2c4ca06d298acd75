"""A Prometheus server on this machine: its configuration written to a folder, the ``prometheus`` program
(Debian's package) started on a given port of 127.0.0.1 with its data beside it, and waited for until it
says it is ready. `modelyard operator --local` runs one to scrape its local predictors, and the tests run
one wherever a real scrape matters; both stop it with ``PrometheusServer.stop``.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard.errors import ModelyardError

PROMETHEUS_PROGRAM = "prometheus"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 1500


def answers_ok(url: str) -> bool:
    """Whether a GET of ``url`` answers 200 within two seconds."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def prometheus_duration(seconds: float) -> str:
    """``seconds`` as a Prometheus duration (whole milliseconds: its durations take no fractions)."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(
    root: Path,
    config: dict[str, Any],
    port: int,
    program: str = PROMETHEUS_PROGRAM,
    timeout_s: float = READY_TIMEOUT_S,
) -> PrometheusServer:
    """Prometheus with ``config`` (written to ``root/prometheus.yml``) on 127.0.0.1:``port``, its data
    in ``root/data`` and its log in ``root/prometheus.log``, once ``/-/ready`` answers. A server that exits
    or is not ready within ``timeout_s`` is stopped, and a ModelyardError says why with its log's end."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = root / "prometheus.log"
    command = [
        program,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while not answers_ok(f"{server.url}/-/ready"):
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            server.stop()
            what = f"exited {code}" if code is not None else f"was not ready within {timeout_s:g} s"
            said = server.log_tail() or "it logged nothing"
            raise ModelyardError(f"{program} ({config_path}) {what}: {said}")
        time.sleep(0.2)
    return server
