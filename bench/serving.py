"""The model server against its peers, side by side in one run, with one load generator (wrk) on loopback.

    .venv/bin/python bench/serving.py [--duration 5] [--repeats 3] [--write-docs]

Servers, each one process with one worker, listening on 127.0.0.1:

- ``modelyard``: ``python -m modelyard.serving`` with its defaults (adaptive batching, the ONNX runtime
  when the bundle verified it) except drift and the prediction log, which are off, as the peers have
  neither (``MODELYARD_MONITORING__DRIFT=false``, ``MODELYARD_SERVING__PREDICTION_LOG=false``);
- ``modelyard-monitored``: the same with both on (the log in SQLite), LogisticRegression at 1 row, c=8 and
  256 rows only: what monitoring costs (issue 12);
- ``kserve``: kserve 0.21's ``ModelServer`` with a predictor built like kserve's ``python/sklearnserver``
  (``bench/serving/kserve_sklearn.py``);
- ``mlserver`` and ``mlserver-batching``: MLServer 1.7.1 with mlserver-sklearn in its own venv (created
  under ``~/.cache/modelyard-bench`` if missing), ``parallel_workers: 0``, without and with adaptive
  batching (``max_batch_size``/``max_batch_time``, by default the same 64 rows and 2 ms as modelyard);
- ``fastapi``: the floor, a bare FastAPI + uvicorn endpoint (``bench/serving/floor.py``).

Models: RandomForestClassifier(n_estimators=100, random_state=0) and LogisticRegression, trained on
``make_classification(n_samples=10000, n_features=20, random_state=0)`` inside modelyard's training
preprocessing (median imputation, standard scaling). modelyard serves that Pipeline from a bundle (with
model.onnx when its probabilities match scikit-learn's within 1e-5). The peers get the Pipeline's fitted
final estimator alone and are sent rows already imputed and scaled: they compute the same probabilities
(checked on 256 rows against every server) while doing strictly less work per row.

Workloads (wrk, keep-alive connections, one wrk thread; each run ``--duration`` seconds):
single-row V2 JSON at concurrency 1, 8 and 64; 256-row V2 batches at concurrency 8, as JSON and, where
the server speaks the binary tensor extension (modelyard, KServe), as raw FP64 tensors with binary
outputs; single-row V1 at concurrency 8 where the server speaks V1 (not MLServer). During the
concurrency-64 run a second process probes ``/v2/health/live`` (a new connection per probe, every
``--probe-interval-ms``, bounded count) on the server's probe port: modelyard's metrics port, the HTTP
port of the others (where their kubelet probes go).
Server CPU per request: the user and system CPU seconds of the server's process tree (psutil) over each
wrk run, divided by the requests wrk completed. The window closes once the server is idle again (no CPU
spent over ``IDLE_WINDOW_S`` and, where the server has a prediction log, its queue empty), so the log's
writes of the run's last requests are counted too; the server process's own share is kept apart from
its children's (modelyard's prediction-log writer). CPU per request hardly moves with the other load on
the machine, unlike requests/s on a shared machine, which is why the overhead of monitoring (issue 12) is
judged on both. After the load: RSS of the server's process tree (psutil), and, for modelyard with the
prediction log, the records its log wrote and dropped (from its metrics). Cold start: process spawn to
the first 200 from ``/v2/models/NAME/ready``. Every server is started ``--repeats`` times (sessions
interleaved across servers and models, so drifting machine load spreads over all of them); each figure is
the median over the sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "serving"
VENV_PYTHON = Path(sys.executable)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelyard-bench"
MLSERVER_VENV = CACHE / "mlserver-venv"
MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_SECTION = "## Model server"
RESULTS_BEGIN = "<!-- bench/serving.py results: begin -->"
RESULTS_END = "<!-- bench/serving.py results: end -->"

N_SAMPLES, N_FEATURES, DATA_SEED = 10_000, 20, 0
FEATURE_NAMES = [f"f{i:02d}" for i in range(N_FEATURES)]
BATCH_ROWS = 256
PARITY_TOLERANCE = 1e-5
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
# The server counts as idle once it spends less than IDLE_CPU_S of CPU over IDLE_WINDOW_S.
IDLE_WINDOW_S = 0.2
IDLE_CPU_S = 0.002
SETTLE_TIMEOUT_S = 30.0
LOG_METRICS = {
    "modelyard_prediction_log_queue_depth": "queue_depth",
    "modelyard_prediction_log_written_total": "written",
    "modelyard_prediction_log_dropped_total": "dropped",
}


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelCase:
    key: str
    title: str
    algorithm: str
    make: Callable[[], Any]


def _random_forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, random_state=0)


def _logistic_regression() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


MODELS = {
    "rf": ModelCase("rf", "RandomForest(100)", "random_forest", _random_forest),
    "lr": ModelCase("lr", "LogisticRegression", "logistic_regression", _logistic_regression),
}


@dataclass
class PreparedModel:
    case: ModelCase
    bundle_dir: Path  # modelyard's bundle
    peer_dir: Path  # model.joblib (the final estimator) for the peers
    reference: np.ndarray  # probabilities of the batch rows, from the fitted Pipeline
    onnx: str  # "verified (max |diff| ...)" or why not
    in_process: dict[str, float] = field(default_factory=dict)  # ms per call


@dataclass(frozen=True)
class Payloads:
    """Request bodies on disk: raw rows for modelyard, imputed and scaled rows for the peers."""

    v2_single: Path
    v2_batch: Path
    v1_single: Path
    v2_batch_binary: Path
    """The batch as a JSON header and raw little-endian FP64 rows (the binary tensor extension)."""
    binary_header_length: int


def prepare_models(
    keys: Sequence[str], workdir: Path
) -> tuple[dict[str, PreparedModel], dict[str, Payloads]]:
    """Fit each model, write modelyard's bundle and the peers' joblib file, and the request bodies."""
    import joblib
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.pipeline import Pipeline

    from modelyard.bundle import BundleMetadata, write_bundle
    from modelyard.monitoring.reference import drift_reference
    from modelyard.onnx_export import export_onnx
    from modelyard.spec import FeatureSpec, FeatureType
    from modelyard.training.preprocessing import build_preprocessor

    features = [FeatureSpec(name=name, type=FeatureType.NUMERIC) for name in FEATURE_NAMES]
    x, y = make_classification(n_samples=N_SAMPLES, n_features=N_FEATURES, random_state=DATA_SEED)
    frame = pd.DataFrame(x, columns=FEATURE_NAMES)
    batch = x[:BATCH_ROWS]
    prepared: dict[str, PreparedModel] = {}
    scaled_batch: np.ndarray | None = None
    for key in keys:
        case = MODELS[key]
        started = time.perf_counter()
        pipeline = Pipeline([("preprocess", build_preprocessor(features)), ("model", case.make())])
        pipeline.fit(frame, y)
        export = export_onnx(pipeline, features, [0, 1], frame.iloc[:2000])
        holdout = frame.iloc[-2000:]
        reference = drift_reference(
            frame,
            features,
            holdout_probabilities=pipeline.predict_proba(holdout),
            holdout_labels=list(y[-2000:]),
            classes=[0, 1],
        )
        metadata = BundleMetadata(
            name=key,
            algorithm=case.algorithm,
            target="label",
            features=features,
            classes=[0, 1],
            dataset_fingerprint=f"make_classification({N_SAMPLES}, {N_FEATURES}, random_state={DATA_SEED})",
            onnx=export.info,
            reference_stats={"format": "modelyard.reference/v1", "drift": reference},
        )
        bundle_dir = workdir / "modelyard" / key
        write_bundle(
            bundle_dir,
            model=pipeline,
            metadata=metadata,
            model_card=f"# {case.title} (benchmark)\n",
            report_html="<p>benchmark</p>",
            extra_files=export.extra_files,
        )
        # The peers' model: the same fitted estimator, fed rows the fitted imputer and scaler produced.
        numeric = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
        scaled_batch = numeric.transform(frame.iloc[:BATCH_ROWS])
        estimator = pipeline.named_steps["model"]
        peer_dir = workdir / "peer" / key
        peer_dir.mkdir(parents=True)
        joblib.dump(estimator, peer_dir / "model.joblib")
        reference = pipeline.predict_proba(frame.iloc[:BATCH_ROWS])
        gap = float(np.max(np.abs(estimator.predict_proba(scaled_batch) - reference)))
        if gap > 1e-12:
            raise SystemExit(f"{key}: the peers' estimator differs from the Pipeline by {gap:g}")
        info = export.info
        onnx = (
            f"verified (max |onnx - sklearn| {info.max_abs_diff:.1e} on {info.rows_checked} rows)"
            if info.file
            else f"not used: {info.skipped}"
        )
        prepared[key] = PreparedModel(case, bundle_dir, peer_dir, reference, onnx)
        prepared[key].in_process = time_in_process(pipeline, estimator, bundle_dir, frame, scaled_batch)
        print(f"  {case.title}: fitted and written in {time.perf_counter() - started:.1f} s; ONNX {onnx}")
    assert scaled_batch is not None
    # Both models share the imputer and scaler statistics (same data), so one set of peer bodies serves both.
    payloads = {
        "raw": write_payloads(workdir / "payloads" / "raw", batch, outputs=None),
        "scaled": write_payloads(workdir / "payloads" / "scaled", scaled_batch, outputs=None),
        "scaled-mlserver": write_payloads(
            workdir / "payloads" / "scaled-mlserver", scaled_batch, outputs=["predict_proba"]
        ),
    }
    return prepared, payloads


def time_in_process(
    pipeline: Any, estimator: Any, bundle_dir: Path, frame: Any, scaled_batch: np.ndarray
) -> dict[str, float]:
    """Median ms per predict_proba call: the peers' estimator on numpy, modelyard's two runtimes."""
    from modelyard.serving.runtime import open_runtime

    def median_ms(call: Callable[[], Any], budget_s: float = 1.0) -> float:
        call()
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)

    sklearn_runtime, _ = open_runtime(bundle_dir, prefer_onnx=False)
    onnx_runtime, _ = open_runtime(bundle_dir, prefer_onnx=True)
    timings = {}
    for rows in (1, BATCH_ROWS):
        rows_frame = frame.iloc[:rows].reset_index(drop=True)
        rows_scaled = scaled_batch[:rows]
        timings[f"estimator-{rows}"] = median_ms(lambda r=rows_scaled: estimator.predict_proba(r))
        timings[f"sklearn-{rows}"] = median_ms(lambda f=rows_frame: sklearn_runtime.predict_proba(f))
        if onnx_runtime.kind == "onnx":
            timings[f"onnx-{rows}"] = median_ms(lambda f=rows_frame: onnx_runtime.predict_proba(f))
    return timings


def write_payloads(folder: Path, batch: np.ndarray, outputs: list[str] | None) -> Payloads:
    folder.mkdir(parents=True)

    def v2(rows: np.ndarray) -> bytes:
        body: dict[str, Any] = {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(rows.shape),
                    "datatype": "FP64",
                    "data": rows.ravel().tolist(),
                }
            ]
        }
        if outputs:
            body["outputs"] = [{"name": name} for name in outputs]
        return json.dumps(body).encode()

    raw = np.ascontiguousarray(batch, dtype="<f8").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(batch.shape),
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    paths = Payloads(
        folder / "v2_single.json",
        folder / "v2_batch.json",
        folder / "v1_single.json",
        folder / "v2_batch.bin",
        len(header),
    )
    paths.v2_single.write_bytes(v2(batch[:1]))
    paths.v2_batch.write_bytes(v2(batch))
    paths.v1_single.write_bytes(json.dumps({"instances": batch[:1].tolist()}).encode())
    paths.v2_batch_binary.write_bytes(header + raw)
    return paths


# ---------------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    http_port: int
    probe_port: int = 0
    """Where the kubelet's probes go; 0: the HTTP port."""


