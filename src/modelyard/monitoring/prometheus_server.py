"""A Prometheus server on this machine: its configuration written to a folder, the ``prometheus`` program
(Debian's package) started on a given port of 127.0.0.1 with a fresh data folder beside it, and waited for
until it says it is ready. `modelyard operator --local` runs one to scrape its local predictors, and the
tests run one wherever a real scrape matters; both stop it with ``PrometheusServer.stop``, which removes
its data. Its pid is recorded in the folder, so a start finds and stops a server a killed parent left on
the same folder (one whose command line still names the folder's configuration) before its own.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard.errors import ModelyardError
from modelyard.processes import (
    NotReady,
    forget_pid,
    record_pid,
    stop_leftover,
    stop_process,
    wait_until_ready,
)

PROMETHEUS_PROGRAM = "prometheus"
READY_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 1500
PID_FILE = "prometheus.pid"
DATA_PREFIX = "data-"  # each start's data folder: data-<random>


def prometheus_duration(seconds: float) -> str:
    """``seconds`` as a Prometheus duration (whole milliseconds: its durations take no fractions)."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    data: Path
    pid_file: Path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop it, and remove its data, and its pid file while that still records it (not one a later
        start on the same folder wrote)."""
        stop_process(self.process)
        shutil.rmtree(self.data, ignore_errors=True)
        forget_pid(self.pid_file, self.process)


def start_prometheus(
    root: Path,
    config: dict[str, Any],
    port: int,
    program: str = PROMETHEUS_PROGRAM,
    timeout_s: float = READY_TIMEOUT_S,
) -> PrometheusServer:
    """Prometheus with ``config`` (written to ``root/prometheus.yml``) on 127.0.0.1:``port``, its data
    in a new ``root/data-*`` folder and its log in ``root/prometheus.log``, once ``/-/ready`` answers. A
    server that exits or is not ready within ``timeout_s`` is stopped, and a ModelyardError says why with
    its log's end. A server left running on ``root`` by a killed parent is stopped first, and the data of
    earlier starts removed."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "prometheus.yml"
    pid_file = root / PID_FILE
    stop_leftover(pid_file)
    for old in root.glob(f"{DATA_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)
    data = Path(tempfile.mkdtemp(prefix=DATA_PREFIX, dir=root))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = root / "prometheus.log"
    command = [
        program,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    record_pid(pid_file, process, f"--config.file={config_path}")
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log, data, pid_file)
    try:
        wait_until_ready(f"{server.url}/-/ready", process, timeout_s, f"{program} ({config_path})")
    except NotReady as exc:
        server.stop()
        raise ModelyardError(f"{exc.message}: {server.log_tail() or 'it logged nothing'}") from None
    return server
