"""The transport-free data plane on real bundles: metadata, inference, readiness, errors, log, metrics."""

from __future__ import annotations

import asyncio
import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import create_engine, select

from modelyard.bundle import BundleMetadata, write_bundle
from modelyard.errors import InvalidInput, NotFound, NotReady
from modelyard.monitoring.reference import drift_reference
from modelyard.registry import upgrade
from modelyard.registry.packed import logged_columns
from modelyard.registry.tables import Prediction as PredictionRow
from modelyard.serving.dataplane import DataPlane, class_label, strictly_after
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.model import ServedModel
from modelyard.serving.prediction_log import PredictionLog
from modelyard.serving.types import (
    Datatype,
    FeedbackRequest,
    FeedbackResult,
    InferenceRequest,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)
from modelyard.spec import FeatureSpec, FeatureType

from .conftest import NUMERIC_CLASSES, NUMERIC_FEATURES, mixed_frame, numeric_frame


def served(bundle: Path, name: str, **options: Any) -> ServedModel:
    model = ServedModel(name, bundle, version=options.pop("version", "7"), **options)
    model.load()
    return model


def plane(*models: ServedModel, **options: Any) -> DataPlane:
    dataplane = DataPlane(max_request_rows=options.pop("max_request_rows", 100), **options)
    for model in models:
        dataplane.add_model(model)
    return dataplane


def matrix_request(values: np.ndarray, **fields: Any) -> InferenceRequest:
    return InferenceRequest(
        inputs=[Tensor("input-0", Datatype.FP64, values.shape, values.reshape(-1))], **fields
    )


def test_metadata_lists_inputs_and_outputs_from_the_bundle_schema(bundles: dict[str, Path]) -> None:
    dataplane = plane(served(bundles["numeric"], "iris"), served(bundles["mixed"], "churn", version=""))
    iris = dataplane.model_metadata("iris")
    assert iris.name == "iris" and iris.versions == ["7"] and iris.platform == "sklearn"
    assert iris.inputs[0] == TensorMetadata("sepal_length", Datatype.FP64, [-1])
    assert iris.outputs == [
        TensorMetadata("label", Datatype.BYTES, [-1]),
        TensorMetadata("probabilities", Datatype.FP64, [-1, 3]),
    ]
    assert iris.parameters is not None and iris.parameters.classes == NUMERIC_CLASSES
    assert iris.parameters.tensor_input == TensorMetadata("input-0", Datatype.FP64, [-1, 4])
    assert iris.error is None and iris.ready
    churn = dataplane.model_metadata("churn")
    assert churn.versions == []
    assert [(i.name, i.datatype) for i in churn.inputs] == [
        ("age", Datatype.FP64),
        ("plan", Datatype.BYTES),
        ("review", Datatype.BYTES),
    ]
    # mixed features: one input per feature only
    assert churn.parameters is not None and churn.parameters.tensor_input is None
    assert dataplane.server_metadata().extensions == ["binary_tensor_data"]
    assert dataplane.ready()


def test_v2_and_v1_answers_match_the_model(bundles: dict[str, Path]) -> None:
    model = served(bundles["numeric"], "iris")
    dataplane = plane(model)
    frame, _ = numeric_frame(rows=5, seed=3)
    expected = model._runtime.predict_proba(frame)  # type: ignore[union-attr]

    async def scenario() -> tuple[Any, Any]:
        v2 = await dataplane.infer("iris", matrix_request(frame.to_numpy(), id="abc"), request_id="abc")
        v1 = await dataplane.predict_v1("iris", frame.to_dict("records"), request_id="rid2")
        return v2, v1

    v2, v1 = asyncio.run(scenario())
    model.close()
    assert v2.id == "abc" and v2.model_version == "7"
    labels, probabilities = v2.outputs
    assert np.allclose(probabilities.data, expected)
    assert labels.data.tolist() == [NUMERIC_CLASSES[i] for i in expected.argmax(axis=1)]
    assert v1.labels == labels.data.tolist() and np.allclose(v1.probabilities, expected)


def test_mixed_features_per_input_with_missing_values(bundles: dict[str, Path]) -> None:
    model = served(bundles["mixed"], "churn")
    dataplane = plane(model)
    request = InferenceRequest(
        inputs=[
            Tensor("age", Datatype.FP64, (2,), np.array([30.0, math.nan])),
            Tensor("plan", Datatype.BYTES, (2, 1), np.array(["pro", None], dtype=object)),
            Tensor("review", Datatype.BYTES, (2,), np.array(["great lovely", None], dtype=object)),
        ],
        outputs=[RequestedOutput("label")],
    )
    response = asyncio.run(dataplane.infer("churn", request, request_id="r"))
    model.close()
    assert [t.name for t in response.outputs] == ["label"]
    assert response.outputs[0].data.tolist()[0] == "1"  # integer classes are sent as their text
    assert response.binary == [False]


