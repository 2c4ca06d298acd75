"""The CLI end to end, on both backend pairs (SQLite + file store, Postgres + S3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.registry import Registry
from modelyard.settings import Settings
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

    assert invoke("models", "promote", "iris", "1")[0] == 0
    assert invoke("models", "promote", "iris", "2")[0] == 0
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
    assert code == 2 and "expected NAME, NAME@VERSION or NAME@STAGE" in err


def test_db_upgrade_reports_the_revision(settings: Settings) -> None:
    code, _, err = invoke("db", "upgrade")
    assert code == 0 and "registry schema at revision" in err
