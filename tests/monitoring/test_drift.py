"""Online drift: window counts, PSI and Jensen-Shannon distance, the exported series and their labels."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.monitoring.drift import DriftMonitor, js_distance, psi
from modelyard.monitoring.reference import drift_reference
from modelyard.serving.server import ModelServer
from modelyard.settings import MonitoringSettings, ServingSettings, Settings
from modelyard.spec import FeatureSpec, FeatureType

from .conftest import write_drift_bundle

FEATURES = [
    FeatureSpec(name="a", type=FeatureType.NUMERIC),
    FeatureSpec(name="b", type=FeatureType.NUMERIC),
    FeatureSpec(name="colour", type=FeatureType.CATEGORICAL),
]
CLASSES = ["no", "yes"]


def training(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows),
            "b": rng.uniform(0, 10, size=rows),
            "colour": rng.choice(["red", "blue"], size=rows),
        }
    )


def probabilities_of(frame: pd.DataFrame) -> np.ndarray:
    yes = 1.0 / (1.0 + np.exp(-2.0 * frame["a"].to_numpy()))
    return np.column_stack([1.0 - yes, yes])


def reference_stats() -> dict:
    train, holdout = training(4000, 0), training(1000, 1)
    probabilities = probabilities_of(holdout)
    labels = np.where(np.random.default_rng(2).uniform(size=1000) < probabilities[:, 1], "yes", "no")
    drift = drift_reference(
        train, FEATURES, holdout_probabilities=probabilities, holdout_labels=list(labels), classes=CLASSES
    )
    return {"format": "modelyard.reference/v1", "drift": drift}


def observe(monitor: DriftMonitor, frame: pd.DataFrame, *, batch: int = 100) -> None:
    for start in range(0, len(frame), batch):
        part = frame.iloc[start : start + batch]
        numeric = part[["a", "b"]].to_numpy(dtype="float64")
        monitor.observe(
            "m", numeric, {"colour": part["colour"].to_numpy(dtype=object)}, probabilities_of(part)
        )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_psi_and_js_distance_are_zero_for_equal_shares_and_grow_with_the_shift() -> None:
    reference = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(reference, reference) == pytest.approx(0.0)
    assert js_distance(reference * 40, reference) == pytest.approx(0.0)
    shifted = np.array([0.1, 0.2, 0.3, 0.4])
    far = np.array([0.0, 0.0, 0.0, 1.0])
    assert 0 < psi(shifted, reference) < psi(far, reference)
    assert 0 < js_distance(shifted, reference) < js_distance(far, reference) <= 1.0
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_only_the_shifted_feature_drifts() -> None:
    monitor = DriftMonitor(min_rows=500)
    assert monitor.attach("m", "3", reference_stats(), ["a", "b"])
    live = training(3000, 7)
    live["b"] = live["b"] + 4.0
    observe(monitor, live)
    distances = monitor.distances("m")
    assert distances["b"][0] > 0.5 and distances["b"][1] > 0.3
    for name in ("a", "colour", "class", "confidence"):
        assert distances[name][0] < 0.05, name
        assert distances[name][1] < 0.1, name
    estimate = monitor.estimated_accuracy("m")
    assert estimate is not None and 0.6 < estimate < 0.9


def test_exports_gauges_counters_and_reference_shares_with_bounded_labels() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(min_rows=100)
    registry.register(monitor)
    monitor.attach("m", "3", reference_stats(), ["a", "b"])
    observe(monitor, training(1000, 9))
    found = samples(registry)
    assert found[("modelyard_drift_enabled", (("model", "m"), ("version", "3")))] == 1.0
    assert found[("modelyard_drift_window_rows", (("model", "m"), ("version", "3")))] == 1000.0
    assert ("modelyard_drift_psi", (("feature", "a"), ("model", "m"), ("version", "3"))) in found
    assert (
        "modelyard_output_drift_js_distance",
        (("model", "m"), ("output", "class"), ("version", "3")),
    ) in found
    assert ("modelyard_estimated_accuracy", (("model", "m"), ("version", "3"))) in found
    bins = {key: value for key, value in found.items() if key[0] == "modelyard_drift_bin_rows_total"}
    per_feature: dict[str, float] = {}
    for (_, labels), value in bins.items():
        per_feature[dict(labels)["feature"]] = per_feature.get(dict(labels)["feature"], 0.0) + value
    assert per_feature == {"a": 1000.0, "b": 1000.0, "colour": 1000.0}
    assert len(bins) <= 3 * 22  # every label comes from the reference
    shares = [
        v
        for (name, labels), v in found.items()
        if name == "modelyard_drift_reference_share" and dict(labels)["feature"] == "colour"
    ]
    assert sum(shares) == pytest.approx(1.0)


def test_no_distance_below_min_rows() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(min_rows=500)
    registry.register(monitor)
    monitor.attach("m", "3", reference_stats(), ["a", "b"])
    observe(monitor, training(100, 3))
    assert monitor.distances("m") == {}
    assert not any(name == "modelyard_drift_psi" for name, _ in samples(registry))


def test_the_window_forgets_old_slots() -> None:
    monitor = DriftMonitor(window_seconds=0.2, slots=2, min_rows=1)
    monitor.attach("m", "3", reference_stats(), ["a", "b"])
    observe(monitor, training(100, 3))
    assert monitor.window("m") is not None and monitor.window("m")[0] == 100  # type: ignore[index]
    time.sleep(0.35)
    rows, counts = monitor.window("m")  # type: ignore[misc]
    assert rows == 0 and counts.sum() == 0


def test_an_old_bundle_turns_drift_off_with_one_log_line_and_a_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor()
    registry.register(monitor)
    with caplog.at_level(logging.WARNING):
        assert not monitor.attach("old", "1", {"format": "modelyard.reference/v1", "features": {}}, ["a"])
    assert [r.getMessage() for r in caplog.records] == [
        "drift is off for model old@1: its bundle has no drift reference"
    ]
    monitor.observe("old", np.zeros((2, 1)), {}, np.ones((2, 2)) / 2)  # ignored, never raises
    found = samples(registry)
    assert found[("modelyard_drift_enabled", (("model", "old"), ("version", "1")))] == 0.0
    assert not any(name == "modelyard_drift_bin_rows_total" for name, _ in found)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window_seconds must be positive"):
        DriftMonitor(window_seconds=0)


def test_a_wide_schema_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    names = [f"f{i}" for i in range(5)]
    frame = pd.DataFrame({name: np.arange(50.0) for name in names})
    features = [FeatureSpec(name=name, type=FeatureType.NUMERIC) for name in names]
    monitor = DriftMonitor(max_features=2)
    with caplog.at_level(logging.WARNING):
        monitor.attach("wide", "1", {"drift": drift_reference(frame, features)}, names)
    assert "drift tracks the first 2" in caplog.text
    monitor.observe("wide", np.ones((3, 5)), {}, None)
    window = monitor.window("wide")
    assert window is not None and window[1].sum() == 6


def test_heavy_traffic_is_sampled_uniformly_from_the_first_slot_on() -> None:
    monitor = DriftMonitor(window_seconds=6.0, slots=2, min_rows=1, target_rows_per_slot=500)
    monitor.attach("m", "3", reference_stats(), ["a", "b"])
    live = training(20000, 5)

    def next_slot() -> None:  # slots are 3 s of the monotonic clock: room for a slow machine
        time.sleep(3.02 - time.monotonic() % 3.0)

    next_slot()
    observe(monitor, live)
    first = monitor.window("m")
    # the first slot has no previous one to go by: its stride grows once 500 rows are binned
    assert first is not None and 500 <= first[0] <= 5000
    assert monitor.seen_rows("m") == 20000
    assert monitor.distances("m")["a"][0] < 0.1  # the sample still looks like the reference
    next_slot()  # 20000 rows seen last slot, 500 wanted: every 40th row from the start
    observe(monitor, live)
    rows, _ = monitor.window("m")  # type: ignore[misc]
    assert 450 <= rows - first[0] <= 550 and monitor.seen_rows("m") == 40000
    assert monitor.distances("m")["a"][0] < 0.1


@pytest.mark.parametrize("drift", [True, False])
def test_the_drift_setting_switches_the_predictors_drift_metrics(tmp_path: Path, drift: bool) -> None:
    write_drift_bundle(tmp_path / "bundle")
    settings = Settings(
        home=tmp_path,
        serving=ServingSettings(model_dir=tmp_path / "bundle", prediction_log=False),
        monitoring=MonitoringSettings(drift=drift),
    )
    server = ModelServer(settings)
    try:
        names = {name for name, _ in samples(server.metrics.registry)}
    finally:
        server.model.close()
    assert ("modelyard_drift_enabled" in names) is drift
    assert any(name.startswith("modelyard_drift_") for name in names) is drift
