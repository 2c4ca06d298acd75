"""Live accuracy: predictions joined to feedback over a matured window, the CBPE estimate, the gauges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, insert

from modelyard.monitoring.accuracy import AccuracyCollector, estimate_accuracy, live_accuracy, macro_f1
from modelyard.monitoring.reference import drift_reference
from modelyard.registry.db import create_engine_for, upgrade
from modelyard.registry.tables import Feedback, Prediction

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()


def log(
    engine: Engine, rows: list[tuple[str, str, float, str | None, timedelta]], version: str = "1"
) -> None:
    """rows: (request id, predicted, confidence, true label or None, age)."""
    with engine.begin() as connection:
        for request_id, predicted, confidence, truth, age in rows:
            other = "b" if predicted == "a" else "a"
            connection.execute(
                insert(Prediction).values(
                    request_id=request_id, model="m", version=version, rows=1, features={},
                    labels=[predicted], probabilities={predicted: [confidence], other: [1 - confidence]},
                    latency_ms=1.0,
                    created_at=NOW - age,
                )
            )  # fmt: skip
            if truth is not None:
                connection.execute(
                    insert(Feedback).values(request_id=request_id, row=0, model="m", label=truth)
                )


def test_macro_f1_matches_its_definition() -> None:
    assert macro_f1(["a", "a", "b"], ["a", "a", "b"]) == 1.0
    # a: precision 1/2, recall 1/1 -> 2/3; b: 0 -> macro 1/3
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(1 / 3)


def test_accuracy_f1_counts_and_coverage_of_a_window(engine: Engine) -> None:
    log(
        engine,
        [
            ("r1", "a", 0.9, "a", timedelta(hours=2)),
            ("r2", "a", 0.9, "b", timedelta(hours=2)),
            ("r3", "b", 0.8, "b", timedelta(hours=3)),
            ("r4", "b", 0.8, None, timedelta(hours=3)),
            ("r5", "a", 0.9, "a", timedelta(minutes=10)),  # too recent for the window below
            ("r6", "a", 0.9, "a", timedelta(days=3)),  # too old
        ],
    )
    window = live_accuracy(engine, "m", since=NOW - timedelta(days=1), until=NOW - timedelta(hours=1))
    assert (window.predicted_rows, window.labelled_rows) == (4, 3)
    assert window.coverage == pytest.approx(0.75)
    assert window.accuracy == pytest.approx(2 / 3)
    assert window.macro_f1 == pytest.approx(macro_f1(["a", "b", "b"], ["a", "a", "b"]))
    assert window.label_counts == {"a": 1, "b": 2}
    assert window.estimated_accuracy is None  # no reference given
    other = live_accuracy(engine, "m", since=NOW - timedelta(days=1), until=NOW, version="2")
    assert other.predicted_rows == 0 and other.accuracy is None


def test_a_label_grades_only_the_prediction_it_was_given_for_when_the_id_is_reused(engine: Engine) -> None:
    with engine.begin() as connection:
        first, reused = NOW - timedelta(hours=3), NOW - timedelta(hours=2)
        feedback = NOW - timedelta(hours=2.5)  # between the two
        for label, created_at in (("a", first), ("b", reused)):
            connection.execute(
                insert(Prediction).values(
                    request_id="again", model="m", version="1", rows=1, features={}, labels=[label],
                    probabilities={"a": [0.5], "b": [0.5]}, latency_ms=1.0, created_at=created_at,
                )
            )  # fmt: skip
        connection.execute(
            insert(Feedback).values(request_id="again", row=0, model="m", label="a", created_at=feedback)
        )
    window = live_accuracy(engine, "m", since=NOW - timedelta(days=1), until=NOW - timedelta(hours=1))
    assert (window.predicted_rows, window.labelled_rows) == (2, 1)
    assert window.accuracy == 1.0  # the label graded the first prediction ("a"), not the reused id's "b"


def test_labels_grade_their_rows_of_a_request_and_each_version_that_scored_it(engine: Engine) -> None:
    made = NOW - timedelta(hours=3)
    with engine.begin() as connection:
        # The served version and a candidate scored the same 4-row request under one id.
        for version, labels in (("1", ["a", "a", "b", "b"]), ("2", ["a", "b", "b", "b"])):
            connection.execute(
                insert(Prediction).values(
                    request_id="batch", model="m", version=version, rows=4, features={"x": [1, 2, 3, None]},
                    labels=labels, probabilities={"a": [0.9, 0.6, 0.2, 0.4], "b": [0.1, 0.4, 0.8, 0.6]},
                    latency_ms=1.0, created_at=made,
                )
            )  # fmt: skip
        truth = {0: "a", 1: "b", 3: "b"}  # row 2 has no label
        connection.execute(
            insert(Feedback),
            [{"request_id": "batch", "row": row, "model": "m", "label": t} for row, t in truth.items()],
        )
    since, until = NOW - timedelta(days=1), NOW - timedelta(hours=1)
    served = live_accuracy(engine, "m", since=since, until=until, version="1")
    assert (served.predicted_rows, served.labelled_rows) == (4, 3)
    assert served.accuracy == pytest.approx(2 / 3)  # rows 0 and 3 right, row 1 wrong
    assert served.label_counts == {"a": 1, "b": 2}
    candidate = live_accuracy(engine, "m", since=since, until=until, version="2")
    assert (candidate.predicted_rows, candidate.labelled_rows, candidate.accuracy) == (4, 3, 1.0)
    both = live_accuracy(engine, "m", since=since, until=until)
    assert (both.predicted_rows, both.labelled_rows) == (8, 6)
    # The estimate reads only the unlabelled row 2 (confidence 0.8) of each version.
    estimated = live_accuracy(
        engine, "m", since=since, until=until, version="1", reference_stats=reference_stats()
    )
    assert estimated.estimated_accuracy == estimate_accuracy(
        reference_stats()["drift"], [{"a": 0.2, "b": 0.8}]
    )


def test_a_backwards_window_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="the window must end after it starts"):
        live_accuracy(engine, "m", since=NOW, until=NOW - timedelta(hours=1))


def reference_stats() -> dict:
    import pandas as pd

    from modelyard.spec import FeatureSpec, FeatureType

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, size=2000)
    correct = rng.uniform(size=2000) < confidence  # calibrated by construction
    probabilities = np.column_stack([confidence, 1 - confidence])
    labels = np.where(correct, "a", "b")
    frame = pd.DataFrame({"x": rng.normal(size=100)})
    drift = drift_reference(
        frame,
        [FeatureSpec(name="x", type=FeatureType.NUMERIC)],
        holdout_probabilities=probabilities,
        holdout_labels=list(labels),
        classes=["a", "b"],
    )
    return {"drift": drift}


def test_the_cbpe_estimate_follows_the_calibrated_confidence() -> None:
    reference = reference_stats()["drift"]
    sure = estimate_accuracy(reference, [{"a": 0.97, "b": 0.03}] * 50)
    unsure = estimate_accuracy(reference, [{"a": 0.55, "b": 0.45}] * 50)
    assert sure is not None and unsure is not None
    assert sure == pytest.approx(0.97, abs=0.06) and unsure == pytest.approx(0.55, abs=0.08)
    assert estimate_accuracy(reference, []) is None
    assert estimate_accuracy({"features": {}}, [{"a": 1.0}]) is None


def test_the_collector_exports_a_matured_window_and_an_estimate(engine: Engine) -> None:
    rows = [(f"r{i}", "a", 0.95, "a" if i % 4 else "b", timedelta(hours=2)) for i in range(40)]
    rows += [(f"u{i}", "a", 0.95, None, timedelta(hours=2)) for i in range(10)]
    log(engine, rows)
    collector = AccuracyCollector(
        engine, "m", "1", gate=0.8, classes=["a", "b"], reference_stats=reference_stats(), min_labels=30
    )
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'modelyard_accuracy_gate{model="m",version="1"} 0.8' in text
    assert "modelyard_live_accuracy" not in text  # nothing refreshed yet
    collector.refresh(now=NOW)
    text = generate_latest(registry).decode()
    labels = 'model="m",version="1",window="24h"'
    assert f"modelyard_live_accuracy{{{labels}}} 0.75" in text
    assert f"modelyard_live_predicted_rows{{{labels}}} 50.0" in text
    assert f"modelyard_live_labelled_rows{{{labels}}} 40.0" in text
    assert f"modelyard_live_label_coverage{{{labels}}} 0.8" in text
    assert f'modelyard_live_label_rows{{class="b",{labels}}} 10.0' in text
    assert "modelyard_live_macro_f1" in text and "modelyard_live_estimated_accuracy" in text


def test_too_few_labels_export_counts_but_no_accuracy(engine: Engine) -> None:
    log(engine, [("r1", "a", 0.9, "a", timedelta(hours=2))])
    collector = AccuracyCollector(engine, "m", "1", gate=0.8, min_labels=30)
    collector.refresh(now=NOW)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert "modelyard_live_labelled_rows" in text and "modelyard_live_accuracy{" not in text


def test_the_refresh_thread_survives_a_broken_database(tmp_path: Path) -> None:
    broken = create_engine_for(f"sqlite:///{tmp_path / 'missing' / 'nothing.db'}")
    collector = AccuracyCollector(broken, "m", "1", gate=0.8, refresh_seconds=0.05)
    collector.start()
    try:
        import time

        time.sleep(0.2)
        assert collector.latest is None  # each refresh failed, and was logged, not raised
    finally:
        collector.stop()
