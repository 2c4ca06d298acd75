"""`modelyard pipeline ...`: what can be checked without a cluster (the rest is in test_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.settings import Settings
from modelyard.spec import load_spec
from modelyard.workflow import run_training

IRIS = str(Path(__file__).resolve().parents[2] / "examples" / "iris.yaml")
runner = CliRunner()


def test_compile_writes_loadable_packages(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline", "compile", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "training.yaml").read_text().startswith("# PIPELINE DEFINITION")
    assert "wrote" in result.stderr


@pytest.mark.parametrize("command", [["run"], ["schedule", "--cron", "0 3 * * *"]])
def test_no_host_is_one_clear_line(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_PIPELINE__HOST", raising=False)
    result = runner.invoke(app, ["pipeline", *command, "--spec", IRIS])
    assert result.exit_code == 1
    assert "no KFP host: pass --host or set MODELYARD_PIPELINE__HOST" in result.stderr


def test_upload_without_host_fails_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_PIPELINE__HOST", raising=False)
    result = runner.invoke(app, ["pipeline", "upload"])
    assert result.exit_code == 1 and "no KFP host" in result.stderr


def test_bad_cron_fails_before_contacting_anything() -> None:
    result = runner.invoke(
        app, ["pipeline", "schedule", "--spec", IRIS, "--cron", "daily", "--host", "http://x"]
    )
    assert result.exit_code == 1
    assert "--cron 'daily': expected 5 fields" in result.stderr


def test_bad_spec_is_refused_before_contacting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: iris\ndata: {path: x.csv}\ntarget: y\nmetric: nope\n")
    result = runner.invoke(app, ["pipeline", "run", "--spec", str(bad), "--host", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "metric: Input should be" in result.stderr


def test_score_refuses_bad_syntax_before_any_task(tmp_path: Path) -> None:
    result = runner.invoke(app, ["score", "--model", "iris", "--input", "ftp://x/y.csv", "--output", "o.csv"])
    assert result.exit_code == 1
    assert "ftp://x/y.csv" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite-file"], indirect=True)
def test_score_writes_predictions_with_probabilities(settings: Settings, tmp_path: Path) -> None:
    published = run_training(settings, load_spec(IRIS, ["search.trials=2", "cv_folds=3", "algorithms=[knn]"]))
    assert published.published is not None
    output = tmp_path / "scored.csv"
    data = Path(IRIS).parent / "data" / "iris.csv"
    result = runner.invoke(app, ["score", "--model", "iris@1", "--input", str(data), "--output", str(output)])
    assert result.exit_code == 0, result.stderr
    assert "scored 150 rows with iris@1" in result.stdout
    scored = pd.read_csv(output)
    assert len(scored) == 150
    assert {"label", "proba_setosa", "proba_versicolor", "proba_virginica", "model_version"} <= set(scored)
    probabilities = scored[["proba_setosa", "proba_versicolor", "proba_virginica"]].sum(axis=1)
    assert ((probabilities - 1).abs() < 1e-9).all()
    assert (scored["label"] == scored["species"]).mean() > 0.9