@dataclass(frozen=True)
class ServerKind:
    key: str
    title: str
    payloads: str  # key into the payload sets
    speaks_v1: bool
    launch: Callable[[PreparedModel, Path, argparse.Namespace], Launch]
    speaks_binary: bool = False  # the binary tensor extension over REST
    models: frozenset[str] | None = None  # None: every model
    workloads: frozenset[str] | None = None  # None: every workload the server speaks


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all probes stay bound until each has its port, or the
    kernel may hand the same one out twice (a server once got one port for both HTTP and gRPC)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def clean_environment() -> dict[str, str]:
    """The parent's environment without modelyard, kserve or MLServer settings that could leak in."""
    prefixes = ("MODELYARD_", "KSERVE_", "MLSERVER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_modelyard(
    model: PreparedModel, session_dir: Path, args: argparse.Namespace, *, monitored: bool = False
) -> Launch:
    """modelyard as the peers run, with neither drift nor the prediction log; ``monitored``: with both."""
    http_port, grpc_port, metrics_port = free_ports(3)
    env = clean_environment()
    if args.source_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.source_dir), env.get("PYTHONPATH")]))
    env["MODELYARD_HOME"] = str(session_dir / "home")
    env["MODELYARD_SERVING__PREDICTION_LOG"] = str(monitored).lower()
    env["MODELYARD_MONITORING__DRIFT"] = str(monitored).lower()
    env.update(item.split("=", 1) for item in args.modelyard_env)
    if monitored:  # the predictor never migrates: `modelyard db upgrade` creates the log's SQLite tables
        subprocess.run([str(VENV_PYTHON), "-m", "modelyard", "db", "upgrade"], env=env, check=True)
    argv = [
        str(VENV_PYTHON), "-m", "modelyard.serving",
        "--model-dir", str(model.bundle_dir), "--model-name", model.case.key,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--host", "127.0.0.1",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    return Launch(argv, env, http_port, metrics_port)


def launch_modelyard_monitored(model: PreparedModel, session_dir: Path, args: argparse.Namespace) -> Launch:
    return launch_modelyard(model, session_dir, args, monitored=True)


def launch_kserve(model: PreparedModel, _: Path, __: argparse.Namespace) -> Launch:
    http_port, grpc_port = free_ports(2)
    env = clean_environment()
    env["KSERVE_LOGLEVEL"] = "WARNING"
    argv = [
        str(VENV_PYTHON), str(HELPERS / "kserve_sklearn.py"),
        "--model_name", model.case.key, "--model_dir", str(model.peer_dir),
        "--http_port", str(http_port), "--grpc_port", str(grpc_port), "--workers", "1",
    ]  # fmt: skip
    return Launch(argv, env, http_port)


def _launch_mlserver(model: PreparedModel, session_dir: Path, batching: tuple[int, float] | None) -> Launch:
    http_port, grpc_port, metrics_port = free_ports(3)
    folder = session_dir / "mlserver"
    folder.mkdir()
    shutil.copy(model.peer_dir / "model.joblib", folder / "model.joblib")
    settings = {
        "debug": False,  # no access log
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
    }
    model_settings: dict[str, Any] = {
        "name": model.case.key,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    if batching is not None:
        model_settings["max_batch_size"], model_settings["max_batch_time"] = batching
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    argv = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)]
    return Launch(argv, clean_environment(), http_port)