def test_unknown_models_and_versions_are_404(bundles: dict[str, Path]) -> None:
    dataplane = plane(served(bundles["numeric"], "iris"))
    with pytest.raises(NotFound, match=r"model 'nope' is not served here \(served: iris\)"):
        dataplane.model_metadata("nope")
    with pytest.raises(
        NotFound, match="model 'iris' has no version '2' here: this server serves version '7'"
    ):
        dataplane.ready_model("iris", "2")


def test_a_tampered_bundle_is_live_but_not_ready_and_says_why(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["numeric"], tampered)
    (tampered / "model.joblib").write_bytes(b"not the pickle that was trained")
    model = served(tampered, "iris")
    dataplane = plane(model)
    assert not model.ready and not dataplane.ready() and dataplane.live()
    assert model.load_error is not None and "model.joblib was altered" in model.load_error
    metadata = dataplane.model_metadata("iris")
    assert metadata.ready is False and metadata.parameters is None
    assert metadata.error is not None and "model.joblib was altered" in metadata.error
    assert metadata.inputs == [] and metadata.platform == ""
    with pytest.raises(NotReady, match=r"model 'iris' is not ready: .*model\.joblib was altered") as caught:
        asyncio.run(dataplane.infer("iris", matrix_request(np.ones((1, 4))), request_id="r"))
    assert caught.value.status_code == 503
    assert model.load() is False  # cheap and idempotent after a failure


def test_a_missing_value_the_model_cannot_impute_is_a_400_and_any_other_refusal_a_500(
    tmp_path: Path,
) -> None:
    # A bare LogisticRegression (no imputer, unlike the training pipeline): NaN reaches it.
    frame, labels = numeric_frame()
    estimator = LogisticRegression(max_iter=300).fit(frame, labels)
    metadata = BundleMetadata(
        name="bare",
        algorithm="logistic_regression",
        target="species",
        features=[FeatureSpec(name=c, type=FeatureType.NUMERIC) for c in frame.columns],
        classes=NUMERIC_CLASSES,
        dataset_fingerprint="sha256:t",
    )
    write_bundle(tmp_path / "bare", model=estimator, metadata=metadata, model_card="", report_html="")
    model = served(tmp_path / "bare", "bare")
    dataplane = plane(model)
    message = "feature 'sepal_width' row 0 is missing, and this model cannot impute missing values"
    with pytest.raises(InvalidInput, match=message):
        asyncio.run(dataplane.predict_v1("bare", [[1.0, None, 2.0, 3.0]], request_id="r"))
    model.close()


class RefusingRuntime:
    """A runtime that fails whatever it is given: a fault of the model, not of the request."""

    kind = "sklearn"

    def predict_proba(self, frame: Any) -> Any:
        raise ValueError("internal detail the client must not see")


def test_a_model_that_raises_on_complete_input_is_a_server_fault(bundles: dict[str, Path]) -> None:
    from modelyard.serving.status import failure

    model = served(bundles["numeric"], "iris")
    model._runtime = RefusingRuntime()  # type: ignore[assignment]  # our own class, not a library's
    model._predict_numeric = None
    dataplane = plane(model)
    with pytest.raises(ValueError, match="internal detail") as caught:
        asyncio.run(dataplane.predict_v1("iris", [[1.0, 2.0, 3.0, 4.0]], request_id="r"))
    model.close()
    answer = failure(caught.value, "r")
    assert answer.http_status == 500 and answer.grpc_code == "INTERNAL"
    assert answer.response.error == "internal error" and answer.response.request_id == "r"


