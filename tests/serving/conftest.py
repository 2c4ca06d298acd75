"""Fixtures for the model server: tiny real bundles, and real server processes on loopback ports.

Two bundles, both fitted in a temporary folder with the training pipeline's own preprocessing:

- ``numeric``: four numeric features (iris-like), three string classes;
- ``mixed``: a numeric, a categorical and a text feature, two integer classes (0, 1).

Servers run as subprocesses (``python -m modelyard.serving``), as the image runs them: their signals,
exit codes and logs are the real ones. Every server is stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from modelyard.bundle import BundleMetadata, write_bundle
from modelyard.onnx_export import export_onnx
from modelyard.registry import upgrade
from modelyard.serving.features import FeatureSchema
from modelyard.spec import FeatureSpec, FeatureType
from modelyard.training.preprocessing import build_preprocessor

from ..conftest import PostgresService, start_postgres

NUMERIC_FEATURES = [
    FeatureSpec(name=name, type=FeatureType.NUMERIC)
    for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
]
NUMERIC_CLASSES = ["setosa", "versicolor", "virginica"]
MIXED_FEATURES = [
    FeatureSpec(name="age", type=FeatureType.NUMERIC),
    FeatureSpec(name="plan", type=FeatureType.CATEGORICAL),
    FeatureSpec(name="review", type=FeatureType.TEXT),
]
MIXED_CLASSES = [0, 1]
SERVER_START_TIMEOUT_S = 120.0  # a shared, busy CI machine; a quiet one starts in 2 to 3 s


# Two schemas the feature-handling and codec tests share: all numeric, and every feature type.
NUMERIC = FeatureSchema(
    BundleMetadata(
        name="iris",
        algorithm="logistic_regression",
        target="species",
        features=[FeatureSpec(name=n, type=FeatureType.NUMERIC) for n in ("a", "b", "c")],
        classes=["x", "y"],
        dataset_fingerprint="sha256:t",
    )
)

MIXED = FeatureSchema(
    BundleMetadata(
        name="churn",
        algorithm="logistic_regression",
        target="churned",
        features=[
            FeatureSpec(name="age", type=FeatureType.NUMERIC),
            FeatureSpec(name="plan", type=FeatureType.CATEGORICAL),
            FeatureSpec(name="review", type=FeatureType.TEXT),
            FeatureSpec(name="score", type=FeatureType.NUMERIC),
        ],
        classes=[0, 1],
        dataset_fingerprint="sha256:t",
    )
)


def numeric_frame(rows: int = 90, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.array(NUMERIC_CLASSES)[np.arange(rows) % 3]
    centre = {"setosa": 0.0, "versicolor": 2.0, "virginica": 4.0}
    shift = np.array([centre[label] for label in labels])
    frame = pd.DataFrame(
        {f.name: rng.normal(size=rows) + shift * (i + 1) / 2 for i, f in enumerate(NUMERIC_FEATURES)}
    )
    return frame, labels


def mixed_frame(rows: int = 80, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 2
    words = np.where(labels == 1, "great lovely fine", "awful broken sad")
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, size=rows) + labels * 5,
            "plan": pd.Series(np.where(labels == 1, "pro", "free"), dtype=object),
            "review": pd.Series([f"{w} item {i}" for i, w in enumerate(words)], dtype=object),
        }
    )
    return frame, labels


def write_tiny_bundle(
    dest: Path, kind: str, *, name: str | None = None, onnx: bool = False
) -> BundleMetadata:
    """A real bundle: the training preprocessing + LogisticRegression, fitted on a few rows; with
    ``onnx``, its ONNX export too (served by ONNX Runtime)."""
    if kind == "numeric":
        features, classes = NUMERIC_FEATURES, NUMERIC_CLASSES
        frame, labels = numeric_frame()
    elif kind == "mixed":
        features, classes = MIXED_FEATURES, MIXED_CLASSES
        frame, labels = mixed_frame()
    else:
        raise ValueError(kind)
    model = Pipeline(
        [("preprocess", build_preprocessor(features)), ("model", LogisticRegression(max_iter=500))]
    ).fit(frame, labels)
    extra_files: dict[str, bytes] = {}
    onnx_info = None
    if onnx:
        export = export_onnx(model, features, list(model.classes_), frame)
        assert export.info.file == "model.onnx", export.info.skipped
        onnx_info, extra_files = export.info, dict(export.extra_files)
    metadata = BundleMetadata(
        name=name or kind,
        algorithm="logistic_regression",
        target="label",
        features=features,
        classes=classes,
        dataset_fingerprint=hashlib.sha256(b"tiny").hexdigest(),  # publishing checks its form
        onnx=onnx_info,
    )
    return write_bundle(
        dest,
        model=model,
        metadata=metadata,
        model_card="# tiny\n",
        report_html="<p>tiny</p>",
        extra_files=extra_files,
    )


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    paths = {}
    for kind in ("numeric", "mixed"):
        write_tiny_bundle(root / kind, kind)
        paths[kind] = root / kind
    write_tiny_bundle(root / "numeric-onnx", "numeric", onnx=True)
    paths["numeric-onnx"] = root / "numeric-onnx"
    return paths


# ---------------------------------------------------------------- server processes


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (probes held together, so no port is handed out twice)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def probe_url(self) -> str:
        """The probe and metrics port (``--metrics-port``)."""
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def server_env(home: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELYARD_", "AWS_"))}
    env.update({"MODELYARD_HOME": str(home), "PYTHONUNBUFFERED": "1", **variables})
    return env


def start_server(
    model_dir: Path,
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_for: str = "/v2/health/live",
    migrate: bool = True,
) -> ServerProcess:
    """``python -m modelyard.serving`` on free loopback ports; returns once ``wait_for`` answers.

    The server never migrates its database: unless ``migrate`` is False, this does first, as
    `modelyard db upgrade` would.
    """
    home.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_ports(3)
    log_path = home / f"server-{http_port}.log"
    environment = env if env is not None else server_env(home)
    if migrate:
        upgrade(environment.get("MODELYARD_DATABASE_URL", f"sqlite:///{home / 'modelyard.db'}"))
    command = [
        sys.executable, "-m", "modelyard.serving", "--model-dir", str(model_dir), "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    server = ServerProcess(process, http_port, grpc_port, metrics_port, log_path, home, environment)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while http_status(server.url + wait_for, timeout=1.0) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server did not start:\n{server.log()}")
        time.sleep(0.1)
    return server


@pytest.fixture(scope="session")
def numeric_server(
    bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = start_server(
        bundles["numeric"],
        tmp_path_factory.mktemp("numeric-home"),
        "--model-version",
        "3",
        "--max-request-rows",
        "50",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mixed_server(
    bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = start_server(bundles["mixed"], tmp_path_factory.mktemp("mixed-home"), "--model-name", "churn")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tampered_server(
    bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server whose bundle's model.joblib was altered after publishing: live, never ready."""
    root = tmp_path_factory.mktemp("tampered")
    shutil.copytree(bundles["numeric"], root / "bundle")
    with (root / "bundle" / "model.joblib").open("ab") as handle:
        handle.write(b"appended by an attacker")
    server = start_server(root / "bundle", root / "home", "--model-name", "iris")
    yield server
    server.stop()


# ---------------------------------------------------------------- raw HTTP


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    method: str,
    url: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> HttpAnswer:
    """A raw request with exactly these headers (no Content-Type unless given, like tritonclient); a
    body given in parts is sent chunked."""
    parts = urllib.parse.urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def post_json(
    url: str, document: Any, headers: dict[str, str] | None = None, timeout: float = 30
) -> HttpAnswer:
    return send("POST", url, json.dumps(document).encode(), headers, timeout)


# ---------------------------------------------------------------- a Postgres the tests may kill


@pytest.fixture(scope="session")
def killable_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    """A PostgreSQL server of the serving tests' own, which they may kill and start again."""
    service = start_postgres(tmp_path_factory, "killable-postgres")
    yield service
    # The server object only knows the first postmaster; stop the restarted one ourselves.
    with contextlib.suppress(Exception):
        service.pg_ctl("-w", "-m", "fast", "stop")
    service.server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated registry database, as `modelyard db upgrade` leaves it: SQLite, then Postgres."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    return url
