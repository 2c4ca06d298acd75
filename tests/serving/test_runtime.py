"""Model runtimes: scikit-learn always, ONNX Runtime only for bundles whose ONNX parity was verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline

from modelyard.bundle import BundleMetadata, LoadedBundle, load_bundle, write_bundle
from modelyard.errors import BundleIntegrityError, InvalidInput
from modelyard.serving.runtime import ModelRuntime, SklearnRuntime, load_runtime
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
