from __future__ import annotations

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