def test_predictions_reach_the_log_and_the_metrics(bundles: dict[str, Path], tmp_path: Path) -> None:
    metrics = ServingMetrics()
    database = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(database)
    log = PredictionLog(
        database,
        spool_dir=tmp_path / "spool",
        queue_size=1000,
        batch_size=10,
        flush_interval_s=0.05,
        spool_max_bytes=1 << 20,
        metrics=metrics,
    )
    model = served(bundles["mixed"], "churn", batch_observer=lambda n, _s: metrics.observe_batch(n))
    dataplane = plane(model, metrics=metrics, prediction_log=log)
    frame, _ = mixed_frame(rows=3, seed=1)

    async def scenario() -> bool:
        await log.start()
        await dataplane.predict_v1("churn", frame.to_dict("records"), request_id="req-1")
        await asyncio.sleep(0)  # the log is fed in a callback after the answer
        written = await log.flush()
        await log.stop()
        return written

    assert asyncio.run(scenario())
    model.close()
    engine = create_engine(database)
    with engine.connect() as connection:
        rows = connection.execute(select(PredictionRow)).all()
    engine.dispose()
    # One row for the request, its values column by column.
    assert [(r.request_id, r.rows, r.model, r.version) for r in rows] == [("req-1", 3, "churn", "7")]
    [logged] = rows
    features = logged_columns(logged.features, logged.packed_features)
    probabilities = logged_columns(logged.probabilities, logged.packed_probabilities)
    assert {name: values[0] for name, values in features.items()} == frame.iloc[0].to_dict()
    assert all(len(values) == 3 for values in features.values())
    assert set(probabilities) == {"0", "1"} and all(len(p) == 3 for p in probabilities.values())
    assert len(logged.labels) == 3 and set(logged.labels) <= {"0", "1"}
    exposition = metrics.render()[0].decode()
    assert (
        'modelyard_request_stage_seconds_count{model="churn",stage="predict",version="7"} 1.0' in exposition
    )
    assert "modelyard_batch_rows_count 1.0" in exposition
    assert 'modelyard_model_info{algorithm="logistic_regression",model="churn"' in exposition


def test_feedback_labels_match_classes_by_value_or_text() -> None:
    assert class_label("1", [0, 1]) == 1
    assert class_label("setosa", NUMERIC_CLASSES) == "setosa"
    with pytest.raises(InvalidInput, match="label 'rose' is not one of the model's classes: 'setosa'"):
        class_label("rose", NUMERIC_CLASSES)


def test_a_pickle_that_cannot_predict_is_reported(tmp_path: Path) -> None:
    # Verified checksums, but the pickle holds something that cannot predict: not ready, with the reason.
    frame, _ = numeric_frame()
    metadata = BundleMetadata(
        name="odd",
        algorithm="logistic_regression",
        target="species",
        features=[FeatureSpec(name=c, type=FeatureType.NUMERIC) for c in frame.columns],
        classes=NUMERIC_CLASSES,
        dataset_fingerprint="sha256:t",
    )
    write_bundle(tmp_path / "odd", model={"not": "a model"}, metadata=metadata, model_card="", report_html="")
    model = served(tmp_path / "odd", "odd")
    assert not model.ready and "has no predict()" in (model.load_error or "")


@pytest.mark.parametrize("prefer_onnx", [True, False], ids=["onnx", "sklearn"])
@pytest.mark.parametrize("extreme", [1e308, -1e308, 1.7976931348623157e308])
def test_a_row_the_model_cannot_score_is_a_400_naming_row_and_feature_on_every_runtime(
    bundles: dict[str, Path], prefer_onnx: bool, extreme: float
) -> None:
    # Both runtimes answer NaN probabilities for these finite rows (their arithmetic overflows).
    sink = RecordingSink()
    model = served(bundles["numeric-onnx"], "iris", prefer_onnx=prefer_onnx)
    assert model.runtime_kind == ("onnx" if prefer_onnx else "sklearn")
    dataplane = plane(model, prediction_log=sink)
    good = [5.1, 3.5, 1.4, 0.2]
    rows = np.array([good, good, [extreme] * 4, good])
    message = r"row 2 cannot be scored: feature '(sepal|petal)_(length|width)' is -?1.*e\+308, beyond what"
    with pytest.raises(InvalidInput, match=message):
        asyncio.run(dataplane.infer("iris", matrix_request(rows), request_id="r"))
    with pytest.raises(InvalidInput, match="row 0 cannot be scored"):
        asyncio.run(dataplane.predict_v1("iris", [[extreme] * 4], request_id="r1"))
    answer = asyncio.run(dataplane.predict_v1("iris", [good], request_id="ok"))
    assert np.isfinite(answer.probabilities).all()
    model.close()
    assert sink.request_ids() == ["ok"]  # nothing unscorable was logged