def launch_mlserver(model: PreparedModel, session_dir: Path, _: argparse.Namespace) -> Launch:
    return _launch_mlserver(model, session_dir, None)


def launch_mlserver_batching(model: PreparedModel, session_dir: Path, args: argparse.Namespace) -> Launch:
    return _launch_mlserver(
        model, session_dir, (args.mlserver_batch_size, args.mlserver_batch_time_ms / 1000)
    )


def launch_fastapi(model: PreparedModel, _: Path, __: argparse.Namespace) -> Launch:
    (http_port,) = free_ports(1)
    argv = [
        str(VENV_PYTHON), str(HELPERS / "floor.py"),
        "--model-path", str(model.peer_dir / "model.joblib"), "--model-name", model.case.key,
        "--port", str(http_port),
    ]  # fmt: skip
    return Launch(argv, clean_environment(), http_port)


SERVERS = {
    "modelyard": ServerKind("modelyard", "modelyard", "raw", True, launch_modelyard, speaks_binary=True),
    # issue 12's overhead: the same server with drift and the prediction log on, on the two workloads
    "modelyard-monitored": ServerKind(
        "modelyard-monitored",
        "modelyard + drift + log",
        "raw",
        True,
        launch_modelyard_monitored,
        speaks_binary=True,
        models=frozenset({"lr"}),
        workloads=frozenset({"v2-1-c8", "v2-256-c8"}),
    ),
    "kserve": ServerKind("kserve", "KServe sklearn", "scaled", True, launch_kserve, speaks_binary=True),
    "mlserver": ServerKind("mlserver", "MLServer, 0 workers", "scaled-mlserver", False, launch_mlserver),
    "mlserver-batching": ServerKind(
        "mlserver-batching",
        "MLServer + adaptive batching",
        "scaled-mlserver",
        False,
        launch_mlserver_batching,
    ),
    "fastapi": ServerKind("fastapi", "FastAPI floor", "scaled", True, launch_fastapi),
}
# The targets compare modelyard with the best of these; the FastAPI floor is a reference, not a peer.
PEERS = ["kserve", "mlserver", "mlserver-batching"]


