"""`python -m modelyard.serving`: flags, MODELYARD_SERVING__* variables, and which one wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.cpus import available_cpus
from modelyard.errors import ModelyardError
from modelyard.serving.__main__ import build_parser, main, settings_from

from .conftest import ServerProcess


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("MODELYARD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))


def test_defaults_follow_the_serving_runtime_contract(tmp_path: Path) -> None:
    settings = settings_from([])
    options = settings.serving
    assert options.model_dir == Path("/mnt/models")
    assert (options.host, options.http_port, options.grpc_port) == ("0.0.0.0", 8080, 8081)
    assert options.metrics_port == 8082
    assert options.max_batch_size == 1024 and options.max_batch_wait_ms == 2.0
    assert options.onnx_threads == 0  # automatic: see onnx_threads_for
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / 'modelyard.db'}"
    assert options.spool_dir == tmp_path / "home" / "spool"


def test_every_serving_setting_is_a_flag_with_its_description_as_help() -> None:
    from modelyard.settings import ServingSettings

    help_text = " ".join(build_parser().format_help().split())
    for name, field in ServingSettings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in help_text
        assert " ".join((field.description or "").split())[:40] in help_text


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_SERVING__MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("MODELYARD_SERVING__HTTP_PORT", "9000")
    monkeypatch.setenv("MODELYARD_SERVING__MODEL_VERSION", "4")
    monkeypatch.setenv("MODELYARD_SERVING__HOST", "10.0.0.1")
    options = settings_from(["--max-batch-size", "16", "--host", "127.0.0.1"]).serving
    assert options.max_batch_size == 16 and options.host == "127.0.0.1"
    assert options.http_port == 9000 and options.model_version == "4"  # from the environment


def test_kserve_spellings_are_accepted() -> None:
    options = settings_from(
        ["--model_dir", "/models/iris", "--model_name", "iris", "--http_port", "8085", "--metrics_port", "0"]
    ).serving
    assert (
        options.model_dir == Path("/models/iris")
        and options.model_name == "iris"
        and options.http_port == 8085
        and options.metrics_port == 0
    )
    assert settings_from(["--no-prediction-log", "--no-prefer-onnx"]).serving.prediction_log is False


@pytest.mark.parametrize(
    ("argv", "variables", "message"),
    [
        (["--http-port", "70000"], {}, "--http-port: Input should be less than or equal to 65535"),
        (["--max-batch-size", "0"], {}, "--max-batch-size: Input should be greater than or equal to 1"),
        (["--onnx-threads", "-1"], {}, "--onnx-threads: Input should be greater than or equal to 0"),
        (["--metrics-port", "65536"], {}, "--metrics-port: Input should be less than or equal to 65535"),
        ([], {"MODELYARD_SERVING__MAX_BATCH_WAIT_MS": "-1"}, "MODELYARD_SERVING__MAX_BATCH_WAIT_MS"),
        (
            [],
            {"MODELYARD_SERVING__ACCESS_LOG": "maybe"},
            "MODELYARD_SERVING__ACCESS_LOG: Input should be a valid boolean",
        ),
        (
            [],
            {"MODELYARD_SERVING__EVENT_LOOP": "trio"},
            "MODELYARD_SERVING__EVENT_LOOP: Input should be 'auto', 'asyncio' or 'uvloop'",
        ),
    ],
)
def test_bad_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], variables: dict[str, str], message: str
) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ModelyardError, match=message):
        settings_from(argv)


def test_main_reports_a_bad_flag_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--grpc-port", "-1"]) == 2
    assert "error: invalid configuration: --grpc-port" in capsys.readouterr().err


def test_the_server_process_does_not_load_pyarrow(numeric_server: ServerProcess) -> None:
    # pandas would import it (35 MB) if it could; the server refuses the import to stay within budget.
    maps = Path(f"/proc/{numeric_server.process.pid}/maps").read_text()
    assert "pyarrow" not in maps and "sklearn" in maps


def test_server_logging_follows_stderr_when_a_caller_swaps_it(capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import logging
    import sys

    from modelyard.serving.server import _StderrHandler

    logger = logging.getLogger("modelyard.test-stderr")
    handler = _StderrHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        swapped, original = io.StringIO(), sys.stderr
        sys.stderr = swapped
        logger.warning("while swapped")
        sys.stderr = original
        swapped.close()  # as a CLI runner closes its captured stream
        logger.warning("after the swap")
    finally:
        logger.removeHandler(handler)
    captured = capsys.readouterr().err
    assert "after the swap" in captured and "Logging error" not in captured


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", "affinity"),
        ("150000 100000\n", 2),  # a pod limit of 1.5 CPUs: two threads
        ("50000 100000\n", 1),
        ("not a quota\n", "affinity"),
        (None, "affinity"),  # no cgroup v2 CPU controller
    ],
)
def test_available_cpus_follow_the_affinity_and_a_cgroup_cpu_limit(
    tmp_path: Path, cpu_max: str | None, expected: int | str
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(path) == (affinity if expected == "affinity" else min(affinity, int(expected)))


@pytest.mark.parametrize(("value", "expected"), [("debug", "DEBUG"), ("WARNING", "WARNING")])
def test_the_log_level_is_a_setting_in_any_case(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", value)
    assert settings_from([]).log_level == expected


def test_a_bad_log_level_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", "loud")
    with pytest.raises(ModelyardError, match="MODELYARD_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"):
        settings_from([])