class OverflowingRuntime:
    """Refuses (raises) a row holding a value beyond 1e300, as scikit-learn's input checks do."""

    kind = "sklearn"

    def predict_proba(self, frame: Any) -> Any:
        values = frame.to_numpy(dtype=float)
        if (np.abs(values) > 1e300).any():
            raise ValueError("Input X contains infinity or a value too large for dtype('float64').")
        return np.full((len(values), 3), 1 / 3)


def test_a_row_the_model_raises_for_is_found_by_bisection_and_named(bundles: dict[str, Path]) -> None:
    model = served(bundles["numeric"], "iris")
    model._runtime = OverflowingRuntime()  # type: ignore[assignment]  # our own class, not a library's
    model._predict_numeric = None
    dataplane = plane(model)
    rows = np.array([[1.0, 2.0, 3.0, 4.0]] * 9)
    rows[6, 2] = -1e308
    with pytest.raises(InvalidInput, match=r"row 6 cannot be scored: feature 'petal_length' is -1e\+308"):
        asyncio.run(dataplane.infer("iris", matrix_request(rows), request_id="r"))
    model.close()


class BatchSizeRuntime:
    """Fails (raises) for any call of more than four rows, whatever the values: the model's fault."""

    kind = "sklearn"

    def predict_proba(self, frame: Any) -> Any:
        if len(frame) > 4:
            raise ValueError("out of memory for this batch")
        return np.full((len(frame), 3), 1 / 3)


def test_a_fault_of_the_model_is_never_blamed_on_a_row(bundles: dict[str, Path]) -> None:
    model = served(bundles["numeric"], "iris")
    model._runtime = BatchSizeRuntime()  # type: ignore[assignment]  # our own class, not a library's
    model._predict_numeric = None
    dataplane = plane(model)
    rows = np.array([[1.0, 2.0, 3.0, 4.0]] * 9)
    with pytest.raises(ValueError, match="out of memory for this batch"):
        asyncio.run(dataplane.infer("iris", matrix_request(rows), request_id="r"))
    model.close()


class RecordingSink:
    """A prediction sink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.submissions: list[list[str]] = []  # the request ids of each submit()

    def submit(self, records: Any) -> None:
        self.records.extend(records)
        self.submissions.append([record.request_id for record in records])

    async def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def request_ids(self) -> list[str]:
        return sorted({record.request_id for record in self.records})


def test_the_requests_of_one_micro_batch_are_recorded_together_each_with_its_own_row(
    bundles: dict[str, Path],
) -> None:
    metrics = ServingMetrics()
    sink = RecordingSink()
    model = served(bundles["numeric"], "iris", max_batch_wait_s=0.5, max_batch_size=8)
    dataplane = plane(model, metrics=metrics, prediction_log=sink)
    assert metrics.drift is not None
    frame, _ = numeric_frame(rows=200, seed=3)
    reference = {"drift": drift_reference(frame, NUMERIC_FEATURES)}
    assert metrics.drift.attach("iris", "7", reference, model.schema.numeric_names)
    rows = frame.to_numpy()[:8]

    async def scenario() -> list[Any]:
        answers = await asyncio.gather(
            *(dataplane.infer("iris", matrix_request(rows[i : i + 1]), request_id=f"r{i}") for i in range(8))
        )
        await asyncio.sleep(0)  # recorded in a callback once the callers have their answers
        return answers

    answers = asyncio.run(scenario())
    model.close()
    # One submission for the eight requests the batcher scored together, each record its own request's.
    assert sink.submissions == [[f"r{i}" for i in range(8)]]
    for i, record in enumerate(sink.records):
        assert record.rows == 1
        np.testing.assert_array_equal(record.features.matrix, rows[i : i + 1])
        [label] = answers[i].outputs[0].data
        assert list(record.labels) == [label]
    # The metrics and the drift window count every row once.
    exposition = metrics.render()[0].decode()
    assert 'modelyard_request_stage_seconds_count{model="iris",stage="queue",version="7"} 8.0' in exposition
    assert 'modelyard_prediction_confidence_count{model="iris",version="7"} 8.0' in exposition
    assert metrics.drift.seen_rows("iris") == 8
    window = metrics.drift.window("iris")
    assert window is not None and window[0] == 8


def answer_on_a_loop_that_stops(dataplane: DataPlane, rows: np.ndarray, request_id: str) -> None:
    """Answer ``rows`` on an event loop stopped in the turn that scheduled the answer's recording, which
    therefore never runs."""
    stopped = asyncio.new_event_loop()

    async def answer_and_stop() -> None:
        await dataplane.infer("iris", matrix_request(rows), request_id=request_id)
        stopped.stop()

    answered = stopped.create_task(answer_and_stop())
    stopped.run_forever()
    stopped.close()
    assert answered.done()


def test_answers_a_stopped_loop_never_recorded_are_recorded_with_the_next_ones(
    bundles: dict[str, Path],
) -> None:
    sink = RecordingSink()
    model = served(bundles["numeric"], "iris")
    dataplane = plane(model, prediction_log=sink)
    rows = numeric_frame(rows=2, seed=4)[0].to_numpy()
    answer_on_a_loop_that_stops(dataplane, rows[:1], "first")
    assert sink.records == []

    async def next_request() -> None:
        await dataplane.infer("iris", matrix_request(rows[1:]), request_id="second")
        await asyncio.sleep(0)

    asyncio.run(next_request())
    model.close()
    assert sink.submissions == [["first", "second"]]


class SinkWrittenOnFlush(RecordingSink):
    """A sink that writes what it was given only when flushed, as the prediction log does."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    async def flush(self, timeout_s: float = 10.0) -> bool:
        self.written = [record.request_id for record in self.records]
        return True