def ensure_mlserver_venv() -> None:
    """MLServer in its own venv, with this interpreter's scikit-learn (so the pickles load)."""
    import sklearn

    marker = MLSERVER_VENV / "bench-requirements.txt"
    wanted = "\n".join([*MLSERVER_REQUIREMENTS, f"scikit-learn=={sklearn.__version__}"])
    if marker.exists() and marker.read_text() == wanted and (MLSERVER_VENV / "bin" / "mlserver").exists():
        return
    print(f"creating {MLSERVER_VENV} ({', '.join(wanted.splitlines())})", flush=True)
    python = shutil.which("python3") or sys.executable
    subprocess.run([python, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
    subprocess.run(
        [str(MLSERVER_VENV / "bin" / "pip"), "install", "--quiet", *wanted.splitlines()], check=True
    )
    marker.write_text(wanted)


# ------------------------------------------------------------------------------------------ one process


class Running:
    """A server process started in its own session, so stopping it reaches its children too."""

    def __init__(self, launch: Launch, log_path: Path) -> None:
        self.launch = launch
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            launch.argv, env=launch.env, cwd=log_path.parent, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.launch.http_port}"

    def wait_ready(self, path: str) -> float:
        """Seconds from spawn to the first 200 from ``path``."""
        deadline = self.started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                status, _ = http_request("GET", self.launch.http_port, path, timeout=1.0)
                if status == 200:
                    return time.perf_counter() - self.started
            time.sleep(0.02)
        raise RuntimeError(f"not ready after {START_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def rss_mb(self) -> float:
        import psutil

        root = psutil.Process(self.process.pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total / 2**20

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of the server's process tree so far."""
        server, children = self.cpu_split()
        return server + children

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds so far of the server's own process, and of its children (modelyard's
        prediction-log writer)."""
        import psutil

        root = psutil.Process(self.process.pid)
        split = [0.0, 0.0]
        for index, process in enumerate((root, *root.children(recursive=True))):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                split[min(index, 1)] += times.user + times.system
        return split[0], split[1]

    def log_metrics(self) -> dict[str, float]:
        """The prediction log's queue depth, written and dropped records (summed over reasons), from
        modelyard's metrics port; empty for servers without a prediction log."""
        if not self.launch.probe_port:
            return {}
        status, body = http_request("GET", self.launch.probe_port, "/metrics", timeout=10.0)
        if status != 200:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        found: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                key = LOG_METRICS.get(sample.name)
                if key is not None:
                    found[key] = found.get(key, 0.0) + sample.value
        return found

    def settled_cpu_seconds(self) -> float:
        """CPU seconds so far, once the server is idle: its log's queue (if any) empty and under
        IDLE_CPU_S spent over IDLE_WINDOW_S (the log's writer may still be writing the last batch)."""
        deadline = time.perf_counter() + SETTLE_TIMEOUT_S
        before = self.cpu_seconds()
        while True:
            time.sleep(IDLE_WINDOW_S)
            now = self.cpu_seconds()
            idle = now - before < IDLE_CPU_S and not self.log_metrics().get("queue_depth")
            if idle or time.perf_counter() > deadline:
                return now
            before = now

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"    (no exit {STOP_TIMEOUT_S:.0f} s after SIGTERM: killing pid {self.process.pid})")
        # Whatever is left of the process group this server started (MLServer forks helpers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._log.close()


def http_request(
    method: str, port: int, path: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def probabilities_from(document: dict[str, Any]) -> np.ndarray:
    """The [N, 2] probabilities in any server's V2 answer (modelyard also sends a label output)."""
    for output in document.get("outputs", []):
        if output["name"] in ("probabilities", "predict_proba", "output-0"):
            return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    raise ValueError(f"no probabilities among outputs {[o.get('name') for o in document.get('outputs', [])]}")


# ------------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    protocol: str  # "v2" or "v1"
    rows: int
    connections: int
    probe: bool = False  # probe health during this run


WORKLOADS = [
    Workload("v2-1-c1", "V2, 1 row, c=1", "v2", 1, 1),
    Workload("v2-1-c8", "V2, 1 row, c=8", "v2", 1, 8),
    Workload("v2-1-c64", "V2, 1 row, c=64", "v2", 1, 64, probe=True),
    Workload("v2-256-c8", "V2, 256 rows, c=8", "v2", BATCH_ROWS, 8),
    Workload("v2bin-256-c8", "V2 binary, 256 rows, c=8", "v2bin", BATCH_ROWS, 8),
    Workload("v1-1-c8", "V1, 1 row, c=8", "v1", 1, 8),
]


def body_for(workload: Workload, payloads: Payloads) -> Path:
    if workload.protocol == "v1":
        return payloads.v1_single
    if workload.protocol == "v2bin":
        return payloads.v2_batch_binary
    return payloads.v2_single if workload.rows == 1 else payloads.v2_batch


def path_for(workload: Workload, model: str) -> str:
    return f"/v1/models/{model}:predict" if workload.protocol == "v1" else f"/v2/models/{model}/infer"


def header_length_for(workload: Workload, payloads: Payloads) -> int | None:
    return payloads.binary_header_length if workload.protocol == "v2bin" else None


def run_wrk(
    url: str, body: Path, connections: int, duration_s: int, header_length: int | None = None
) -> dict[str, Any]:
    binary = [] if header_length is None else [str(header_length)]
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "30s", "--latency",
        "-s", str(HELPERS / "post.lua"), url, "--", str(body), *binary,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=duration_s + 60)
    match = re.search(r"^BENCH-JSON (\{.*\})$", done.stdout, flags=re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(match.group(1))
    summary["wrk_output"] = done.stdout.replace(match.group(0), "").strip()
    return summary


def start_probe(port: int, args: argparse.Namespace, *, idle: bool = False) -> subprocess.Popen[str]:
    """The prober process: under load it starts 0.5 s into the wrk run and stops 0.5 s before its end."""
    window = ["--max-probes", "50", "--deadline-s", "2"] if idle else [
        "--max-probes", str(args.probe_count), "--delay-s", "0.5",
        "--deadline-s", f"{max(args.duration - 0.5, 1.0):g}",
    ]  # fmt: skip
    argv = [
        str(VENV_PYTHON), str(HELPERS / "probe.py"), f"http://127.0.0.1:{port}/v2/health/live",
        "--interval-ms", str(args.probe_interval_ms), "--timeout-s", "10", *window,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def probe_summary(prober: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = prober.communicate(timeout=120)
    probes = json.loads(out)
    latencies = probes["latencies_ms"]
    return {
        "probes": len(latencies),
        "failures": probes["failures"],
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
    }


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def run_session(
    server: ServerKind,
    model: PreparedModel,
    payloads: Payloads,
    workdir: Path,
    repeat: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    session_dir = workdir / "sessions" / f"{server.key}-{model.case.key}-{repeat}"
    session_dir.mkdir(parents=True)
    key = model.case.key
    result: dict[str, Any] = {
        "server": server.key, "model": key, "repeat": repeat, "loadavg_before": os.getloadavg()[0],
    }  # fmt: skip
    running = Running(server.launch(model, session_dir, args), session_dir / "server.log")
    try:
        result["cold_start_s"] = running.wait_ready(f"/v2/models/{key}/ready")
        port = running.launch.http_port
        status, answer = http_request("POST", port, f"/v2/models/{key}/infer", payloads.v2_batch.read_bytes())
        if status != 200:
            raise RuntimeError(f"V2 batch answered {status}: {answer[:500]!r}")
        gap = float(np.max(np.abs(probabilities_from(json.loads(answer)) - model.reference)))
        if gap > PARITY_TOLERANCE:
            raise RuntimeError(f"probabilities differ from scikit-learn's by {gap:g}")
        result["parity_max_abs_diff"] = gap
        if server.key.startswith("modelyard"):
            _, metadata = http_request("GET", port, f"/v2/models/{key}")
            result["runtime"] = json.loads(metadata).get("parameters", {}).get("runtime")
        workloads = [
            w
            for w in WORKLOADS
            if w.protocol == "v2"
            or (w.protocol == "v1" and server.speaks_v1)
            or (w.protocol == "v2bin" and server.speaks_binary)
        ]
        workloads = [w for w in workloads if server.workloads is None or w.key in server.workloads]
        warm_ups = {
            (body_for(w, payloads), path_for(w, key), header_length_for(w, payloads)) for w in workloads
        }
        for body, path, header_length in warm_ups:  # warm every path
            run_wrk(running.base + path, body, 8, args.warmup, header_length)
        probe_port = running.launch.probe_port or port
        result["health_idle"] = probe_summary(start_probe(probe_port, args, idle=True))
        result["workloads"] = {}
        for workload in workloads:
            cpu_before = running.settled_cpu_seconds()
            own_before, _ = running.cpu_split()
            prober = start_probe(probe_port, args) if workload.probe else None
            summary = run_wrk(
                running.base + path_for(workload, key), body_for(workload, payloads),
                workload.connections, args.duration, header_length_for(workload, payloads),
            )  # fmt: skip
            errors = sum(summary[name] for name in ("connect_errors", "read_errors", "write_errors"))
            errors += summary["status_errors"] + summary["timeouts"]
            seconds = summary["duration_us"] / 1e6
            cpu_seconds = running.settled_cpu_seconds() - cpu_before
            own_seconds = running.cpu_split()[0] - own_before
            result["workloads"][workload.key] = {
                "requests": summary["requests"],
                "cpu_s": cpu_seconds,
                "cpu_us_req": cpu_seconds / max(summary["requests"], 1) * 1e6,
                "own_cpu_us_req": own_seconds / max(summary["requests"], 1) * 1e6,
                "errors": errors,
                "req_s": summary["requests"] / seconds,
                "rows_s": summary["requests"] * workload.rows / seconds,
                "p50_ms": summary["p50_us"] / 1000,
                "p99_ms": summary["p99_us"] / 1000,
                "wrk": summary["wrk_output"],
            }
            if errors:
                print(f"    ! {workload.key}: {errors} failed requests\n{summary['wrk_output']}")
            if prober is not None:
                result["health"] = probe_summary(prober)
        result["rss_mb"] = running.rss_mb()
        log = running.log_metrics()
        if log.get("written") or log.get("dropped"):  # modelyard's metrics exist with the log off too
            result["prediction_log"] = log
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"    ! {server.key}/{key}: {result['error']}\n{running.tail()}")
    finally:
        running.stop()
    result["loadavg_after"] = os.getloadavg()[0]
    return result


# --------------------------------------------------------------------------------------------- reporting


def median_of(sessions: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for session in sessions:
        value: Any = session
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not np.isnan(value):
            values.append(float(value))
    return statistics.median(values) if values else None


def summarise(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for result in results:
        grouped.setdefault((result["server"], result["model"]), []).append(result)
    summary = {}
    for (server, model), sessions in grouped.items():
        good = [s for s in sessions if "error" not in s]
        entry: dict[str, Any] = {
            "runs": len(good),
            "failed_runs": len(sessions) - len(good),
            "cold_start_s": median_of(good, "cold_start_s"),
            "rss_mb": median_of(good, "rss_mb"),
            "health_p50_ms": median_of(good, "health", "p50_ms"),
            "health_p99_ms": median_of(good, "health", "p99_ms"),
            "health_probes": median_of(good, "health", "probes"),
            "idle_p99_ms": median_of(good, "health_idle", "p99_ms"),
            "health_failures": sum(s.get("health", {}).get("failures", 0) for s in good),
            "errors": sum(w["errors"] for s in good for w in s.get("workloads", {}).values()),
            "log_written": sum(s["prediction_log"].get("written", 0) for s in good if "prediction_log" in s),
            "log_dropped": sum(s["prediction_log"].get("dropped", 0) for s in good if "prediction_log" in s),
            "logged": any("prediction_log" in s for s in good),
            "runtime": next((s["runtime"] for s in good if s.get("runtime")), None),
        }
        for workload in WORKLOADS:
            for metric in ("req_s", "rows_s", "p50_ms", "p99_ms", "cpu_us_req", "own_cpu_us_req"):
                entry[f"{workload.key}:{metric}"] = median_of(good, "workloads", workload.key, metric)
        summary[(server, model)] = entry
    return summary


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def throughput_table(summary: dict[tuple[str, str], dict[str, Any]], models: Sequence[str]) -> str:
    header = ["model", "server", *[w.title for w in WORKLOADS]]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * len(WORKLOADS)) + " |",
    ]
    for model in models:
        for server in SERVERS:
            entry = summary.get((server, model))
            if entry is None:
                continue
            cells = [MODELS[model].title, SERVERS[server].title]
            for workload in WORKLOADS:
                rate_key = "rows_s" if workload.rows > 1 else "req_s"
                rate = entry[f"{workload.key}:{rate_key}"]
                if rate is None:
                    cells.append("—")
                    continue
                unit = "rows/s" if workload.rows > 1 else "req/s"
                p50, p99 = entry[f"{workload.key}:p50_ms"], entry[f"{workload.key}:p99_ms"]
                cpu, own = entry[f"{workload.key}:cpu_us_req"], entry[f"{workload.key}:own_cpu_us_req"]
                latency = f"{fmt_ms(p50)} / {fmt_ms(p99)} ms"
                # a prediction log's writer is a process of its own: its share is shown apart
                split = (
                    f" ({fmt_rate(own)} server)"
                    if own is not None and cpu is not None and cpu - own > 1
                    else ""
                )
                cells.append(f"**{fmt_rate(rate)}** {unit}<br>{latency}<br>CPU {fmt_rate(cpu)} us{split}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def process_table(summary: dict[tuple[str, str], dict[str, Any]], models: Sequence[str]) -> str:
    header = [
        "model", "server", "health p50 / p99 under c=64 (probes)", "idle p99", "RSS after load",
        "cold start", "runs",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model in models:
        for server in SERVERS:
            entry = summary.get((server, model))
            if entry is None:
                continue
            probes = entry["health_probes"]
            failures = f", {entry['health_failures']} failed" if entry["health_failures"] else ""
            health = (
                f"{fmt_ms(entry['health_p50_ms'])} / {fmt_ms(entry['health_p99_ms'])} ms "
                f"({probes:.0f}{failures})"
                if probes
                else "n/a"
            )
            rss = f"{entry['rss_mb']:.0f} MB" if entry["rss_mb"] is not None else "n/a"
            cold = f"{entry['cold_start_s']:.2f} s" if entry["cold_start_s"] is not None else "n/a"
            runs = f"{entry['runs']}" + (f" (+{entry['failed_runs']} failed)" if entry["failed_runs"] else "")
            name = SERVERS[server].title + (f" ({entry['runtime']})" if entry["runtime"] else "")
            idle = f"{fmt_ms(entry['idle_p99_ms'])} ms"
            lines.append(f"| {MODELS[model].title} | {name} | {health} | {idle} | {rss} | {cold} | {runs} |")
    return "\n".join(lines)


def in_process_table(prepared: dict[str, PreparedModel]) -> str:
    lines = [
        "| model | peers' estimator, numpy | modelyard sklearn runtime | modelyard ONNX runtime |",
        "| --- | ---: | ---: | ---: |",
    ]
    for model in prepared.values():
        cells = []
        for kind in ("estimator", "sklearn", "onnx"):
            one, batch = model.in_process.get(f"{kind}-1"), model.in_process.get(f"{kind}-{BATCH_ROWS}")
            cells.append("n/a" if one is None or batch is None else f"{one:.3f} ms / {batch:.2f} ms")
        lines.append(f"| {model.case.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured


def best_peer(
    summary: dict[tuple[str, str], dict[str, Any]], model: str, metric: str
) -> tuple[str, float] | None:
    candidates = [
        (server, summary[(server, model)][metric])
        for server in PEERS
        if (server, model) in summary and summary[(server, model)][metric] is not None
    ]
    return max(candidates, key=lambda item: item[1]) if candidates else None


def evaluate_targets(summary: dict[tuple[str, str], dict[str, Any]], models: Sequence[str]) -> list[Verdict]:
    verdicts: list[Verdict] = []

    def ratio_target(model: str, workload: str, metric: str, factor: float, label: str) -> None:
        ours = summary.get(("modelyard", model), {}).get(f"{workload}:{metric}")
        peer = best_peer(summary, model, f"{workload}:{metric}")
        target = f"{MODELS[model].title}, {label}: >= {factor:g}x the best peer"
        if ours is None or peer is None:
            verdicts.append(Verdict(target, "not measured", None))
            return
        unit = "rows/s" if metric == "rows_s" else "req/s"
        ratio = ours / peer[1]
        peer_title = SERVERS[peer[0]].title
        measured = f"{fmt_rate(ours)} {unit} vs {peer_title} {fmt_rate(peer[1])} {unit}: **{ratio:.2f}x**"
        verdicts.append(Verdict(target, measured, ratio >= factor))

    def binary_target(model: str) -> None:
        """Our binary batches against each peer's best transport (binary where it speaks it, else JSON)."""
        ours = summary.get(("modelyard", model), {}).get("v2bin-256-c8:rows_s")
        peers = [
            (server, transport, summary[(server, model)][f"{workload}:rows_s"])
            for server in PEERS
            if (server, model) in summary
            for workload, transport in (("v2-256-c8", "JSON"), ("v2bin-256-c8", "binary"))
            if summary[(server, model)].get(f"{workload}:rows_s") is not None
        ]
        target = (
            f"{MODELS[model].title}, {BATCH_ROWS}-row batches over binary: "
            ">= 2x the best peer on its best transport"
        )
        if ours is None or not peers:
            verdicts.append(Verdict(target, "not measured", None))
            return
        server, transport, best = max(peers, key=lambda item: item[2])
        ratio = ours / best
        measured = (
            f"{fmt_rate(ours)} rows/s vs {SERVERS[server].title} ({transport}) {fmt_rate(best)} rows/s: "
            f"**{ratio:.2f}x**"
        )
        verdicts.append(Verdict(target, measured, ratio >= 2.0))

    for model, factor in (("rf", 3.0), ("lr", 1.5)):
        if model in models:
            for workload in ("v2-1-c1", "v2-1-c8", "v2-1-c64"):
                concurrency = workload.rsplit("c", 1)[1]
                ratio_target(model, workload, "req_s", factor, f"1 row, c={concurrency}")
    for model in models:
        ratio_target(model, "v2-256-c8", "rows_s", 1.3, f"{BATCH_ROWS}-row batches over JSON, c=8")
        binary_target(model)
    for model in models:
        overhead_workloads = (("v2-1-c8", "req_s", "1 row, c=8"), ("v2-256-c8", "rows_s", "256 rows, c=8"))
        for workload, metric, label in overhead_workloads:
            bare = summary.get(("modelyard", model), {}).get(f"{workload}:{metric}")
            monitored = summary.get(("modelyard-monitored", model), {}).get(f"{workload}:{metric}")
            if bare is None or monitored is None:
                continue  # the monitored server runs where SERVERS says, when --servers includes it
            cost = 1 - monitored / bare
            verdicts.append(
                Verdict(
                    f"{MODELS[model].title}, {label}: drift and the log cost <= 5% of throughput (issue 12)",
                    f"{fmt_rate(monitored)} against {fmt_rate(bare)} with both off: **{cost:+.1%}**",
                    cost <= 0.05,
                )
            )
            bare_cpu = summary[("modelyard", model)].get(f"{workload}:cpu_us_req")
            monitored_cpu = summary[("modelyard-monitored", model)].get(f"{workload}:cpu_us_req")
            if bare_cpu is None or monitored_cpu is None:
                continue
            # The throughput a CPU-bound server loses when each request costs monitored_cpu, not bare_cpu.
            cpu_cost = 1 - bare_cpu / monitored_cpu
            verdicts.append(
                Verdict(
                    f"{MODELS[model].title}, {label}: the same, by CPU per request, log writer included "
                    "(issue 12)",
                    f"{fmt_rate(monitored_cpu)} us against {fmt_rate(bare_cpu)} us with both off: "
                    f"**{cpu_cost:+.1%}** of throughput",
                    cpu_cost <= 0.05,
                )
            )
            own_cpu = summary[("modelyard-monitored", model)].get(f"{workload}:own_cpu_us_req")
            if own_cpu is None:
                continue
            own_cost = 1 - bare_cpu / own_cpu
            verdicts.append(
                Verdict(
                    f"{MODELS[model].title}, {label}: the same, by the server process's own CPU per request "
                    "(issue 12)",
                    f"{fmt_rate(own_cpu)} us against {fmt_rate(bare_cpu)} us with both off: "
                    f"**{own_cost:+.1%}** of throughput",
                    own_cost <= 0.05,
                )
            )
    for model in models:
        entry = summary.get(("modelyard", model), {})
        p99, cold, rss = entry.get("health_p99_ms"), entry.get("cold_start_s"), entry.get("rss_mb")
        title = MODELS[model].title
        verdicts.append(
            Verdict(
                f"{title}: health p99 <= 25 ms on the probe port under saturation (c=64)",
                "not measured" if p99 is None else f"p99 {fmt_ms(p99)} ms",
                None if p99 is None else p99 <= 25,
            )
        )
        verdicts.append(
            Verdict(
                f"{title}: cold start <= 3 s",
                "not measured" if cold is None else f"{cold:.2f} s",
                None if cold is None else cold <= 3,
            )
        )
        verdicts.append(
            Verdict(
                f"{title}: RSS <= 250 MB",
                "not measured" if rss is None else f"{rss:.0f} MB",
                None if rss is None else rss <= 250,
            )
        )
    return verdicts


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    lines = ["| target | measured (modelyard vs best peer) | met |", "| --- | --- | --- |"]
    for verdict in verdicts:
        met = "n/a" if verdict.met is None else ("yes" if verdict.met else "**no**")
        lines.append(f"| {verdict.target} | {verdict.measured} | {met} |")
    return "\n".join(lines)


def machine_description() -> str:
    import sklearn

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, CPython {platform.python_version()}, "
        f"scikit-learn {sklearn.__version__}"
    )


def render_report(
    command: str,
    run_info: dict[str, Any],
    prepared: dict[str, PreparedModel],
    summary: dict[tuple[str, str], dict[str, Any]],
    models: Sequence[str],
) -> str:
    verdicts = evaluate_targets(summary, models)
    loads = run_info["loadavg"]
    parts = [
        f"Run of {run_info['date']} ({run_info['elapsed_min']:.1f} min): {run_info['machine']}. "
        f"Load average (1 min) before the run {loads['start']:.2f}, after it {loads['end']:.2f}; over the "
        f"sessions {loads['min']:.2f} to {loads['max']:.2f} (median {loads['median']:.2f}). wrk "
        f"{run_info['wrk']}, one thread, {run_info['duration']:g} s per run after a {run_info['warmup']:g} s "
        f"warm-up per request kind; {run_info['repeats']} sessions per server and model; medians.",
        "",
        f"modelyard: {run_info['modelyard']}, prediction log off"
        + "".join(f", {item}" for item in run_info["modelyard_env"])
        + ".",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        "Throughput (bold; requests/s, rows/s for the batches), wrk's latency p50 / p99, and the server's "
        "CPU per request (user + system, microseconds; per 256-row request for the batches):",
        "",
        throughput_table(summary, models),
        "",
        "Health, memory, start-up (modelyard's runtime in brackets):",
        "",
        process_table(summary, models),
        "",
        "In-process predict_proba, median per call, 1 row / 256 rows:",
        "",
        in_process_table(prepared),
        "",
        "ONNX: " + "; ".join(f"{m.case.title} {m.onnx}" for m in prepared.values()) + ".",
        "",
        "Targets (issues 9 and 12):",
        "",
        verdict_table(verdicts),
    ]
    logs = [
        f"{SERVERS[server].title} / {MODELS[model].title}: {entry['log_written']:,.0f} records written, "
        f"{entry['log_dropped']:,.0f} dropped"
        for (server, model), entry in summary.items()
        if entry["logged"]
    ]
    if logs:
        parts += ["", "Prediction log, over every session: " + "; ".join(logs) + "."]
    errors = {k: v["errors"] for k, v in summary.items() if v["errors"] or v["failed_runs"]}
    if errors:
        parts += ["", f"Failed requests or sessions: {errors} (see the JSON results)."]
    return "\n".join(parts)


def write_docs(report: str) -> None:
    """Put ``report`` between the result markers of the Model server section (created if missing)."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{RESULTS_BEGIN}\n{report}\n{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        before, rest = text.split(RESULTS_BEGIN, 1)
        _, after = rest.split(RESULTS_END, 1)
        text = before + block + after
    elif DOCS_SECTION in text:
        head, tail = text.split(DOCS_SECTION, 1)
        next_section = tail.find("\n## ")
        end = len(tail) if next_section < 0 else next_section
        text = head + DOCS_SECTION + tail[:end].rstrip() + "\n\n" + block + "\n" + tail[end:]
    else:
        text = text.rstrip() + f"\n\n{DOCS_SECTION}\n\n{block}\n"
    DOCS.write_text(text)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per request kind")
    parser.add_argument("--repeats", type=int, default=3, help="sessions per server and model (default 3)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"subset of {','.join(SERVERS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    parser.add_argument("--probe-count", type=int, default=200, help="most health probes per session")
    parser.add_argument("--probe-interval-ms", type=float, default=20.0, help="pause between probes")
    parser.add_argument("--mlserver-batch-size", type=int, default=64, help="MLServer max_batch_size")
    parser.add_argument("--mlserver-batch-time-ms", type=float, default=2.0, help="MLServer max_batch_time")
    parser.add_argument(
        "--modelyard-rev",
        default="HEAD",
        help="git revision of src/modelyard to serve and build bundles with (default HEAD, so edits in "
        "progress are not measured); 'worktree' uses the files as they are",
    )
    parser.add_argument(
        "--modelyard-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the modelyard server, e.g. MODELYARD_SERVING__MAX_BATCH_WAIT_MS=0 "
        "(repeatable; shown in the report)",
    )
    parser.add_argument("--workdir", type=Path, help="keep bundles, bodies and server logs here")
    parser.add_argument("--json", type=Path, help="write every session's raw results here")
    parser.add_argument("--write-docs", action="store_true", help=f"update '{DOCS_SECTION}' in {DOCS}")
    args = parser.parse_args(argv)
    args.server_keys = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.model_keys = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.server_keys) - set(SERVERS)) + sorted(set(args.model_keys) - set(MODELS))
    if unknown:
        parser.error(f"unknown server(s) or model(s): {', '.join(unknown)}")
    malformed = [item for item in args.modelyard_env if "=" not in item]
    if malformed:
        parser.error(f"--modelyard-env takes NAME=VALUE, got {', '.join(malformed)}")
    if args.repeats < 1 or args.duration < 2 or args.warmup < 1:
        parser.error("--repeats must be >= 1, --duration >= 2 and --warmup >= 1 (wrk counts whole seconds)")
    return args


def modelyard_source(revision: str, workdir: Path) -> tuple[Path | None, str]:
    """Export ``src/modelyard`` at ``revision`` and import it from there, here and in the server.

    Returns the folder to put on PYTHONPATH (None for the working tree) and a description for the report.
    """

    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *command], capture_output=True, text=True, check=True
        ).stdout.strip()

    def last_serving_change(commit: str) -> str:
        return git("log", "-1", "--format=%h %s", commit, "--", "src/modelyard/serving")[:90]

    if revision == "worktree":
        dirty = git("status", "--porcelain", "--", "src/modelyard")
        state = "with uncommitted changes" if dirty else "clean"
        head = git("rev-parse", "--short=12", "HEAD")
        return None, f"working tree at {head} ({state}; serving last changed in {last_serving_change(head)})"
    if "modelyard" in sys.modules:
        raise SystemExit("modelyard was imported before its revision was chosen")
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    target = workdir / "source"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src/modelyard"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    sys.path.insert(0, str(target / "src"))
    return target / "src", f"commit {commit[:12]} (serving last changed in {last_serving_change(commit)})"


@contextlib.contextmanager
def working_folder(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        if requested.exists() and any(requested.iterdir()):
            raise SystemExit(f"--workdir {requested} is not empty")
        requested.mkdir(parents=True, exist_ok=True)
        yield requested
        return
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-serving-") as folder:
        yield Path(folder)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    python = os.path.relpath(sys.executable, ROOT) if VENV_PYTHON.is_relative_to(ROOT) else "python"
    command = " ".join([python, "bench/serving.py", *(sys.argv[1:] if argv is None else argv)])
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")
    if any(key.startswith("mlserver") for key in args.server_keys):
        ensure_mlserver_venv()
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    print(f"machine: {machine_description()}; load average {os.getloadavg()}", flush=True)
    results: list[dict[str, Any]] = []
    with working_folder(args.workdir) as workdir:
        args.source_dir, args.source = modelyard_source(args.modelyard_rev, workdir)
        print(f"modelyard: {args.source}", flush=True)
        print("fitting models and writing bundles", flush=True)
        prepared, payload_sets = prepare_models(args.model_keys, workdir)
        sessions = [
            (repeat, model, server)
            for repeat in range(args.repeats)
            for model in args.model_keys
            for server in args.server_keys
            if SERVERS[server].models is None or model in SERVERS[server].models
        ]
        for index, (repeat, model, server) in enumerate(sessions, 1):
            kind = SERVERS[server]
            print(
                f"[{index}/{len(sessions)}] {kind.title} / {MODELS[model].title}, run {repeat + 1}",
                flush=True,
            )
            result = run_session(kind, prepared[model], payload_sets[kind.payloads], workdir, repeat, args)
            results.append(result)
            if "error" not in result:
                brief = ", ".join(
                    f"{key} {w['req_s']:.0f}/s {w['cpu_us_req']:.0f} us"
                    for key, w in result["workloads"].items()
                )
                print(
                    f"    cold {result['cold_start_s']:.2f} s, rss {result['rss_mb']:.0f} MB, health p99 "
                    f"{result.get('health', {}).get('p99_ms', float('nan')):.1f} ms; {brief}; "
                    f"load {result['loadavg_before']:.1f}->{result['loadavg_after']:.1f}",
                    flush=True,
                )
    session_loads = [r["loadavg_before"] for r in results] + [r["loadavg_after"] for r in results]
    run_info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_min": (time.perf_counter() - started) / 60,
        "machine": machine_description(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        .stdout.split("[")[0]
        .strip()
        .removeprefix("wrk ")
        or "?",
        "duration": args.duration,
        "modelyard": args.source,
        "modelyard_env": args.modelyard_env,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "loadavg": {
            "start": load_start,
            "end": os.getloadavg()[0],
            "min": min(session_loads),
            "max": max(session_loads),
            "median": statistics.median(session_loads),
        },
    }
    summary = summarise(results)
    report = render_report(command, run_info, prepared, summary, args.model_keys)
    print("\n" + report)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"command": command, "run": run_info, "sessions": results,
                 "in_process_ms": {k: m.in_process for k, m in prepared.items()}},
                indent=2,
            )
        )  # fmt: skip
    if args.write_docs:
        write_docs(report)
        print(f"\nwrote the results into '{DOCS_SECTION}' of {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
