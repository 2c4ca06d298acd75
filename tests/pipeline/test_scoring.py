"""Batch scoring: the steps on both backend pairs (SQLite + file, Postgres + S3), then the real pipeline
through kfp.local. Every test scores with a model that run_training just published."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from modelyard.bundle import LoadedBundle, fetch_bundle, load_bundle
from modelyard.errors import BundleIntegrityError, DataValidationError, InvalidInput, NotFound
from modelyard.pipeline.scoring_steps import (
    absolute_locations,
    check_request,
    parse_input,
    parse_output,
    score,
)
from modelyard.registry import ModelRef, ModelVersionRecord, Registry, Stage, parse_model_ref
from modelyard.settings import Settings
from modelyard.spec import load_spec
from modelyard.storage import open_store
from modelyard.workflow import run_training

ROOT = Path(__file__).resolve().parents[2]
IRIS_SPEC = ROOT / "examples" / "iris.yaml"
IRIS_CSV = ROOT / "examples" / "data" / "iris.csv"
FAST = ["search.trials=2", "cv_folds=3", "algorithms=[logistic_regression]", "gate.min_score=0.5"]
# Checks that do not depend on the backends run on the embedded pair only, to keep the file fast.
EMBEDDED_ONLY = pytest.mark.parametrize("settings", ["sqlite-file"], indirect=True)
POSTGRES_S3_ONLY = pytest.mark.parametrize("settings", ["postgres-s3"], indirect=True)
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
PROBAS = [f"proba_{label}" for label in CLASSES]
ADDED = ["label", *PROBAS, "model", "model_version"]


def publish(settings: Settings, stage: Stage = Stage.STAGING) -> ModelVersionRecord:
    outcome = run_training(settings, load_spec(IRIS_SPEC, FAST), stage=stage)
    assert outcome.published is not None, outcome.verdict.reason
    return outcome.published


@pytest.fixture
def published(settings: Settings) -> ModelVersionRecord:
    return publish(settings)


def loaded(settings: Settings, record: ModelVersionRecord, tmp_path: Path) -> LoadedBundle:
    return load_bundle(fetch_bundle(record.storage_uri, tmp_path / "fetched", s3=settings.s3))


def assert_scored(frame: pd.DataFrame, source: pd.DataFrame, bundle: LoadedBundle, version: int) -> None:
    """Input columns unchanged and in order, probabilities summing to 1, labels as the model predicts."""
    assert list(frame.columns) == [*source.columns, *ADDED]
    pd.testing.assert_frame_equal(frame[list(source.columns)], source, check_dtype=False)
    np.testing.assert_allclose(frame[PROBAS].sum(axis=1), 1.0, atol=1e-9)
    assert ((frame[PROBAS] >= 0) & (frame[PROBAS] <= 1)).all().all()
    assert frame["label"].tolist() == bundle.model.predict(source[FEATURES]).tolist()
    np.testing.assert_allclose(frame[PROBAS], bundle.model.predict_proba(source[FEATURES]), atol=1e-12)
    assert set(frame["model"]) == {"iris"}
    assert set(frame["model_version"]) == {version}


# ---------------------------------------------------------------- files, S3 and tables


def test_csv_in_csv_out(settings: Settings, published: ModelVersionRecord, tmp_path: Path) -> None:
    output = tmp_path / "out" / "scores.csv"
    summary = score(settings, "iris", str(IRIS_CSV), str(output))
    source = pd.read_csv(IRIS_CSV)
    scored = pd.read_csv(output)
    assert_scored(scored, source, loaded(settings, published, tmp_path), published.version)
    assert summary.model == "iris@1" and summary.stage == "staging"
    assert summary.storage_uri == published.storage_uri
    assert summary.output == str(output) and summary.rows == 150
    assert summary.class_counts == scored["label"].value_counts().sort_index().to_dict()
    assert summary.columns == list(scored.columns)
    assert [p.name for p in output.parent.iterdir()] == ["scores.csv"], "no partial file is left behind"


def test_parquet_out_in_small_chunks_matches_one_chunk(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.pq"
    score(settings, "iris@1", str(IRIS_CSV), str(whole))
    # 150 rows in chunks of 7: the last chunk is short, and the output is still one consistent table.
    summary = score(settings, "iris@1", str(IRIS_CSV), f"file://{chunked}", chunk_rows=7)
    frame = pd.read_parquet(chunked)
    pd.testing.assert_frame_equal(frame, pd.read_parquet(whole))
    assert_scored(frame, pd.read_csv(IRIS_CSV), loaded(settings, published, tmp_path), 1)
    assert frame["model_version"].dtype == np.int64 and frame["proba_setosa"].dtype == np.float64
    assert summary.rows == 150 and summary.output == str(chunked)


@POSTGRES_S3_ONLY
def test_s3_in_and_out(settings: Settings, published: ModelVersionRecord, tmp_path: Path) -> None:
    bucket = settings.store_uri.removeprefix("s3://").split("/")[0]
    store = open_store(f"s3://{bucket}", settings.s3)
    store.put_bytes("incoming/iris.csv", IRIS_CSV.read_bytes())
    summary = score(
        settings, "iris", f"s3://{bucket}/incoming/iris.csv", f"s3://{bucket}/scored/iris.parquet"
    )
    assert summary.output == f"s3://{bucket}/scored/iris.parquet"
    frame = pd.read_parquet(io.BytesIO(store.get_bytes("scored/iris.parquet")))
    assert_scored(frame, pd.read_csv(IRIS_CSV), loaded(settings, published, tmp_path), 1)

    score(settings, "iris", f"s3://{bucket}/incoming/iris.csv", f"s3://{bucket}/scored/iris.csv")
    as_csv = pd.read_csv(io.BytesIO(store.get_bytes("scored/iris.csv")))
    pd.testing.assert_frame_equal(as_csv, frame)


def test_table_in_and_out_read_back_with_sql(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    engine = sa.create_engine(settings.database_url)
    source = pd.read_csv(IRIS_CSV)
    source.insert(0, "flower_id", range(1000, 1150))
    source.to_sql("flowers", engine, index=False)
    try:
        summary = score(settings, "iris", "table:flowers", "table:scores")
        assert summary.output == "table:scores" and summary.rows == 150
        with engine.connect() as connection:
            back = pd.read_sql(sa.text("SELECT * FROM scores ORDER BY flower_id"), connection)
            setosa = connection.execute(
                sa.text("SELECT count(*) FROM scores WHERE label = 'setosa' AND proba_setosa > 0.5")
            ).scalar_one()
        assert_scored(back, source, loaded(settings, published, tmp_path), 1)
        assert setosa == summary.class_counts["setosa"] == 50

        # Scoring again replaces the table whole: a query input that keeps 10 rows leaves 10 rows.
        score(settings, "iris", "query:SELECT * FROM flowers WHERE flower_id < 1010", "table:scores")
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM scores")).scalar_one() == 10
            assert not staging_tables(connection)
    finally:
        engine.dispose()


def staging_tables(connection: sa.Connection) -> list[str]:
    """Tables a table write stages its rows in before it swaps them in: none may be left behind."""
    tables = sa.inspect(connection).get_table_names()
    return [name for name in tables if name.startswith("_modelyard_scoring_")]


@POSTGRES_S3_ONLY  # Postgres refuses to drop a table a view depends on; SQLite does not check
def test_a_failed_table_write_leaves_the_old_table(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    engine = sa.create_engine(settings.database_url)
    try:
        score(settings, "iris", str(IRIS_CSV), "table:scores")
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE VIEW setosa_scores AS SELECT * FROM scores"))
        fewer = tmp_path / "fewer.csv"
        pd.read_csv(IRIS_CSV).head(10).to_csv(fewer, index=False)
        with pytest.raises(InvalidInput, match=r"cannot write table:scores in .*depend"):
            score(settings, "iris", str(fewer), "table:scores")
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM setosa_scores")).scalar_one() == 150
            assert not staging_tables(connection)
    finally:
        engine.dispose()


def test_registry_tables_are_never_an_output(settings: Settings, published: ModelVersionRecord) -> None:
    with pytest.raises(InvalidInput, match="model_versions is a table of the modelyard registry"):
        score(settings, "iris", str(IRIS_CSV), "table:model_versions")
    with Registry(settings.database_url) as registry:
        assert [v.ref for v in registry.list_versions("iris")] == ["iris@1"]


@EMBEDDED_ONLY
def test_an_input_with_only_a_header_gives_an_empty_output(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(FEATURES) + "\n")
    summary = score(settings, "iris", str(empty), str(tmp_path / "none.csv"))
    assert summary.rows == 0 and summary.class_counts == {}
    assert list(pd.read_csv(tmp_path / "none.csv").columns) == [*FEATURES, *ADDED]


# ---------------------------------------------------------------- which version


def test_a_bare_name_prefers_production_then_the_latest(settings: Settings, tmp_path: Path) -> None:
    publish(settings)
    publish(settings)
    out = str(tmp_path / "out.csv")
    assert score(settings, "iris", str(IRIS_CSV), out).model == "iris@2"  # none in production: latest
    with Registry(settings.database_url) as registry:
        registry.promote("iris", 1)
    assert score(settings, "iris", str(IRIS_CSV), out).model == "iris@1"
    assert score(settings, "iris@production", str(IRIS_CSV), out).model == "iris@1"
    assert score(settings, "iris@latest", str(IRIS_CSV), out).model == "iris@2"
    assert score(settings, "iris@staging", str(IRIS_CSV), out).model == "iris@2"
    assert set(pd.read_csv(out)["model_version"]) == {2}


def test_unknown_models_versions_and_stages_are_not_found(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    with pytest.raises(NotFound, match="model 'tulip' not found"):
        score(settings, "tulip", str(IRIS_CSV), str(out))
    with pytest.raises(NotFound, match=r"model iris@7 not found \(the latest version is iris@1\)"):
        score(settings, "iris@7", str(IRIS_CSV), str(out))
    with pytest.raises(NotFound, match="model 'iris' has no version in stage 'production'"):
        score(settings, "iris@production", str(IRIS_CSV), str(out))
    assert not out.exists()


@EMBEDDED_ONLY
def test_a_bundle_changed_after_publishing_is_refused(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    # The embedded pair's store is a folder: edit the published manifest in place.
    manifest = Path(published.storage_uri.removeprefix("file://")) / "metadata.json"
    metadata = json.loads(manifest.read_text())
    metadata["metrics"]["f1_macro"] = 1.0  # every file still matches its checksum; the manifest does not
    manifest.write_text(json.dumps(metadata))
    with pytest.raises(BundleIntegrityError, match="is not the one the registry recorded for iris@1"):
        score(settings, "iris", str(IRIS_CSV), str(tmp_path / "out.csv"))


# ---------------------------------------------------------------- bad input


@EMBEDDED_ONLY
def test_missing_feature_columns_are_named(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    partial = tmp_path / "partial.csv"
    pd.read_csv(IRIS_CSV).drop(columns=["sepal_length", "petal_width"]).to_csv(partial, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(
        DataValidationError, match=r"missing column\(s\) the model iris@1 needs: sepal_length, petal_width"
    ) as caught:
        score(settings, "iris", str(partial), str(out))
    assert caught.value.problems == ["missing column(s) the model iris@1 needs: sepal_length, petal_width"]
    assert not out.exists()


@EMBEDDED_ONLY
def test_non_numeric_values_and_clashing_columns_are_all_reported(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    bad = pd.read_csv(IRIS_CSV).rename(columns={"species": "label"})
    bad["petal_width"] = bad["petal_width"].astype(object)
    bad.loc[[3, 4], "petal_width"] = ["wide", "n/a?"]
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="2 problem") as caught:
        score(settings, "iris", str(path), str(tmp_path / "out.csv"))
    assert caught.value.problems == [
        "column 'petal_width' is numeric for the model but holds 2 non-numeric value(s), e.g. 'wide', 'n/a?'",
        "column(s) label clash with the columns scoring adds; rename them in the input "
        "(e.g. query:SELECT label AS given_label, ...)",
    ]


@pytest.mark.parametrize(
    ("model", "input_uri", "output_uri", "message"),
    [
        ("Iris", "in.csv", "out.csv", r"invalid model reference 'Iris': the name 'Iris' is not 1 to 63"),
        ("iris@0", "in.csv", "out.csv", r"'iris@0': a version is a positive integer \(1, 2, ...\), got '0'"),
        ("iris@prod", "in.csv", "out.csv", r"'prod' is neither .* did you mean iris@production\?"),
        ("iris", "", "out.csv", "--input is empty"),
        ("iris", "ftp://host/in.csv", "out.csv", r"unsupported scheme ftp://; use a CSV/Parquet PATH"),
        ("iris", "table:", "out.csv", "nothing after 'table:'"),
        ("iris", "in.csv", "out.json", r"'out.json': cannot tell the format from its suffix; use a \.csv"),
        ("iris", "in.csv", "table:Scores", r"table:NAME or table:SCHEMA.NAME, each part .* lowercase"),
        ("iris", "in.csv", "table:a.b.c", r"table:NAME or table:SCHEMA.NAME"),
        ("iris", "in.csv", "query:SELECT 1", "predictions cannot be written to a query"),
        ("iris", "in.csv", "s3://bucket", "an s3:// output needs a bucket and an object key"),
        ("iris", "in.csv", "s3://bucket/dir/", "an s3:// output needs a bucket and an object key"),
        ("iris", "in.csv", "gs://bucket/out.csv", r"unsupported scheme gs://"),
    ],
)
def test_malformed_requests_are_refused_before_any_work(
    model: str, input_uri: str, output_uri: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_request(model, input_uri, output_uri, 100)


def test_chunk_rows_must_be_positive() -> None:
    with pytest.raises(InvalidInput, match="chunk_rows must be at least 1, got 0"):
        check_request("iris", "in.csv", "out.csv", 0)


def test_the_request_syntax() -> None:
    assert parse_model_ref("iris") == ModelRef("iris")
    assert parse_model_ref("iris@3") == ModelRef("iris", version=3)
    assert parse_model_ref("iris@archived") == ModelRef("iris", stage=Stage.ARCHIVED)
    assert str(parse_model_ref("iris@latest")) == "iris@latest"
    assert parse_input("table:analytics.flowers").table == "analytics.flowers"
    assert parse_input("query:SELECT * FROM t").query == "SELECT * FROM t"
    assert parse_input("dataset:iris@2").dataset == "iris@2"
    assert parse_input("s3://b/k.parquet").path == "s3://b/k.parquet"
    assert parse_output("table:analytics.scores").describe() == "table:analytics.scores"
    assert parse_output("s3://b/k/out.parquet").file_format == "parquet"
    assert parse_output("file:///tmp/out.CSV").location == "/tmp/out.CSV"


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_locations("in.csv", "out/scores.parquet") == (
        str(tmp_path / "in.csv"),
        str(tmp_path / "out" / "scores.parquet"),
    )
    assert absolute_locations("s3://b/in.csv", "table:scores") == ("s3://b/in.csv", "table:scores")


# ---------------------------------------------------------------- the real pipeline


def test_the_compiled_package_takes_credentials_from_kubernetes() -> None:
    import yaml
    from kfp import components

    package = ROOT / "pipelines" / "batch-scoring.yaml"
    loaded_package = components.load_component_from_file(str(package))
    assert loaded_package.name == "modelyard-batch-scoring"
    assert set(loaded_package.component_spec.inputs) == {"model", "input_uri", "output_uri", "chunk_rows"}
    documents = [doc for doc in yaml.safe_load_all(package.read_text()) if doc]
    executors = next(doc for doc in documents if "platforms" in doc)["platforms"]["kubernetes"][
        "deploymentSpec"
    ]["executors"]
    for task in ("fetch-model", "score-input", "write-predictions"):
        config = executors[f"exec-{task}"]
        secrets = {entry["secretName"] for entry in config["secretAsEnv"]}
        assert secrets == {"modelyard-database", "modelyard-s3"}, task
        assert config["configMapAsEnv"][0]["configMapName"] == "modelyard-config"
    text = package.read_text()
    assert "system.Model" in text and "system.Dataset" in text and "pip install" not in text


@pytest.mark.slow
@POSTGRES_S3_ONLY
def test_the_pipeline_scores_through_kfp_local(
    settings: Settings, published: ModelVersionRecord, tmp_path: Path
) -> None:
    from modelyard.pipeline.local import PipelineFailed, TaskEvent
    from modelyard.pipeline.scoring_local import run_scoring_locally

    # Tasks read the bundle and the input from S3 and write to Postgres: credentials reach every task.
    bucket = settings.store_uri.removeprefix("s3://").split("/")[0]
    open_store(f"s3://{bucket}", settings.s3).put_bytes("incoming/iris.csv", IRIS_CSV.read_bytes())
    events: list[TaskEvent] = []
    summary = run_scoring_locally(
        settings, "iris@1", f"s3://{bucket}/incoming/iris.csv", "table:scores", events.append, chunk_rows=40
    )
    assert [(e.task, e.status) for e in events if e.status != "running"] == [
        ("fetch-model", "SUCCESS"),
        ("score-input", "SUCCESS"),
        ("write-predictions", "SUCCESS"),
    ]
    assert summary["model"] == "iris@1" and summary["rows"] == 150 and summary["output"] == "table:scores"
    assert Path(summary["log_file"]).is_file()
    engine = sa.create_engine(settings.database_url)
    try:
        scored = pd.read_sql(sa.text("SELECT * FROM scores"), engine)
    finally:
        engine.dispose()
    assert_scored(scored, pd.read_csv(IRIS_CSV), loaded(settings, published, tmp_path), 1)
    assert summary["class_counts"] == scored["label"].value_counts().sort_index().to_dict()

    # A failing task's own message reaches the caller, naming the step.
    with pytest.raises(PipelineFailed, match=r"^fetch-model: model iris@9 not found") as caught:
        run_scoring_locally(settings, "iris@9", str(IRIS_CSV), "table:scores")
    assert caught.value.failed_task == "fetch-model"
