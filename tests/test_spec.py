from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import SpecError
from modelyard.spec import Algorithm, Metric, SearchStrategy, apply_overrides, load_spec, parse_spec

MINIMAL = {"name": "iris", "data": {"path": "data/iris.csv"}, "target": "species"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_minimal_spec_gets_sensible_defaults(tmp_path: Path) -> None:
    spec = parse_spec(MINIMAL, base_dir=tmp_path)
    assert spec.algorithms == list(Algorithm)
    assert spec.search.strategy is SearchStrategy.RANDOM
    assert spec.metric is Metric.F1_MACRO
    assert spec.cv_folds == 5
    assert spec.features is None
    assert spec.data.path == str(tmp_path / "data" / "iris.csv")
    assert spec.data.file_format == "csv"


def test_s3_and_absolute_paths_are_left_alone(tmp_path: Path) -> None:
    spec = parse_spec({**MINIMAL, "data": {"path": "s3://bucket/iris.parquet"}}, base_dir=tmp_path)
    assert spec.data.path == "s3://bucket/iris.parquet"
    assert spec.data.file_format == "parquet"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Iris Model"}, r"name: String should match pattern"),
        ({"metric": "precision_at_k"}, r"metric: Input should be 'f1_macro'"),
        ({"algorithms": ["random_forest", "xgboost"]}, r"algorithms\.1: Input should be"),
        ({"algorithms": []}, r"algorithms: List should have at least 1 item"),
        ({"algorithms": ["knn", "knn"]}, r"algorithms: listed more than once: knn"),
        ({"search": {"strategy": "evolutionary"}}, r"search\.strategy: Input should be 'grid', 'random' or"),
        ({"search": {"trials": 0}}, r"search\.trials: Input should be greater than or equal to 1"),
        ({"cv_folds": 1}, r"cv_folds: Input should be greater than or equal to 2"),
        ({"holdout": 1.5}, r"holdout: Input should be less than 0\.9"),
        ({"features": [{"name": "x", "type": "image"}]}, r"features\.0\.type: Input should be 'numeric'"),
        (
            {"features": [{"name": "a", "type": "numeric"}, {"name": "a", "type": "text"}]},
            r"features: declared more than once: a",
        ),
        ({"features": [{"name": "species", "type": "categorical"}]}, r"target 'species' cannot also be"),
        ({"data": {}}, r"data: give exactly one of path, table, query or dataset \(found: none\)"),
        ({"data": {"path": "a.csv", "table": "t"}}, r"found: path, table"),
        ({"data": {"path": "a.csv", "format": "xlsx"}}, r"data\.format: String should match pattern"),
        ({"gaet": {"min_score": 0.9}}, r"gaet: Extra inputs are not permitted"),
        ({"target": ""}, r"target: String should have at least 1 character"),
    ],
)
def test_bad_spec_names_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({**MINIMAL, **change})


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL, "metric": "nope", "cv_folds": 0, "search": {"trials": -1}})
    text = str(caught.value)
    assert "metric:" in text and "cv_folds:" in text and "search.trials:" in text


def test_missing_required_fields() -> None:
    with pytest.raises(SpecError, match=r"(?s)name: Field required.*target: Field required"):
        parse_spec({"data": {"path": "x.csv"}})


def test_spec_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="expected a mapping of fields at the top level, got list"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec file not found: .*nope\.yaml"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed\n"))


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "name: iris\ndata: {path: iris.csv}\ntarget: species\n")
    spec = load_spec(
        path, ["search.trials=3", "search.strategy=bayesian", "algorithms=[knn, svm]", "gate.min_score=0.5"]
    )
    assert spec.search.trials == 3
    assert spec.search.strategy is SearchStrategy.BAYESIAN
    assert spec.algorithms == [Algorithm.KNN, Algorithm.SVM]
    assert spec.gate.min_score == 0.5


def test_override_errors_name_the_override() -> None:
    with pytest.raises(SpecError, match=r"--set 'trials': expected KEY=VALUE"):
        apply_overrides(dict(MINIMAL), ["trials"])
    with pytest.raises(SpecError, match=r"--set 'target.x=1': 'target' is not a mapping"):
        apply_overrides(dict(MINIMAL), ["target.x=1"])


def test_overrides_do_not_mutate_the_input() -> None:
    raw = {**MINIMAL, "search": {"trials": 5}}
    apply_overrides(raw, ["search.trials=9"])
    assert raw["search"] == {"trials": 5}
