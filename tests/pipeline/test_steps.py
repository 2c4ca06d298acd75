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


def paths(tmp_path: Path) -> tuple[str, str, str]:
    tmp_path.mkdir(exist_ok=True)
    return tuple(str(tmp_path / f"{n}.parquet") for n in ("data", "train", "holdout"))  # type: ignore[return-value]


def test_prepare_snapshots_registers_once_per_content_and_splits(settings: Settings, tmp_path: Path) -> None:
    spec_yaml = iris_yaml()
    fingerprint = steps.fingerprint_source(spec_yaml)
    data, train, holdout = paths(tmp_path)
    first = steps.prepare(spec_yaml, fingerprint, data, train, holdout)
    again = steps.prepare(spec_yaml, fingerprint, *paths(tmp_path / "again"))
    assert (first.dataset, first.rows, first.created) == ("iris@1", 150, True)
    assert (again.dataset, again.created) == ("iris@1", False)
    assert first.algorithms == ["logistic_regression"]
    assert first.class_counts == {"setosa": 50, "versicolor": 50, "virginica": 50}
    snapshot = pd.read_parquet(data)
    assert fingerprint_frame(snapshot) == fingerprint
    train_part, holdout_part = pd.read_parquet(train), pd.read_parquet(holdout)
    assert len(train_part) + len(holdout_part) == 150 and list(holdout_part.columns) == list(snapshot.columns)
    with Registry(settings.database_url) as registry:
        assert registry.get_dataset("iris", 1).fingerprint == fingerprint


def test_prepare_refuses_data_that_changed_since_the_fingerprint(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ModelyardError, match=r"changed since this run fingerprinted it \(000000000000 -> "):
        steps.prepare(iris_yaml(), "0" * 64, *paths(tmp_path))


def test_prepare_lists_every_problem_and_registers_nothing(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sepal_length,sepal_width,petal_length,petal_width,species\n" + "x,1,1,,setosa\n" * 10)
    spec_yaml = iris_yaml(f"data.path={bad}")
    with pytest.raises(DataValidationError) as caught:
        steps.prepare(spec_yaml, steps.fingerprint_source(spec_yaml), *paths(tmp_path))
    assert "sepal_length" in str(caught.value) and "petal_width" in str(caught.value)
    assert "only one class" in str(caught.value)
    with Registry(settings.database_url) as registry:
        assert registry.list_datasets("iris") == []


def test_prepare_tune_decide_publish_deploy(settings: Settings, tmp_path: Path) -> None:
    spec_yaml = iris_yaml("algorithms=[logistic_regression, knn]")
    fingerprint = steps.fingerprint_source(spec_yaml)
    data, train, holdout = paths(tmp_path)
    prepared = steps.prepare(spec_yaml, fingerprint, data, train, holdout)
    assert prepared.algorithms == ["logistic_regression", "knn"]
    models = [str(tmp_path / f"{algorithm}.joblib") for algorithm in prepared.algorithms]
    summaries = [
        steps.tune_one(spec_yaml, prepared.features_json, train, model, algorithm=algorithm)
        for algorithm, model in zip(prepared.algorithms, models, strict=True)
    ]
    decision = steps.decide(
        spec_yaml, prepared.features_json, summaries, models, str(tmp_path / "w"), holdout
    )
    assert json.loads(decision.winner_json)["algorithm"] in prepared.algorithms
    assert decision.verdict.passed, decision.verdict.reason
    assert json.loads(decision.evaluation_json)["rows"] == len(pd.read_parquet(holdout))
    report, card = str(tmp_path / "report.html"), str(tmp_path / "card.md")
    record = steps.publish(spec_yaml, prepared.features_json, summaries, decision.winner_json,
                           str(tmp_path / "w"), decision.evaluation_json, train, holdout, fingerprint,
                           prepared.dataset, report, card, run_id="iris-train-0123456789")  # fmt: skip
    assert (record.name, record.version, record.stage) == ("iris", 1, Stage.STAGING)
    assert record.run_id == "iris-train-0123456789"  # the pipeline's run_id parameter (the operator's run)
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert record.storage_uri == f"{settings.store_uri}/iris/1"
    summary = json.loads(steps.run_summary(summaries, decision.winner_json, decision.evaluation_json,
                                           steps.verdict_to_json(decision.verdict), record))  # fmt: skip
    assert summary["published"]["version"] == 1 and summary["gate"]["passed"] is True
    assert steps.deploy("iris", 1, "", "kubeflow") == "iris@1 is in production (the registry)"
    with Registry(settings.database_url) as registry:
        production = registry.production("iris")
        assert production is not None and production.version == 1


def test_decide_refuses_candidates_without_their_models(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ModelyardError, match=r"^decide got 2 candidates but 1 models$"):
        steps.decide(iris_yaml(), "[]", ["{}", "{}"], ["a"], str(tmp_path / "w"), str(tmp_path / "h"))


def test_gate_rejects_a_model_worse_than_production(settings: Settings, tmp_path: Path) -> None:
    run_training(settings, load_spec(EXAMPLES / "iris.yaml", FAST), stage=Stage.PRODUCTION)
    spec_yaml = iris_yaml()
    data, train, holdout = paths(tmp_path)
    steps.prepare(spec_yaml, steps.fingerprint_source(spec_yaml), data, train, holdout)
    verdict = steps.gate(steps.spec_from_yaml(spec_yaml), 0.6, pd.read_parquet(holdout))
    assert not verdict.passed
    assert "is worse than production iris@1" in verdict.reason


def test_reject_summarises_without_publishing() -> None:
    verdict = {"passed": False, "reason": "below the minimum"}
    summary = json.loads(steps.reject(['{"algorithm": "knn"}'], '{"algorithm": "knn"}',
                                      '{"metrics": {"f1_macro": 0.5}}', json.dumps(verdict)))  # fmt: skip
    assert summary["published"] is None and summary["gate"] == verdict
    assert summary["holdout"] == {"f1_macro": 0.5}
