"""The pipeline's steps as plain functions, on both backend pairs: what each KFP component does."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from modelyard.data.fingerprint import fingerprint_frame
from modelyard.errors import DataValidationError, ModelyardError
from modelyard.pipeline import steps
from modelyard.registry import Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import load_spec
from modelyard.workflow import run_training

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = ["search.trials=2", "cv_folds=3", "algorithms=[logistic_regression]", "gate.min_score=0.5"]


def iris_yaml(*overrides: str) -> str:
    return steps.spec_to_yaml(load_spec(EXAMPLES / "iris.yaml", [*FAST, *overrides]))


def test_spec_survives_the_yaml_round_trip() -> None:
    spec = load_spec(EXAMPLES / "iris.yaml", FAST)
    assert steps.spec_from_yaml(steps.spec_to_yaml(spec)) == spec


def test_ingest_snapshots_and_registers_the_data_once_per_content(settings: Settings, tmp_path: Path) -> None:
    spec_yaml = iris_yaml()
    fingerprint = steps.fingerprint_source(spec_yaml)
    first = steps.ingest(spec_yaml, fingerprint, str(tmp_path / "a.parquet"))
    again = steps.ingest(spec_yaml, fingerprint, str(tmp_path / "b.parquet"))
    assert (first.dataset, first.rows, first.created) == ("iris@1", 150, True)
    assert (again.dataset, again.created) == ("iris@1", False)
    snapshot = pd.read_parquet(tmp_path / "a.parquet")
    assert fingerprint_frame(snapshot) == fingerprint
    with Registry(settings.database_url) as registry:
        assert registry.get_dataset("iris", 1).fingerprint == fingerprint


def test_ingest_refuses_data_that_changed_since_the_fingerprint(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ModelyardError, match=r"changed since this run fingerprinted it \(000000000000 -> "):
        steps.ingest(iris_yaml(), "0" * 64, str(tmp_path / "a.parquet"))


def test_validate_lists_every_problem_and_marks_the_line(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pd.DataFrame({"sepal_length": ["x"] * 10, "sepal_width": [1.0] * 10, "petal_length": [1.0] * 10,
                          "petal_width": [None] * 10, "species": ["setosa"] * 10})  # fmt: skip
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataValidationError) as caught:
        steps.validate(iris_yaml(), str(tmp_path / "bad.parquet"))
    assert "sepal_length" in str(caught.value) and "petal_width" in str(caught.value)
    assert "only one class" in str(caught.value)
    reasons = steps.fail_reason(capsys.readouterr().out.splitlines())
    assert [r["step"] for r in reasons] == ["validate"]
    assert "sepal_length" in reasons[0]["message"]


def test_fail_reason_ignores_unrelated_and_broken_lines() -> None:
    lines = [
        "noise",
        steps.ERROR_MARKER + "{not json",
        "x " + steps.ERROR_MARKER + '{"step": "gate", "message": "m"}',
    ]
    assert steps.fail_reason(lines) == [{"step": "gate", "message": "m"}]


def test_tune_select_evaluate_gate_publish_deploy(settings: Settings, tmp_path: Path) -> None:
    spec_yaml = iris_yaml("algorithms=[logistic_regression, knn]")
    fingerprint = steps.fingerprint_source(spec_yaml)
    data, train, holdout = (str(tmp_path / f"{n}.parquet") for n in ("data", "train", "holdout"))
    dataset = steps.ingest(spec_yaml, fingerprint, data).dataset
    validation = steps.validate(spec_yaml, data)
    assert validation.algorithms == ["logistic_regression", "knn"]
    steps.split(spec_yaml, data, train, holdout)
    summaries = [
        steps.tune_one(
            spec_yaml, validation.features_json, algorithm, train, str(tmp_path / f"{algorithm}.joblib")
        )
        for algorithm in validation.algorithms
    ]
    winner_json = steps.select(
        spec_yaml,
        summaries,
        [str(tmp_path / f"{a}.joblib") for a in validation.algorithms],
        str(tmp_path / "w"),
    )
    assert json.loads(winner_json)["algorithm"] in validation.algorithms
    evaluation_json = steps.evaluate_winner(spec_yaml, validation.features_json, str(tmp_path / "w"), holdout)
    verdict = steps.gate(spec_yaml, evaluation_json, holdout)
    assert verdict.passed, verdict.reason
    record = steps.publish(spec_yaml, validation.features_json, summaries, winner_json, str(tmp_path / "w"),
                           evaluation_json, train, holdout, fingerprint, dataset,
                           str(tmp_path / "report.html"), str(tmp_path / "card.md"))  # fmt: skip
    assert (record.name, record.version, record.stage) == ("iris", 1, Stage.STAGING)
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert record.storage_uri == f"{settings.store_uri}/iris/1"
    summary = json.loads(steps.run_summary(summaries, winner_json, evaluation_json,
                                           steps.verdict_to_json(verdict), record))  # fmt: skip
    assert summary["published"]["version"] == 1 and summary["gate"]["passed"] is True
    assert steps.deploy("iris", 1, "", "kubeflow") == "iris@1 is in production (the registry)"
    with Registry(settings.database_url) as registry:
        production = registry.production("iris")
        assert production is not None and production.version == 1


def test_gate_rejects_a_model_worse_than_production(settings: Settings, tmp_path: Path) -> None:
    run_training(settings, load_spec(EXAMPLES / "iris.yaml", FAST), stage=Stage.PRODUCTION)
    spec_yaml = iris_yaml()
    data, train, holdout = (str(tmp_path / f"{n}.parquet") for n in ("data", "train", "holdout"))
    steps.ingest(spec_yaml, steps.fingerprint_source(spec_yaml), data)
    steps.split(spec_yaml, data, train, holdout)
    weak = {"metrics": {"f1_macro": 0.6}, "classes": ["setosa", "versicolor", "virginica"], "rows": 30,
            "confusion_matrix": [], "roc_curves": [], "per_class": []}  # fmt: skip
    verdict = steps.gate(spec_yaml, json.dumps(weak), holdout)
    assert not verdict.passed
    assert "is worse than production iris@1" in verdict.reason


def test_a_failure_without_a_step_message_shows_the_task_s_last_exception() -> None:
    from modelyard.pipeline.local import _last_error

    lines = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "KeyError: 'petal_width'",
        "INFO done",
    ]
    assert _last_error(lines) == "\nKeyError: 'petal_width'"
    assert _last_error(["all fine"]) == ""
