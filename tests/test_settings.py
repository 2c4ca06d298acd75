from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelyard.cpus import available_cpus
from modelyard.errors import ModelyardError
from modelyard.pipeline.local import LOCAL_LOOP_PARALLELISM, task_environment
from modelyard.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HOME", "DATABASE_URL", "STORE_URI"):
        monkeypatch.delenv(f"MODELYARD_{key}", raising=False)
    for key in ("ENDPOINT_URL", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "REGION"):
        monkeypatch.delenv(f"AWS_{key}", raising=False)


def test_embedded_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.home == tmp_path / ".modelyard"
    assert settings.database_url == f"sqlite:///{tmp_path / '.modelyard' / 'modelyard.db'}"
    assert settings.store_uri == f"file://{tmp_path / '.modelyard' / 'store'}"


def test_environment_switches_to_postgres_and_s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path))
    monkeypatch.setenv("MODELYARD_DATABASE_URL", "postgresql://u:p@db:5432/modelyard")
    monkeypatch.setenv("MODELYARD_STORE_URI", "s3://models/prod/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = load_settings()
    assert settings.home == tmp_path
    assert settings.database_url == "postgresql://u:p@db:5432/modelyard"
    assert settings.store_uri == "s3://models/prod"
    assert settings.s3.endpoint_url == "http://minio:9000"
    assert settings.s3.access_key_id == "key"
    assert settings.s3.secret_access_key == "s3cr3t-value"
    assert settings.s3.region == "eu-west-1"
    assert "s3cr3t-value" not in repr(settings)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "ftp://host/models",
            "MODELYARD_STORE_URI: .*must start with file:// or s3://, got 'ftp://host/models'",
        ),
        ("s3:///models", "MODELYARD_STORE_URI: .*an s3:// URI needs a bucket"),
    ],
)
def test_bad_store_uri_names_the_variable(monkeypatch: pytest.MonkeyPatch, uri: str, message: str) -> None:
    monkeypatch.setenv("MODELYARD_STORE_URI", uri)
    with pytest.raises(ModelyardError, match=message):
        load_settings()


def test_tune_jobs_below_minus_one_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_PIPELINE__TUNE_JOBS", "-2")
    with pytest.raises(ModelyardError, match=r"MODELYARD_PIPELINE__TUNE_JOBS.*greater than or equal to -1"):
        load_settings()


