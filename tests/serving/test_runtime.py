"""Model runtimes: scikit-learn always, ONNX Runtime only for bundles whose ONNX parity was verified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline

from modelyard.bundle import BundleMetadata, LoadedBundle, OnnxInfo, load_bundle, write_bundle
from modelyard.cpus import available_cpus
from modelyard.errors import BundleIntegrityError, InvalidInput
from modelyard.onnx_export import export_onnx
from modelyard.serving.runtime import (
    ModelRuntime,
    OnnxRuntime,
    SklearnRuntime,
    load_runtime,
    onnx_threads_for,
    open_runtime,
    served_frame,
)
from modelyard.spec import FeatureSpec, FeatureType
from modelyard.training.preprocessing import build_preprocessor

NUMERIC = ["length", "width"]
FEATURES = [
    FeatureSpec(name="length", type=FeatureType.NUMERIC),
    FeatureSpec(name="width", type=FeatureType.NUMERIC),
    FeatureSpec(name="colour", type=FeatureType.CATEGORICAL),
]


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "length": rng.normal(size=rows),
            "width": rng.normal(size=rows),
            "colour": pd.Series(rng.choice(["red", "green", "blue"], size=rows), dtype=object),
        }
    )


def make_labels(frame: pd.DataFrame) -> np.ndarray:
    score = frame["length"] + frame["width"] + (frame["colour"] == "red")
    return np.select([score > 1, score > -0.5], ["large", "medium"], "small")


def fit(estimator: Any, frame: pd.DataFrame, labels: Any) -> Pipeline:
    return Pipeline([("preprocess", build_preprocessor(FEATURES)), ("model", estimator)]).fit(frame, labels)


def metadata_for(classes: list[Any], **changes: Any) -> BundleMetadata:
    fields: dict[str, Any] = {
        "name": "sizes",
        "algorithm": "logistic_regression",
        "target": "size",
        "features": FEATURES,
        "classes": classes,
        "dataset_fingerprint": "sha256:test",
    }
    return BundleMetadata.model_validate({**fields, **changes})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(120)


@pytest.fixture(scope="module")
def model(frame: pd.DataFrame) -> Pipeline:
    return fit(LogisticRegression(max_iter=500), frame, make_labels(frame))


def write_and_load(tmp_path: Path, model: Any, metadata: BundleMetadata) -> LoadedBundle:
    dest = tmp_path / "bundle"
    write_bundle(dest, model=model, metadata=metadata, model_card="# sizes\n", report_html="<html></html>")
    return load_bundle(dest)


def test_sklearn_runtime_returns_float64_probabilities_in_metadata_order(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    bundle = write_and_load(tmp_path, model, metadata_for(list(model.classes_)))
    runtime = load_runtime(bundle, prefer_onnx=False)
    assert isinstance(runtime, ModelRuntime)
    assert runtime.kind == "sklearn"
    assert runtime.classes == ["large", "medium", "small"]
    proba = runtime.predict_proba(frame.head(7))
    assert proba.dtype == np.float64
    assert proba.shape == (7, 3)
    np.testing.assert_allclose(proba, model.predict_proba(frame.head(7)))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_columns_are_reordered_when_metadata_lists_classes_differently(
    model: Pipeline, frame: pd.DataFrame
) -> None:
    runtime = SklearnRuntime(model, metadata_for(["small", "large", "medium"]))
    expected = model.predict_proba(frame.head(5))[:, [2, 0, 1]]
    np.testing.assert_allclose(runtime.predict_proba(frame.head(5)), expected)
    assert runtime.classes == ["small", "large", "medium"]


def test_integer_classes_compare_with_numpy_labels(frame: pd.DataFrame) -> None:
    labels = np.where(frame["length"] > 0, 7, 3)  # numpy int64 in classes_
    model = fit(LogisticRegression(max_iter=500), frame, labels)
    runtime = SklearnRuntime(model, metadata_for([7, 3]))
    expected = model.predict_proba(frame.head(4))[:, [1, 0]]
    np.testing.assert_allclose(runtime.predict_proba(frame.head(4)), expected)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["large", "medium"], r"predicts classes \['large', 'medium', 'small'\] but metadata.json lists"),
        (["large", "medium", "tiny"], r"but metadata.json lists \['large', 'medium', 'tiny'\]"),
    ],
)
def test_a_model_whose_classes_disagree_with_the_metadata_is_refused(
    model: Pipeline, classes: list[str], message: str
) -> None:
    with pytest.raises(BundleIntegrityError, match=message):
        SklearnRuntime(model, metadata_for(classes), label="sizes/3")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (["length", "width"], "missing feature\\(s\\): colour"),
        (["length", "width", "colour", "height"], "unknown feature\\(s\\): height"),
        (["width", "length", "colour"], r"features must come in the order \['length', 'width', 'colour'\]"),
    ],
)
def test_frames_with_wrong_columns_are_refused_naming_them(
    model: Pipeline, frame: pd.DataFrame, columns: list[str], message: str
) -> None:
    runtime = SklearnRuntime(model, metadata_for(list(model.classes_)))
    bad = frame.head(2).assign(height=1.0)[columns]
    with pytest.raises(InvalidInput, match=message):
        runtime.predict_proba(bad)


def test_an_estimator_without_predict_proba_is_refused(frame: pd.DataFrame) -> None:
    model = fit(RidgeClassifier(), frame, make_labels(frame))
    with pytest.raises(BundleIntegrityError, match="has no predict_proba"):
        SklearnRuntime(model, metadata_for(list(model.classes_)), label="sizes/1")


def test_an_unfitted_estimator_is_refused() -> None:
    unfitted = Pipeline([("preprocess", build_preprocessor(FEATURES)), ("model", LogisticRegression())])
    with pytest.raises(BundleIntegrityError, match="has no classes_: is it fitted"):
        SklearnRuntime(unfitted, metadata_for(["a", "b"]))


def test_serving_predicts_on_the_calling_thread(frame: pd.DataFrame) -> None:
    model = fit(RandomForestClassifier(n_estimators=5, n_jobs=-1, random_state=0), frame, make_labels(frame))
    runtime = SklearnRuntime(model, metadata_for(list(model.classes_)))
    assert model.get_params()["model__n_jobs"] == 1
    np.testing.assert_allclose(runtime.predict_proba(frame.head(3)).sum(axis=1), 1.0)


def test_prefer_onnx_falls_back_to_sklearn_for_a_bundle_without_onnx(tmp_path: Path, model: Pipeline) -> None:
    bundle = write_and_load(tmp_path, model, metadata_for(list(model.classes_)))
    assert load_runtime(bundle, prefer_onnx=True).kind == "sklearn"


# ------------------------------------------------------------------ ONNX Runtime


def write_with_onnx(
    tmp_path: Path,
    model: Pipeline,
    frame: pd.DataFrame,
    classes: list[Any] | None = None,
    features: list[FeatureSpec] = FEATURES,
) -> Path:
    export = export_onnx(model, features, list(model.classes_), frame)
    assert export.info.file == "model.onnx", export.info.skipped
    metadata = metadata_for(classes or list(model.classes_), onnx=export.info, features=features)
    dest = tmp_path / "bundle"
    write_bundle(
        dest,
        model=model,
        metadata=metadata,
        model_card="#\n",
        report_html="<p/>",
        extra_files=export.extra_files,
    )
    return dest


@pytest.fixture(scope="module")
def forest(frame: pd.DataFrame) -> Pipeline:
    return fit(RandomForestClassifier(n_estimators=20, random_state=0), frame, make_labels(frame))


def with_missing_values(frame: pd.DataFrame) -> pd.DataFrame:
    served = served_frame(frame, FEATURES)
    served.loc[served.index % 4 == 1, "width"] = np.nan
    served.loc[served.index % 5 == 2, "colour"] = None
    served.loc[served.index % 6 == 3, "colour"] = "purple"  # a category training never saw
    return served


@pytest.mark.parametrize("estimator", ["model", "forest"])
def test_the_onnx_runtime_matches_sklearn_within_the_tolerance(
    tmp_path: Path, frame: pd.DataFrame, estimator: str, request: pytest.FixtureRequest
) -> None:
    model: Pipeline = request.getfixturevalue(estimator)
    bundle = load_bundle(write_with_onnx(tmp_path, model, frame))

    runtime = load_runtime(bundle, prefer_onnx=True)

    assert isinstance(runtime, OnnxRuntime)
    assert runtime.kind == "onnx"
    assert runtime.classes == list(model.classes_)
    rows = with_missing_values(make_frame(64, seed=1))
    proba = runtime.predict_proba(rows)
    assert proba.dtype == np.float64 and proba.shape == (64, 3)
    np.testing.assert_allclose(proba, model.predict_proba(rows), atol=1e-5, rtol=0)
    single = runtime.predict_proba(rows.iloc[[5]])
    np.testing.assert_allclose(single, proba[[5]], atol=1e-12, rtol=0)


def test_an_all_numeric_onnx_model_takes_the_feature_matrix_as_is(
    tmp_path: Path, frame: pd.DataFrame
) -> None:
    numeric_features = FEATURES[:2]
    model = Pipeline(
        [("preprocess", build_preprocessor(numeric_features)), ("model", LogisticRegression(max_iter=500))]
    ).fit(frame[NUMERIC], make_labels(frame))
    dest = write_with_onnx(tmp_path, model, frame[NUMERIC], features=numeric_features)
    runtime = load_runtime(load_bundle(dest), prefer_onnx=True)
    assert isinstance(runtime, OnnxRuntime) and runtime.takes_numeric_matrix

    rows = make_frame(32, seed=2)[NUMERIC]
    rows.loc[3, "width"] = np.nan
    from_matrix = runtime.predict_proba_numeric(rows.to_numpy())
    np.testing.assert_allclose(from_matrix, runtime.predict_proba(rows), atol=1e-12, rtol=0)
    np.testing.assert_allclose(from_matrix, model.predict_proba(rows), atol=1e-5, rtol=0)
    with pytest.raises(
        InvalidInput, match=r"expected a matrix of 2 feature column\(s\), got shape \(32, 3\)"
    ):
        runtime.predict_proba_numeric(np.zeros((32, 3)))


def test_an_onnx_model_with_categorical_inputs_does_not_take_a_numeric_matrix(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    runtime = load_runtime(load_bundle(write_with_onnx(tmp_path, model, frame)), prefer_onnx=True)
    assert isinstance(runtime, OnnxRuntime) and not runtime.takes_numeric_matrix
    with pytest.raises(InvalidInput, match="does not take one numeric matrix of every feature"):
        runtime.predict_proba_numeric(np.zeros((1, 3)))


def test_more_onnx_threads_give_the_same_probabilities_to_rounding(
    tmp_path: Path, forest: Pipeline, frame: pd.DataFrame
) -> None:
    bundle = load_bundle(write_with_onnx(tmp_path, forest, frame))
    rows = with_missing_values(make_frame(1024, seed=3))
    one = OnnxRuntime.from_bundle(bundle).predict_proba(rows)
    two = OnnxRuntime.from_bundle(bundle, threads=2).predict_proba(rows)
    # float32 sums over the trees in another order: equal to rounding, and within publishing's 1e-5
    np.testing.assert_allclose(two, one, atol=1e-6, rtol=0)
    np.testing.assert_allclose(two, forest.predict_proba(rows), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        OnnxRuntime.from_bundle(bundle, threads=0)


def test_automatic_onnx_threads_go_to_tree_ensembles_only() -> None:
    cpus = min(4, available_cpus())
    assert onnx_threads_for(metadata_for(["a", "b"], algorithm="random_forest"), 0) == cpus
    assert onnx_threads_for(metadata_for(["a", "b"], algorithm="hist_gradient_boosting"), 0) == cpus
    assert onnx_threads_for(metadata_for(["a", "b"], algorithm="logistic_regression"), 0) == 1
    assert onnx_threads_for(metadata_for(["a", "b"], algorithm="logistic_regression"), 3) == 3
    with pytest.raises(ValueError, match=r"onnx_threads must be >= 0 \(0: automatic\), got -1"):
        onnx_threads_for(metadata_for(["a", "b"]), -1)


def test_the_onnx_runtime_reorders_columns_into_the_metadata_class_order(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    dest = write_with_onnx(tmp_path, model, frame, classes=["small", "large", "medium"])
    runtime = load_runtime(load_bundle(dest), prefer_onnx=True)
    assert runtime.kind == "onnx"
    assert runtime.classes == ["small", "large", "medium"]
    rows = served_frame(frame.head(6), FEATURES)
    expected = model.predict_proba(rows)[:, [2, 0, 1]]
    np.testing.assert_allclose(runtime.predict_proba(rows), expected, atol=1e-5, rtol=0)


def test_prefer_onnx_false_forces_sklearn(tmp_path: Path, model: Pipeline, frame: pd.DataFrame) -> None:
    bundle = load_bundle(write_with_onnx(tmp_path, model, frame))
    runtime = load_runtime(bundle, prefer_onnx=False)
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.kind == "sklearn"
    assert runtime.onnx_unused == "prefer_onnx is off"


def test_a_bundle_whose_export_was_skipped_is_served_by_sklearn_saying_why(
    tmp_path: Path, model: Pipeline
) -> None:
    metadata = metadata_for(list(model.classes_), onnx=OnnxInfo(skipped="text feature(s) note: ..."))
    runtime = load_runtime(write_and_load(tmp_path, model, metadata), prefer_onnx=True)
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.onnx_unused == "publishing skipped the ONNX export: text feature(s) note: ..."


def test_an_old_bundle_without_an_onnx_record_is_served_by_sklearn(tmp_path: Path, model: Pipeline) -> None:
    runtime = load_runtime(
        write_and_load(tmp_path, model, metadata_for(list(model.classes_))), prefer_onnx=True
    )
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.onnx_unused is not None and runtime.onnx_unused.startswith(
        "the bundle records no ONNX export"
    )


def test_a_tampered_onnx_model_is_caught_by_bundle_verification(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    dest = write_with_onnx(tmp_path, model, frame)
    bundle = load_bundle(dest)  # verified before the file changes under it
    original = (dest / "model.onnx").read_bytes()
    (dest / "model.onnx").write_bytes(original[:-1] + bytes([original[-1] ^ 1]))

    with pytest.raises(BundleIntegrityError, match=r"model.onnx was altered: expected sha256") as caught:
        load_bundle(dest)
    assert caught.value.file == "model.onnx"
    # a file swapped after verification is caught too: the runtime hashes the bytes it loads
    with pytest.raises(BundleIntegrityError, match=r"model.onnx was altered: expected sha256"):
        load_runtime(bundle, prefer_onnx=True)


def test_an_onnx_model_onnxruntime_cannot_load_falls_back_to_sklearn(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    export = export_onnx(model, FEATURES, list(model.classes_), frame)
    metadata = metadata_for(list(model.classes_), onnx=export.info)
    dest = tmp_path / "bundle"
    # listed and checksummed, so it verifies, but it is not an ONNX graph
    write_bundle(
        dest,
        model=model,
        metadata=metadata,
        model_card="#\n",
        report_html="<p/>",
        extra_files={"model.onnx": b"not a protobuf"},
    )
    runtime = load_runtime(load_bundle(dest), prefer_onnx=True)
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.onnx_unused is not None
    assert runtime.onnx_unused.startswith("onnxruntime could not load the bundle's ONNX model: ")
    assert "serving with scikit-learn" in caplog.text


def test_an_onnx_model_whose_inputs_disagree_with_the_metadata_is_refused(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    export = export_onnx(model, FEATURES, list(model.classes_), frame)
    renamed = [i.model_copy(update={"name": f"in_{i.name}"}) for i in export.info.inputs]
    info = export.info.model_copy(update={"inputs": renamed})
    dest = tmp_path / "bundle"
    write_bundle(
        dest,
        model=model,
        metadata=metadata_for(list(model.classes_), onnx=info),
        model_card="#\n",
        report_html="<p/>",
        extra_files=export.extra_files,
    )
    with pytest.raises(BundleIntegrityError, match=r"model.onnx takes \[\('length', 'tensor\(double\)'\)"):
        load_runtime(load_bundle(dest), prefer_onnx=True)


def test_the_onnx_runtime_refuses_frames_with_wrong_columns(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    runtime = load_runtime(load_bundle(write_with_onnx(tmp_path, model, frame)), prefer_onnx=True)
    with pytest.raises(InvalidInput, match=r"missing feature\(s\): colour"):
        runtime.predict_proba(frame[["length", "width"]])


def test_served_frame_builds_what_the_codec_sends() -> None:
    raw = pd.DataFrame(
        {"length": [1, None], "width": ["2.5", 3], "colour": pd.Series([7, None], dtype=object)}
    )
    served = served_frame(raw, FEATURES)
    assert list(served.columns) == ["length", "width", "colour"]
    assert served["length"].dtype == np.float64 and np.isnan(served["length"].iloc[1])
    assert served["width"].tolist() == [2.5, 3.0]
    assert served["colour"].dtype == object and served["colour"].tolist() == ["7", None]


# ------------------------------------------------------------------ open_runtime: unpickle only if needed


def test_open_runtime_serves_onnx_without_importing_sklearn(
    tmp_path: Path, forest: Pipeline, frame: pd.DataFrame
) -> None:
    dest = write_with_onnx(tmp_path, forest, frame)
    probe = (
        "import sys; from modelyard.serving.runtime import open_runtime; "
        f"runtime, metadata = open_runtime({str(dest)!r}, prefer_onnx=True); "
        "print(runtime.kind, metadata.name, 'sklearn' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["onnx", "sizes", "False"]


def test_open_runtime_unpickles_for_sklearn(tmp_path: Path, model: Pipeline, frame: pd.DataFrame) -> None:
    dest = write_with_onnx(tmp_path, model, frame)
    runtime, metadata = open_runtime(dest, prefer_onnx=False)
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.onnx_unused == "prefer_onnx is off"
    assert metadata == load_bundle(dest).metadata
    rows = served_frame(frame.head(3), FEATURES)
    np.testing.assert_allclose(runtime.predict_proba(rows), model.predict_proba(rows))


def test_open_runtime_verifies_every_file_even_on_the_onnx_path(
    tmp_path: Path, model: Pipeline, frame: pd.DataFrame
) -> None:
    dest = write_with_onnx(tmp_path, model, frame)
    with (dest / "model.joblib").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleIntegrityError, match=r"model\.joblib was altered"):
        open_runtime(dest, prefer_onnx=True)
