"""Publish-time ONNX export: kept only when its probabilities match scikit-learn's on every holdout row."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from modelyard.bundle import BundleMetadata, OnnxInfo, load_bundle, verify_bundle, write_bundle
from modelyard.onnx_export import MISSING_CATEGORY, ONNX_FILE, PARITY_TOLERANCE, export_onnx
from modelyard.publishing import write_training_bundle
from modelyard.spec import Algorithm, FeatureSpec, FeatureType, load_spec
from modelyard.training.candidates import candidate_for
from modelyard.training.preprocessing import build_preprocessor
from modelyard.training.train import train

NUMERIC = [FeatureSpec(name=f"x{i}", type=FeatureType.NUMERIC) for i in range(4)]
MIXED = [
    FeatureSpec(name="petal size", type=FeatureType.NUMERIC),  # a space: ONNX renames the input
    FeatureSpec(name="weight", type=FeatureType.NUMERIC),
    FeatureSpec(name="colour", type=FeatureType.CATEGORICAL),
    FeatureSpec(name="shape", type=FeatureType.CATEGORICAL),
]
IRIS = Path(__file__).resolve().parent.parent / "examples" / "iris.yaml"


def numeric_frame(rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)), columns=[f.name for f in NUMERIC])
    score = frame["x0"] + 0.5 * frame["x1"] - frame["x2"]
    labels = np.select([score > 0.7, score > -0.7], ["high", "mid"], "low")
    frame.loc[frame.index % 9 == 4, "x3"] = np.nan  # imputed in the graph
    return frame, labels


def mixed_frame(rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "petal size": rng.normal(size=rows),
            "weight": rng.normal(10, 2, size=rows),
            "colour": pd.Series(rng.choice(["red", "green", "blue"], size=rows), dtype=object),
            # integer categories: compared as strings by training and by the server's codec alike
            "shape": pd.Series(rng.choice([1, 2, 3], size=rows), dtype=object),
        }
    )
    labels = np.where(frame["petal size"] + (frame["colour"] == "red") > 0.5, "yes", "no")
    frame.loc[frame.index % 7 == 1, "weight"] = np.nan
    frame.loc[frame.index % 5 == 2, "colour"] = None
    return frame, labels


def fitted(algorithm: Algorithm, features: list[FeatureSpec], frame: pd.DataFrame, labels: Any) -> Pipeline:
    return candidate_for(algorithm, features).pipeline(features, seed=0).fit(frame, labels)


NUMERIC_ALGORITHMS = [
    Algorithm.LOGISTIC_REGRESSION,
    Algorithm.RANDOM_FOREST,
    Algorithm.HIST_GRADIENT_BOOSTING,
    Algorithm.KNN,
    Algorithm.NAIVE_BAYES,
]


@pytest.mark.parametrize("algorithm", NUMERIC_ALGORITHMS)
def test_numeric_models_convert_and_match_sklearn(algorithm: Algorithm) -> None:
    frame, labels = numeric_frame(200)
    model = fitted(algorithm, NUMERIC, frame.iloc[:150], labels[:150])
    holdout = frame.iloc[150:]

    export = export_onnx(model, NUMERIC, list(model.classes_), holdout)

    info = export.info
    assert info.skipped is None, info.skipped
    assert info.file == ONNX_FILE
    assert info.rows_checked == 50
    assert info.tolerance == PARITY_TOLERANCE
    assert info.max_abs_diff is not None and info.max_abs_diff <= PARITY_TOLERANCE
    assert info.opset["ai.onnx"] >= 17
    assert info.classes == list(model.classes_)
    # one [N, 4] double tensor for a numeric-only model
    assert [(i.name, i.columns, i.type) for i in info.inputs] == [
        ("features", ["x0", "x1", "x2", "x3"], "double")
    ]
    assert export.extra_files.keys() == {ONNX_FILE}
    graph = onnx.load_from_string(export.extra_files[ONNX_FILE])
    assert [o.name for o in graph.graph.output] == ["label", "probabilities"]  # no ZipMap


@pytest.mark.parametrize("algorithm", [Algorithm.LOGISTIC_REGRESSION, Algorithm.RANDOM_FOREST, Algorithm.SVM])
def test_numeric_and_categorical_models_with_missing_values_convert(algorithm: Algorithm) -> None:
    frame, labels = mixed_frame(160)
    model = fitted(algorithm, MIXED, frame.iloc[:120], labels[:120])

    export = export_onnx(model, MIXED, list(model.classes_), frame.iloc[120:])

    info = export.info
    assert info.file == ONNX_FILE, info.skipped
    assert info.max_abs_diff is not None and info.max_abs_diff <= PARITY_TOLERANCE
    assert info.missing_category == MISSING_CATEGORY
    # one [N, 1] input per column; skl2onnx's name for "petal size" is recorded, the column kept
    assert [(i.columns, i.type) for i in info.inputs] == [
        (["petal size"], "double"),
        (["weight"], "double"),
        (["colour"], "string"),
        (["shape"], "string"),
    ]
    assert info.inputs[0].name == "petal_size"


def test_text_features_are_skipped_with_the_reason() -> None:
    features = [*NUMERIC[:1], FeatureSpec(name="review", type=FeatureType.TEXT)]
    frame = pd.DataFrame({"x0": [0.1, 0.5, 0.9, 0.3], "review": ["good", "bad", "good film", "bad film"]})
    model = fitted(Algorithm.LOGISTIC_REGRESSION, features, frame, ["pos", "neg", "pos", "neg"])

    export = export_onnx(model, features, list(model.classes_), frame)

    assert export.info.skipped == (
        "text feature(s) review: TF-IDF is not exported, ONNX tokenisation differs from scikit-learn's"
    )
    assert export.content is None and export.extra_files == {}


class MajorityClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """An estimator skl2onnx has never heard of."""

    def fit(self, rows: Any, y: Any) -> MajorityClassifier:
        self.classes_, counts = np.unique(y, return_counts=True)
        self.prior_ = counts / counts.sum()
        return self

    def predict_proba(self, rows: Any) -> np.ndarray:
        return np.tile(self.prior_, (len(rows), 1))

    def predict(self, rows: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(rows).argmax(axis=1)]


def test_an_estimator_skl2onnx_does_not_know_is_skipped() -> None:
    frame, labels = numeric_frame(40)
    model = Pipeline([("preprocess", build_preprocessor(NUMERIC)), ("model", MajorityClassifier())])
    model.fit(frame, labels)

    export = export_onnx(model, NUMERIC, list(model.classes_), frame)

    assert export.info.skipped is not None
    assert export.info.skipped.startswith("skl2onnx could not convert the model: MissingShapeCalculator:")
    assert "MajorityClassifier" in export.info.skipped


def test_a_custom_function_step_is_skipped() -> None:
    frame, labels = numeric_frame(40)
    model = candidate_for(Algorithm.LOGISTIC_REGRESSION, NUMERIC).pipeline(NUMERIC, seed=0)
    numeric_branch = model.named_steps["preprocess"].transformers[0][1]
    numeric_branch.steps.insert(1, ("log", FunctionTransformer(np.log1p)))
    model.fit(frame.abs(), labels)

    export = export_onnx(model, NUMERIC, list(model.classes_), frame.abs())

    assert export.info.skipped == "FunctionTransformer(log1p) has no ONNX equivalent"


def test_a_model_that_is_not_modelyards_pipeline_is_skipped() -> None:
    frame, labels = numeric_frame(40)
    export = export_onnx(MajorityClassifier().fit(frame, labels), NUMERIC, ["high", "low", "mid"], frame)
    assert export.info.skipped == "expected a Pipeline of ('preprocess', 'model'), got MajorityClassifier"


def test_probabilities_beyond_the_tolerance_are_not_kept() -> None:
    # The forest runs in float32 in ONNX: differences of ~1e-8, beyond a 1e-12 tolerance.
    frame, labels = numeric_frame(120)
    model = fitted(Algorithm.RANDOM_FOREST, NUMERIC, frame.iloc[:80], labels[:80])

    export = export_onnx(model, NUMERIC, list(model.classes_), frame.iloc[80:], tolerance=1e-12)

    info = export.info
    assert info.skipped is not None
    assert info.skipped.startswith("ONNX probabilities differ from scikit-learn's by up to ")
    assert info.skipped.endswith("on the 40 holdout rows (tolerance 1e-12)")
    assert info.file is None and export.extra_files == {}
    assert info.max_abs_diff is not None and 1e-12 < info.max_abs_diff < 1e-5
    assert info.rows_checked == 40


@pytest.mark.parametrize(
    ("holdout", "reason"),
    [
        (pd.DataFrame(columns=["x0", "x1", "x2", "x3"]), "no holdout rows to verify an ONNX export against"),
        (pd.DataFrame({"x0": [1.0], "x1": [1.0]}), "the holdout lacks feature column(s) x2, x3"),
    ],
)
def test_an_unusable_holdout_is_skipped(holdout: pd.DataFrame, reason: str) -> None:
    frame, labels = numeric_frame(40)
    model = fitted(Algorithm.LOGISTIC_REGRESSION, NUMERIC, frame, labels)
    assert export_onnx(model, NUMERIC, list(model.classes_), holdout).info.skipped == reason


def test_without_skl2onnx_the_export_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    frame, labels = numeric_frame(40)
    model = fitted(Algorithm.LOGISTIC_REGRESSION, NUMERIC, frame, labels)
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # import skl2onnx -> ImportError

    export = export_onnx(model, NUMERIC, list(model.classes_), frame)

    assert export.info.skipped == "skl2onnx is not installed (pip install 'modelyard[onnx]')"


def test_classes_the_bundle_does_not_list_are_skipped() -> None:
    frame, labels = numeric_frame(40)
    model = fitted(Algorithm.LOGISTIC_REGRESSION, NUMERIC, frame, labels)
    export = export_onnx(model, NUMERIC, ["high", "low"], frame)
    assert (
        export.info.skipped
        == "the model predicts classes ['high', 'low', 'mid'], the bundle lists ['high', 'low']"
    )


# ------------------------------------------------------------------ metadata


VERIFIED: dict[str, Any] = {
    "file": "model.onnx",
    "max_abs_diff": 1e-8,
    "rows_checked": 30,
    "tolerance": 1e-5,
    "opset": {"ai.onnx": 19},
    "inputs": [{"name": "features", "columns": ["x0", "x1", "x2", "x3"], "type": "double"}],
    "probabilities": "probabilities",
    "classes": ["high", "low", "mid"],
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"skipped": "why"}, "exactly one of file"),
        ({"file": None}, "exactly one of file"),
        ({"max_abs_diff": 1e-3}, "max_abs_diff 0.001 exceeds the tolerance 1e-05"),
        ({"rows_checked": 0}, "at least one holdout row"),
        ({"inputs": []}, "a verified export needs inputs"),
        ({"probabilities": None, "classes": []}, "a verified export needs probabilities, classes"),
        ({"file": "../model.onnx"}, "onnx file name"),
        (
            {"inputs": [{"name": "colour", "columns": ["colour"], "type": "string"}]},
            "with string inputs needs missing_category",
        ),
        (
            {"inputs": [{"name": "a", "columns": ["a"], "type": "float16"}]},
            "Input should be 'double' or 'string'",
        ),
    ],
)
def test_onnx_metadata_names_each_inconsistency(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OnnxInfo.model_validate({**VERIFIED, **changes})


def bundle_fields(**changes: Any) -> dict[str, Any]:
    return {
        "name": "numbers",
        "algorithm": "logistic_regression",
        "target": "level",
        "features": [f.model_dump() for f in NUMERIC],
        "classes": ["high", "low", "mid"],
        "dataset_fingerprint": "sha256:test",
        **changes,
    }


@pytest.mark.parametrize(
    ("onnx_changes", "files", "message"),
    [
        ({}, {"model.joblib": "0" * 64}, "onnx: model.onnx is not among the bundle's files"),
        (
            {"inputs": [{"name": "f", "columns": ["x0", "height"], "type": "double"}]},
            {},
            "onnx: inputs read columns that are not features: height",
        ),
        ({"classes": ["high", "low", "tiny"]}, {}, r"onnx: classes \['high', 'low', 'tiny'\] differ"),
    ],
)
def test_bundle_metadata_checks_the_onnx_record_against_the_bundle(
    onnx_changes: dict[str, Any], files: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        BundleMetadata.model_validate(bundle_fields(onnx={**VERIFIED, **onnx_changes}, files=files))


def test_bundles_without_an_onnx_record_stay_valid() -> None:
    metadata = BundleMetadata.model_validate(bundle_fields())
    assert metadata.onnx is None
    assert "onnx" in json.loads(metadata.to_json_bytes())  # written as null, read back the same
    assert BundleMetadata.model_validate_json(metadata.to_json_bytes()) == metadata


# ------------------------------------------------------------------ bundles


def test_a_verified_export_travels_in_the_bundle_and_a_tampered_one_is_refused(tmp_path: Path) -> None:
    frame, labels = numeric_frame(120)
    model = fitted(Algorithm.LOGISTIC_REGRESSION, NUMERIC, frame.iloc[:90], labels[:90])
    export = export_onnx(model, NUMERIC, list(model.classes_), frame.iloc[90:])
    metadata = BundleMetadata.model_validate(bundle_fields(onnx=export.info))
    dest = tmp_path / "bundle"
    written = write_bundle(
        dest,
        model=model,
        metadata=metadata,
        model_card="#\n",
        report_html="<p/>",
        extra_files=export.extra_files,
    )
    assert ONNX_FILE in written.files
    assert load_bundle(dest).metadata.onnx == export.info

    (dest / ONNX_FILE).write_bytes(export.extra_files[ONNX_FILE] + b"\0")
    with pytest.raises(Exception, match=r"model.onnx was altered: expected sha256") as caught:
        verify_bundle(dest)
    assert getattr(caught.value, "file", None) == ONNX_FILE


def test_write_training_bundle_exports_onnx_verified_on_the_holdout(tmp_path: Path) -> None:
    spec = load_spec(IRIS, ["search.strategy=grid", "cv_folds=2", "algorithms=[random_forest]"])
    frame = pd.read_csv(IRIS.parent / "data" / "iris.csv")
    result = train(spec, frame, list(spec.features or []), n_jobs=1)

    metadata = write_training_bundle(result, tmp_path / "bundle", reference_frame=frame)

    assert metadata.onnx is not None and metadata.onnx.file == ONNX_FILE, metadata.onnx
    assert metadata.onnx.rows_checked == result.holdout_rows == len(result.holdout)
    assert metadata.onnx.max_abs_diff is not None and metadata.onnx.max_abs_diff <= 1e-5
    assert ONNX_FILE in metadata.files
    assert verify_bundle(tmp_path / "bundle") == metadata