@pytest.mark.parametrize(("configured", "exported"), [("0", None), ("3", "3"), ("-1", "-1")])
def test_a_local_run_shares_the_cores_between_the_tune_tasks_kfp_local_runs_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, configured: str, exported: str | None
) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path))
    monkeypatch.setenv("MODELYARD_PIPELINE__TUNE_JOBS", configured)
    environment = task_environment(load_settings())
    expected = exported or str(max(1, available_cpus() // LOCAL_LOOP_PARALLELISM))
    assert environment["MODELYARD_PIPELINE__TUNE_JOBS"] == expected
    monkeypatch.setenv("MODELYARD_PIPELINE__TUNE_JOBS", environment["MODELYARD_PIPELINE__TUNE_JOBS"])
    assert load_settings().pipeline.tune_jobs == int(expected)


@pytest.mark.parametrize(("configured", "n_jobs"), [("0", -1), ("1", 1), ("3", 3), ("-1", -1)])
def test_a_tune_uses_the_configured_cv_processes_and_every_core_when_left_to_the_run(
    monkeypatch: pytest.MonkeyPatch, configured: str, n_jobs: int
) -> None:
    """What the tune step and the in-process run give scikit-learn's n_jobs."""
    monkeypatch.setenv("MODELYARD_PIPELINE__TUNE_JOBS", configured)
    assert load_settings().pipeline.tune_n_jobs == n_jobs


def test_group_flags_follow_the_settings_fields() -> None:
    import argparse

    from modelyard.settings import ServingSettings, add_group_flags, with_group_flags

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_group_flags(parser, ServingSettings)
    help_text = parser.format_help()
    for name, field in ServingSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
        assert (field.description or "").split()[0] in help_text
    flags = ["--max-batch-size", "16", "--model_name", "iris", "--no-prediction-log"]
    flags += ["--event-loop", "asyncio"]
    settings = with_group_flags(load_settings(), "serving", parser.parse_args(flags))
    assert settings.serving.max_batch_size == 16
    assert settings.serving.model_name == "iris"
    assert settings.serving.prediction_log is False
    assert settings.serving.event_loop == "asyncio"


def test_group_flags_name_a_bad_value() -> None:
    import argparse

    from modelyard.settings import ServingSettings, add_group_flags, with_group_flags

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_group_flags(parser, ServingSettings)
    with pytest.raises(ModelyardError, match="--max-batch-size: Input should be greater than or equal to 1"):
        with_group_flags(load_settings(), "serving", parser.parse_args(["--max-batch-size", "0"]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rollout-mode", "canary"], "invalid configuration: Value error, a canary needs a candidate"),
        (["--canary-percent", "5"], "a canary needs a candidate: set MODELYARD_SERVING__CANDIDATE_URI"),
        (["--candidate-version", "4"], "candidate_version is set but candidate_uri is empty"),
        (
            ["--candidate-uri", "/b", "--canary-percent", "-1"],
            "--canary-percent: Input should be greater than",
        ),
        (["--candidate-uri", "/b", "--model-version", "3", "--candidate-version", "3"], "version '3' is the"),
    ],
)
def test_rollout_flags_that_make_no_sense_are_named(flags: list[str], message: str) -> None:
    import argparse

    from modelyard.settings import ServingSettings, add_group_flags, with_group_flags

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_group_flags(parser, ServingSettings)
    with pytest.raises(ModelyardError, match=re.escape(message)):
        with_group_flags(load_settings(), "serving", parser.parse_args(flags))


def test_a_canary_of_a_candidate_is_a_valid_rollout() -> None:
    from modelyard.settings import ServingSettings

    serving = ServingSettings(candidate_uri="s3://models/iris/4", rollout_mode="canary", canary_percent=12.5)
    assert (serving.rollout_mode, serving.canary_percent) == ("canary", 12.5)
    assert ServingSettings().candidate_uri == ""  # no candidate unless one is named


def test_an_unknown_variable_names_the_closest_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_SERVING__MAX_BATCH", "16")
    with pytest.raises(ModelyardError) as caught:
        load_settings()
    assert caught.value.message == (
        "unknown setting MODELYARD_SERVING__MAX_BATCH: did you mean MODELYARD_SERVING__MAX_BATCH_SIZE?"
    )


def test_every_unknown_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_DATABASE", "sqlite://")
    monkeypatch.setenv("MODELYARD_HTTP_PORT", "8080")  # a port, but not a Kubernetes service link
    monkeypatch.setenv("modelyard_xyzzy", "1")
    with pytest.raises(ModelyardError) as caught:
        load_settings()
    assert caught.value.message == (
        "unknown setting MODELYARD_DATABASE: did you mean MODELYARD_DATABASE_URL?; "
        "unknown setting MODELYARD_HTTP_PORT: did you mean MODELYARD_SERVING__HTTP_PORT?; "
        "unknown setting modelyard_xyzzy (the settings are in the README's Configuration table)"
    )


def test_kubernetes_service_links_and_test_switches_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    links = {
        "MODELYARD_SERVICE_HOST": "10.0.0.1",
        "MODELYARD_SERVICE_PORT": "80",
        "MODELYARD_SERVICE_PORT_HTTP": "80",
        "MODELYARD_PORT": "tcp://10.0.0.1:80",
        "MODELYARD_PORT_80_TCP": "tcp://10.0.0.1:80",
        "MODELYARD_PORT_80_TCP_PROTO": "tcp",
        "MODELYARD_PORT_80_TCP_PORT": "80",
        "MODELYARD_PORT_80_TCP_ADDR": "10.0.0.1",
        "MODELYARD_IRIS_PREDICTOR_SERVICE_HOST": "10.0.0.2",
        "MODELYARD_IRIS_PREDICTOR_PORT": "tcp://10.0.0.2:8080",
        "TEST_KFP": "1",
    }
    for name, value in links.items():
        monkeypatch.setenv(name, value)
    assert load_settings().serving.http_port == 8080


def test_the_log_level_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", "DEBUG")
    assert load_settings().log_level == "DEBUG"
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", "LOUD")
    with pytest.raises(ModelyardError, match="MODELYARD_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"):
        load_settings()


def test_to_environment_rebuilds_the_same_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from modelyard.settings import to_environment

    original = load_settings(
        home=tmp_path,
        log_level="WARNING",
        serving={"max_batch_size": 7, "prediction_log": False, "spool_dir": tmp_path / "spool"},
        s3={"endpoint_url": "http://127.0.0.1:9000", "secret_access_key": "s3cr3t"},
    )
    for name, value in to_environment(original).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == original


def test_group_flags_can_leave_fields_out() -> None:
    import argparse

    from modelyard.settings import ServingSettings, add_group_flags

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_group_flags(parser, ServingSettings, exclude={"model_dir", "model_name"})
    help_text = parser.format_help()
    assert "--model-dir" not in help_text and "--model-name" not in help_text
    assert "--model-version" in help_text
