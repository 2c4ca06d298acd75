"""Real parts for monitoring tests: a bundle with a drift reference, a model server process, a Prometheus.

The bundle is the training preprocessing + LogisticRegression on four numeric features drawn from
N(0, 1); its drift reference is fitted on 3000 rows and its calibration on a 1000-row holdout. The model
server runs as ``python -m modelyard.serving`` with the prediction log on (SQLite) and live accuracy
refreshed every second; Debian's Prometheus scrapes it every second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from modelyard.bundle import BundleMetadata, write_bundle
from modelyard.monitoring.prometheus_server import start_prometheus as start_prometheus_server
from modelyard.monitoring.reference import drift_reference
from modelyard.registry.db import upgrade
from modelyard.spec import FeatureSpec, FeatureType
from modelyard.training.preprocessing import build_preprocessor

from ..serving.conftest import free_ports

FEATURES = [FeatureSpec(name=f"f{i}", type=FeatureType.NUMERIC) for i in range(4)]
CLASSES = ["no", "yes"]
MODEL = "drifty"
START_TIMEOUT_S = 90.0


def frame(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({f.name: rng.normal(size=rows) for f in FEATURES})
    score = data["f0"] + 0.5 * data["f1"] + rng.normal(scale=0.8, size=rows)
    return data, np.where(score > 0, "yes", "no")


def write_drift_bundle(dest: Path) -> BundleMetadata:
    train, train_labels = frame(3000, 0)
    holdout, holdout_labels = frame(1000, 1)
    model = Pipeline([("preprocess", build_preprocessor(FEATURES)), ("model", LogisticRegression())])
    model.fit(train, train_labels)
    accuracy = float((model.predict(holdout) == holdout_labels).mean())
    reference = drift_reference(
        train,
        FEATURES,
        holdout_probabilities=model.predict_proba(holdout),
        holdout_labels=list(holdout_labels),
        classes=CLASSES,
    )
    metadata = BundleMetadata(
        name=MODEL,
        algorithm="logistic_regression",
        target="label",
        features=FEATURES,
        classes=CLASSES,
        metrics={"accuracy": accuracy},
        dataset_fingerprint="0" * 64,
        reference_stats={"format": "modelyard.reference/v1", "drift": reference},
    )
    return write_bundle(dest, model=model, metadata=metadata, model_card="# drifty\n", report_html="<p/>")


def wait_until(
    check: Any, what: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.25)


def http_json(url: str, document: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, _decoded(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, _decoded(error.read())
    except (urllib.error.URLError, OSError):
        return 0, None


def _decoded(body: bytes) -> Any:
    """The JSON of an answer, or its text (Prometheus' /-/ready answers text)."""
    try:
        return json.loads(body or b"null")
    except ValueError:
        return body.decode(errors="replace")


@dataclass
class Process:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> Process:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return Process(process, log_path)


@dataclass
class Predictor:
    process: Process
    url: str
    database_url: str


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    root = tmp_path_factory.mktemp("predictor")
    write_drift_bundle(root / "bundle")
    database_url = f"sqlite:///{root / 'registry.db'}"
    upgrade(database_url)
    http_port, grpc_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELYARD_", "AWS_"))}
    env.update(
        {
            "MODELYARD_HOME": str(root / "home"),
            "MODELYARD_DATABASE_URL": database_url,
            "MODELYARD_MONITORING__ACCURACY_MATURITY_H": "0",
            "MODELYARD_MONITORING__ACCURACY_REFRESH_S": "1",
            "MODELYARD_SERVING__LOG_FLUSH_INTERVAL_S": "0.2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = [
        sys.executable, "-m", "modelyard.serving", "--model-dir", str(root / "bundle"),
        "--model-version", "1", "--host", "127.0.0.1", "--http-port", str(http_port),
        "--grpc-port", str(grpc_port), "--prediction-log",
    ]  # fmt: skip
    process = spawn(command, root / "server.log", env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: http_json(f"{url}/v2/health/ready")[0] == 200, "predictor ready", START_TIMEOUT_S,
                   process.process)  # fmt: skip
    except Exception:
        process.stop()
        raise RuntimeError(f"the predictor did not start:\n{process.log()}") from None
    yield Predictor(process, url, database_url)
    process.stop()


@dataclass
class Prometheus:
    process: Process
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(expr)
        status, answer = http_json(f"{self.url}/api/v1/query?query={quoted}")
        if status != 200 or answer["status"] != "success":
            raise AssertionError(f"Prometheus refused {expr!r}: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def start_prometheus(
    root: Path,
    targets: list[str],
    program: str,
    *,
    rule_files: list[Path] = (),
    alertmanager: str | None = None,  # type: ignore[assignment]
) -> Prometheus:
    """Prometheus (``program``, the ``prometheus_binary`` fixture's, run by
    modelyard.monitoring.prometheus_server) scraping ``targets`` every second as job ``modelyard``, with
    ``rule_files`` and ``alertmanager`` when given."""
    (port,) = free_ports(1)
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "modelyard", "static_configs": [{"targets": targets}]}],
        "rule_files": [str(path) for path in rule_files],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    server = start_prometheus_server(root, config, port, program)
    return Prometheus(Process(server.process, server.log), server.url)


def instances(rows: pd.DataFrame) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in rows.to_dict(orient="records")]


def send_traffic(url: str, rows: pd.DataFrame, batch: int = 50) -> list[str]:
    """V1 predictions of ``rows`` in requests of ``batch`` rows; the request ids, in order."""
    ids = []
    for start in range(0, len(rows), batch):
        request_id = f"load-{start}-{time.monotonic_ns()}"
        status, answer = http_json(
            f"{url}/v1/models/{MODEL}:predict",
            {"instances": instances(rows.iloc[start : start + batch])},
            headers={"x-request-id": request_id},
        )
        assert status == 200, answer
        ids.append(request_id)
    return ids