def test_feedback_for_an_answer_not_yet_recorded_records_and_writes_it_before_asking_again(
    bundles: dict[str, Path],
) -> None:
    """The answer's recording was lost with its loop: feedback for it records what is pending, flushes the
    log, and finds the prediction there."""
    sink = SinkWrittenOnFlush()
    asked: list[str] = []

    def feedback_store(*, model: str, request_id: str, label: Any, row: int) -> FeedbackResult:
        asked.append(request_id)
        if request_id not in sink.written:
            raise NotFound(f"no logged prediction with request id {request_id!r}")
        moment = datetime(2026, 12, 4, tzinfo=UTC)
        return FeedbackResult(model, "7", request_id, row, str(label), str(label), True, None, moment)

    model = served(bundles["numeric"], "iris")
    dataplane = plane(model, prediction_log=sink, feedback_store=feedback_store)
    rows = numeric_frame(rows=1, seed=6)[0].to_numpy()
    answer_on_a_loop_that_stops(dataplane, rows, "pending")
    assert sink.records == []
    result = asyncio.run(dataplane.feedback("iris", FeedbackRequest(request_id="pending", label="setosa")))
    model.close()
    assert result.request_id == "pending" and sink.submissions == [["pending"]]
    assert asked == ["pending", "pending"] and sink.written == ["pending"]


class RefusingSink(RecordingSink):
    """A sink that breaks its promise never to raise."""

    def submit(self, records: Any) -> None:
        raise RuntimeError("the sink is broken")


class MetricsThatFailToCount(ServingMetrics):
    def observe_predictions(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cannot count")


@pytest.mark.parametrize("broken", ["sink", "metrics"])
def test_a_failure_to_log_spares_the_metrics_and_one_to_count_spares_the_log(
    bundles: dict[str, Path], broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = MetricsThatFailToCount() if broken == "metrics" else ServingMetrics()
    sink = RefusingSink() if broken == "sink" else RecordingSink()
    model = served(bundles["numeric"], "iris")
    dataplane = plane(model, metrics=metrics, prediction_log=sink)
    rows = numeric_frame(rows=1, seed=5)[0].to_numpy()

    async def scenario() -> None:
        await dataplane.infer("iris", matrix_request(rows), request_id="only")
        await asyncio.sleep(0)

    with caplog.at_level("ERROR", logger="modelyard.serving.dataplane"):
        asyncio.run(scenario())
    model.close()
    exposition = metrics.render()[0].decode()
    stage_counted = 'modelyard_request_stage_seconds_count{model="iris",stage="queue",version="7"} 1.0'
    if broken == "sink":
        assert stage_counted in exposition
        assert 'modelyard_prediction_confidence_count{model="iris",version="7"} 1.0' in exposition
        assert "could not log the predictions of requests only" in caplog.text
    else:
        assert sink.submissions == [["only"]]
        assert "could not count the predictions of requests only" in caplog.text


def test_a_prediction_is_logged_strictly_after_the_previous_one() -> None:
    # Two predictions under one reused id are told apart by their time: within one clock tick as well.
    tick = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    assert strictly_after(tick, tick) == tick + timedelta(microseconds=1)
    assert strictly_after(tick, tick - timedelta(seconds=5)) == tick + timedelta(
        microseconds=1
    )  # clock set back
    assert strictly_after(tick, tick + timedelta(seconds=1)) == tick + timedelta(seconds=1)
