"""The served model on its own: loading a verified bundle, staying not ready with the reason, predicting
through its batcher, and its metadata from the bundle's schema."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelyard.errors import NotReady
from modelyard.serving.features import features_from_instances
from modelyard.serving.model import ServedModel
from modelyard.serving.types import Datatype, TensorMetadata

from .conftest import NUMERIC_CLASSES, numeric_frame


def test_a_verified_bundle_loads_and_predicts_in_class_order(bundles: dict[str, Path]) -> None:
    model = ServedModel("iris", bundles["numeric"], version="3", prefer_onnx=False)
    assert model.load() and model.ready and model.load_error is None
    assert model.platform == "sklearn" and model.runtime_kind == "sklearn"
    frame, _ = numeric_frame(rows=3, seed=5)
    batch = features_from_instances(frame.to_numpy().tolist(), model.schema, 10)
    outcome = asyncio.run(model.predict(batch))
    model.close()
    prediction = outcome.prediction
    assert prediction.probabilities.shape == (3, 3) and np.allclose(prediction.probabilities.sum(axis=1), 1)
    assert prediction.labels == [NUMERIC_CLASSES[i] for i in prediction.probabilities.argmax(axis=1)]
    assert outcome.batch_rows == 3


def test_its_metadata_is_the_bundles_schema(bundles: dict[str, Path]) -> None:
    model = ServedModel("churn", bundles["mixed"])
    model.load()
    assert model.input_metadata() == [
        TensorMetadata("age", Datatype.FP64, [-1]),
        TensorMetadata("plan", Datatype.BYTES, [-1]),
        TensorMetadata("review", Datatype.BYTES, [-1]),
    ]
    assert model.output_metadata()[1] == TensorMetadata("probabilities", Datatype.FP64, [-1, 2])
    model.close()


def test_a_bundle_that_fails_verification_stays_not_ready_and_says_why(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(bundles["numeric"], tmp_path / "bundle")
    (tmp_path / "bundle" / "metadata.json").write_text("{}")
    model = ServedModel("iris", tmp_path / "bundle")
    assert model.load() is False and not model.ready
    assert model.load_error and model.input_metadata() == [] and model.platform == ""
    with pytest.raises(NotReady, match="model 'iris' is not ready: "):
        model.schema  # noqa: B018 (the property raises)
