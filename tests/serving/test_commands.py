"""`modelyard serve` (a registry version, fetched from the object store) and `modelyard up` (the demo)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelyard.registry import Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import load_spec
from modelyard.workflow import run_training

from .conftest import ServerProcess, free_ports, http_status, post_json, send

IRIS = Path(__file__).resolve().parents[2] / "examples" / "iris.yaml"
FAST = ["search.trials=2", "cv_folds=3", "algorithms=[logistic_regression]", "gate.min_score=0.5"]
ROW = [5.1, 3.5, 1.4, 0.2]


def modelyard(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelyard", *args]


def start_command(args: list[str], log_path: Path, http_port: int) -> ServerProcess:
    (metrics_port,) = free_ports(1)
    env = {**os.environ, "MODELYARD_SERVING__METRICS_PORT": str(metrics_port)}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, http_port, 0, metrics_port, log_path, log_path.parent)
    deadline = time.monotonic() + 90
    while http_status(f"{server.url}/v2/health/ready", timeout=1.0) != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"`modelyard serve` did not become ready:\n{server.log()}")
        time.sleep(0.2)
    return server


@pytest.mark.slow
def test_serve_resolves_the_production_version_and_fetches_it(settings: Settings, tmp_path: Path) -> None:
    production = run_training(settings, load_spec(IRIS, FAST), stage=Stage.PRODUCTION).published
    newer = run_training(settings, load_spec(IRIS, FAST)).published  # staging: must not be served
    assert production is not None and newer is not None and newer.version == production.version + 1

    (port,) = free_ports(1)
    args = modelyard("serve", "--model", "iris@production", "--http-port", str(port), "--grpc-port", "0")
    server = start_command(args, tmp_path / "serve.log", port)
    try:
        metadata = send("GET", f"{server.url}/v2/models/iris").json()
        assert metadata["versions"] == [str(production.version)]
        answer = post_json(f"{server.url}/v1/models/iris:predict", {"instances": [ROW]})
        assert answer.status == 200 and answer.json()["predictions"][0] in (
            "setosa",
            "versicolor",
            "virginica",
        )
    finally:
        assert server.stop() == 0
    if settings.store_uri.startswith("s3://"):  # downloaded, verified, kept in the cache
        cached = settings.home / "cache" / "iris" / str(production.version)
        assert (cached / "metadata.json").is_file() and (cached / "model.joblib").is_file()
    assert f"serving iris@{production.version} (production)" in server.log()


def test_serve_names_an_unknown_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env["MODELYARD_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        modelyard("serve", "--model", "nope@production"),
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "model 'nope' not found" in result.stderr.decode()


@pytest.mark.slow
def test_up_trains_promotes_and_answers_v1_and_v2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELYARD_", "AWS_"))}
    env["MODELYARD_HOME"] = str(tmp_path / "home")
    env["MODELYARD_PIPELINE__TUNE_JOBS"] = "1"  # one CV process: no worker processes to start
    overrides = [arg for override in FAST for arg in ("--set", override)]
    port, grpc_port, metrics_port = (str(free) for free in free_ports(3))
    env["MODELYARD_SERVING__METRICS_PORT"] = metrics_port
    first = subprocess.run(
        modelyard("up", *overrides, "--http-port", port, "--grpc-port", grpc_port, "--smoke"),
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    output = first.stdout.decode()
    assert first.returncode == 0, first.stderr.decode() + output
    assert "no version of iris yet: training" in first.stderr.decode()
    assert "promoted iris@1 to production" in first.stderr.decode()
    assert f"curl -s -X POST http://127.0.0.1:{port}/v1/models/iris:predict -d " in output
    assert f"curl -s -X POST http://127.0.0.1:{port}/v2/models/iris/infer -d " in output
    assert 'V1 200: {"predictions": [' in output
    assert 'V2 200: {"model_name": "iris", "model_version": "1"' in output

    again = subprocess.run(
        modelyard("up", "--http-port", port, "--no-serve"),
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr.decode()
    assert "training" not in again.stderr.decode()  # a production version exists: nothing to train
    assert "iris@1 (production) is ready to serve" in again.stdout.decode()
    assert "the console: http://127.0.0.1:8088/ (start it with `modelyard console`)" in again.stdout.decode()
    with Registry(f"sqlite:///{tmp_path / 'home' / 'modelyard.db'}") as registry:
        assert [v.version for v in registry.list_versions("iris")] == [1]
