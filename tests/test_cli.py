"""The CLI end to end, on both backend pairs (SQLite + file store, Postgres + S3)."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.cli.serve import cached_bundle, parse_serve_arguments, serving_version, with_serving_flags
from modelyard.cli.up import (
    curl_commands,
    example_requests,
    parse_up_arguments,
    production_version,
    smoke_test,
)
from modelyard.errors import ModelyardError
from modelyard.registry import ModelRef, Registry
from modelyard.settings import ServingSettings, Settings, load_settings
from modelyard.storage import open_store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IRIS_CSV = EXAMPLES / "data" / "iris.csv"
FAST = [
    "--in-process",
    "--set",
    "search.trials=2",
    "--set",
    "cv_folds=3",
    "--set",
    "algorithms=[logistic_regression, knn]",
]

FAST_SPEC = ["search.trials=2", "cv_folds=3", "algorithms=[logistic_regression]", "gate.min_score=0.5"]

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_data_load_then_reload_reuses_the_version(settings: Settings) -> None:
    code, out, _ = invoke("data", "load", str(IRIS_CSV), "--name", "iris", "--json")
    assert code == 0
    first = json.loads(out)
    assert first["version"] == 1 and first["row_count"] == 150 and first["created"] is True
    code, out, _ = invoke("data", "load", str(IRIS_CSV), "--name", "iris", "--json")
    assert json.loads(out)["version"] == 1 and json.loads(out)["created"] is False
    code, out, _ = invoke("data", "list", "--json")
    listed = json.loads(out)
    assert [(d["name"], d["version"]) for d in listed] == [("iris", 1)]


def test_data_load_of_a_missing_file_is_one_clear_line(settings: Settings) -> None:
    code, _, err = invoke("data", "load", "/nonexistent/x.csv", "--name", "x")
    assert code == 1
    assert "error:" in err and "/nonexistent/x.csv" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_train_publish_promote_rollback(settings: Settings) -> None:
    spec = str(EXAMPLES / "iris.yaml")
    code, out, err = invoke("train", "--spec", spec, *FAST)
    assert code == 0, err
    assert "published iris@1 (staging)" in out
    code, _, err = invoke("train", "--spec", spec, *FAST, "--set", "gate.compare_to_production=false")
    assert code == 0, err

    code, out, _ = invoke("models", "list", "--json")
    versions = json.loads(out)
    assert [v["version"] for v in versions] == [2, 1]
    for v in versions:
        assert {"name", "version", "stage", "storage_uri", "metrics"} <= v.keys()
        assert v["name"] == "iris" and v["stage"] == "staging"
        assert {"f1_macro", "accuracy", "roc_auc"} <= v["metrics"].keys()
        assert v["storage_uri"] == f"{settings.store_uri}/iris/{v['version']}"
        assert open_store(settings.store_uri, settings.s3).exists(f"iris/{v['version']}/model.joblib")

    assert invoke("models", "promote", "iris@1")[0] == 0
    code, _, err = invoke("models", "promote", "iris")
    assert code != 0 and "promote needs a version: iris@VERSION or iris@staging, not iris" in err
    assert invoke("models", "promote", "iris@2")[0] == 0
    code, out, _ = invoke("models", "show", "iris@production", "--json")
    assert json.loads(out)["version"] == 2
    code, _, err = invoke("models", "rollback", "iris")
    assert code == 0 and "iris@1 is in production again" in err
    code, out, _ = invoke("models", "show", "iris@production", "--json")
    assert json.loads(out)["version"] == 1
    code, out, _ = invoke("models", "show", "iris@2", "--json")
    assert json.loads(out)["stage"] == "archived"


def test_bad_spec_fails_naming_the_field(settings: Settings, tmp_path: Path) -> None:
    code, _, err = invoke("train", "--spec", str(EXAMPLES / "iris.yaml"), "--set", "metric=precision_at_k")
    assert code == 1
    assert "metric: Input should be" in err


def test_invalid_data_publishes_nothing_and_lists_every_problem(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    rows = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    rows += [f"{i % 7}.1,abc,1.{i},0.2,setosa" for i in range(30)]
    bad.write_text("\n".join(rows) + "\n")
    code, _, err = invoke("train", "--spec", str(EXAMPLES / "iris.yaml"), "--set", f"data.path={bad}")
    assert code == 1
    assert "sepal_width" in err and "not numbers" in err
    assert "only one class" in err
    with Registry(settings.database_url) as registry:
        assert registry.list_versions() == []


def test_gate_rejection_exits_non_zero_and_publishes_nothing(settings: Settings) -> None:
    code, _, err = invoke(
        "train", "--spec", str(EXAMPLES / "iris.yaml"), *FAST, "--set", "gate.min_score=1.01"
    )
    assert code == 1
    assert "gate rejected:" in err and "below the minimum 1.0100" in err
    with Registry(settings.database_url) as registry:
        assert registry.list_versions() == []


def test_unknown_model_and_bad_reference(settings: Settings) -> None:
    code, _, err = invoke("models", "show", "nosuch")
    assert code == 1 and "model 'nosuch' not found" in err
    code, _, err = invoke("models", "show", "iris@latest-ish")
    assert code == 2 and "invalid model reference 'iris@latest-ish'" in err
    code, _, err = invoke("serve", "--model", "iris@")
    assert code == 2 and "invalid model reference 'iris@': nothing after '@'" in err


def test_db_upgrade_reports_the_revision(settings: Settings) -> None:
    code, _, err = invoke("db", "upgrade")
    assert code == 0 and "registry schema at revision" in err


def test_an_unknown_setting_stops_every_command_in_one_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_SERVING__MAX_BATCH", "8")
    code, _, err = invoke("models", "list")
    assert code == 1
    assert " ".join(err.split()) == (  # rich wraps lines at the console's width
        "error: unknown setting MODELYARD_SERVING__MAX_BATCH: did you mean MODELYARD_SERVING__MAX_BATCH_SIZE?"
    )


def test_the_log_level_setting_reaches_the_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", "DEBUG")
    assert invoke("db", "upgrade")[0] == 0
    assert logging.getLogger("modelyard").level == logging.DEBUG
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", "WARNING")
    code, _, err = invoke("db", "upgrade")
    assert code == 0 and "registry schema upgraded" not in err
    assert logging.getLogger("modelyard").level == logging.WARNING


# ---------------------------------------------------------------- serve and up: flags and steps


def test_serve_flags_are_the_serving_settings(settings: Settings, tmp_path: Path) -> None:
    flags = parse_serve_arguments(["--model", "iris@2", "--http-port", "9001", "--max_batch_size", "16"])
    assert flags.model == ModelRef("iris", version=2)
    record = ModelVersionRecordStub("iris", 2)
    served = serving_version(with_serving_flags(settings, flags), record, tmp_path / "bundle").serving
    assert (served.http_port, served.max_batch_size, served.grpc_port) == (9001, 16, 8081)
    assert (served.model_dir, served.model_name, served.model_version) == (tmp_path / "bundle", "iris", "2")
    assert served.host == "127.0.0.1"  # a laptop's command: only this machine, unless asked


def test_serve_listens_where_the_flag_or_the_environment_says(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    flags = parse_serve_arguments(["-m", "iris", "--host", "0.0.0.0"])
    assert with_serving_flags(settings, flags).serving.host == "0.0.0.0"
    monkeypatch.setenv("MODELYARD_SERVING__HOST", "::")
    flags = parse_serve_arguments(["-m", "iris"])
    assert with_serving_flags(load_settings(), flags).serving.host == "::"


def test_serve_help_lists_every_serving_flag_but_those_the_version_sets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_serve_arguments(["--help"])
    assert exited.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for name, field in ServingSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in ("model_dir", "model_name", "model_version"):
            assert flag not in help_text
        else:
            assert flag in help_text and " ".join((field.description or "").split()) in help_text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "iris", "--max-batch-size", "0"], "--max-batch-size: Input should be greater than"),
        (
            ["--model", "iris", "--http-port", "70000"],
            "--http-port: Input should be less than or equal to 65535",
        ),
    ],
)
def test_serve_names_a_bad_flag_value(settings: Settings, argv: list[str], message: str) -> None:
    code, _, err = invoke("serve", *argv)
    assert code == 1 and message in " ".join(err.split())  # rich wraps lines at the console's width


def test_serve_refuses_flags_it_sets_from_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_serve_arguments(["--model", "iris", "--model-dir", "/tmp"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --model-dir /tmp" in capsys.readouterr().err


def test_example_requests_and_curl_commands(settings: Settings) -> None:
    from modelyard.bundle import load_bundle

    record = production_version(settings, EXAMPLES / "iris.yaml", FAST_SPEC)
    assert (record.version, record.stage.value) == (1, "production")
    assert production_version(settings, EXAMPLES / "iris.yaml", FAST_SPEC).version == 1  # nothing retrained
    metadata = load_bundle(cached_bundle(settings, record)).metadata
    v1, v2 = example_requests(metadata)
    assert v1 == {"instances": [[5.8, 3.0, 4.35, 1.3]]}  # the medians of iris' columns
    assert v2 == {
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": v1["instances"]}]
    }
    commands = curl_commands("http://127.0.0.1:9001", "iris", v1, v2)
    assert commands[0] == "curl -s http://127.0.0.1:9001/v2/health/ready"
    assert commands[2] == (
        "curl -s -X POST http://127.0.0.1:9001/v1/models/iris:predict -d "
        "'{\"instances\": [[5.8, 3.0, 4.35, 1.3]]}'"
    )


@pytest.mark.slow
def test_the_smoke_step_answers_v1_and_v2(settings: Settings) -> None:
    from modelyard.bundle import load_bundle

    record = production_version(settings, EXAMPLES / "iris.yaml", FAST_SPEC)
    bundle = cached_bundle(settings, record)
    http_port, grpc_port = _free_ports(2)
    flags = parse_up_arguments(["--http-port", str(http_port), "--grpc-port", str(grpc_port)])
    served = serving_version(with_serving_flags(settings, flags), record, bundle)
    v1, v2 = example_requests(load_bundle(bundle).metadata)
    answers = smoke_test(served, v1, v2)
    assert [(answer.protocol, answer.status) for answer in answers] == [("V1", 200), ("V2", 200)]
    assert answers[0].body["predictions"][0] in ("setosa", "versicolor", "virginica")
    assert answers[1].body["model_name"] == "iris" and answers[1].body["model_version"] == "1"


def test_the_smoke_step_says_why_the_server_did_not_start(settings: Settings, tmp_path: Path) -> None:
    (http_port,) = _free_ports(1)
    served = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(
                update={"model_dir": tmp_path / "nothing", "model_name": "iris", "http_port": http_port}
            )
        }
    )
    said = (
        rf"the server at http://127\.0\.0\.1:{http_port} was not ready within 5 s; the server's log ends with"
    )
    with pytest.raises(ModelyardError, match=said):
        smoke_test(served, {}, {}, ready_timeout_s=5)  # a bundle that is not there: never ready


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass(frozen=True)
class ModelVersionRecordStub:
    """What settings_for_version reads of a registry version."""

    name: str
    version: int
