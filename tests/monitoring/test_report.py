"""The monitoring report: drift table with histograms, prediction mix over time, live accuracy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert

from modelyard.monitoring.report import build_report, render_html
from modelyard.registry.db import create_engine_for, upgrade
from modelyard.registry.tables import Feedback, Prediction

from .conftest import frame, write_drift_bundle

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def reference_stats(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_drift_bundle(tmp_path_factory.mktemp("bundle") / "b").reference_stats


def log_rows(
    engine: Engine, shift: float = 3.0, rows: int = 600, per_request: int = 1, shadow: str | None = None
) -> None:
    """``rows`` logged rows, ``per_request`` to a request; the first 100 rows have feedback. With
    ``shadow``, a shadow candidate of that version scored every request too, predicting "no" for every
    row (the stable version predicts "yes" for two rows in three)."""
    live, _ = frame(rows, 21)
    live["f2"] = live["f2"] + shift
    rng = np.random.default_rng(0)
    with engine.begin() as connection:
        for start in range(0, rows, per_request):
            request = live.iloc[start : start + per_request].to_dict(orient="list")
            labels, probabilities = [], {"yes": [], "no": []}  # type: ignore[var-annotated]
            for i in range(start, start + len(request["f2"])):
                yes = float(rng.uniform(0.5, 1.0))
                labels.append("yes" if i % 3 else "no")
                probabilities["yes"].append(yes if i % 3 else 1 - yes)
                probabilities["no"].append(1 - yes if i % 3 else yes)
            connection.execute(
                insert(Prediction).values(
                    request_id=f"r{start}", model="drifty", version="1", rows=len(labels), features=request,
                    labels=labels, probabilities=probabilities, latency_ms=1.0,
                    created_at=NOW - timedelta(minutes=2 * start + 1),
                )
            )  # fmt: skip
            if shadow is not None:
                connection.execute(
                    insert(Prediction).values(
                        request_id=f"r{start}", model="drifty", version=shadow, rows=len(labels),
                        features=request, labels=["no"] * len(labels),
                        probabilities={"yes": [0.1] * len(labels), "no": [0.9] * len(labels)},
                        latency_ms=1.0, created_at=NOW - timedelta(minutes=2 * start + 1), answered=False,
                    )
                )  # fmt: skip
            labelled = [row for row in range(len(labels)) if start + row < 100]
            if labelled:
                connection.execute(
                    insert(Feedback),
                    [
                        {"request_id": f"r{start}", "row": row, "model": "drifty", "label": "yes"}
                        for row in labelled
                    ],
                )


@pytest.mark.parametrize("per_request", [1, 8], ids=["single-rows", "8-row-requests"])
def test_the_report_finds_the_shifted_feature_and_counts_the_mix_and_labels(
    engine: Engine, reference_stats: dict, per_request: int
) -> None:
    log_rows(engine, per_request=per_request)
    report = build_report(
        engine, "drifty", since=timedelta(hours=24), reference_stats=reference_stats, now=NOW
    )
    assert report.rows == 600 and report.drift_enabled
    by_name = {d.name: d for d in report.drift}
    assert report.drift[0].name == "f2" and by_name["f2"].psi > 1.0
    assert all(by_name[name].psi < 0.2 for name in ("f0", "f1", "f3"))
    assert by_name["f2"].current[-2] > 0.3 and by_name["f2"].reference[-2] == 0.0  # above the training max
    assert set(by_name) >= {"class", "confidence"}
    assert len(report.buckets) == 24 and sum(sum(counts) for counts in report.mix.values()) == 600
    assert sum(report.mix["yes"]) == 400
    assert report.accuracy is not None
    assert (report.accuracy.predicted_rows, report.accuracy.labelled_rows) == (600, 100)
    assert report.accuracy.estimated_accuracy is not None
    page = render_html(report)
    assert page.startswith("<!doctype html>") and "f2" in page and "class='warn'" in page
    assert "ESTIMATED accuracy" in page
    document = json.loads(json.dumps(report.to_dict()))
    assert document["drift"][0]["name"] == "f2" and document["accuracy"]["labelled_rows"] == 100


def test_a_shadow_candidates_rows_count_only_in_its_own_versions_report(
    engine: Engine, reference_stats: dict
) -> None:
    log_rows(engine, per_request=8, shadow="2")
    every = build_report(
        engine, "drifty", since=timedelta(hours=24), reference_stats=reference_stats, now=NOW
    )
    # What the clients got: each request once, the stable version's classes, its labels graded once.
    assert every.rows == 600 and sum(sum(counts) for counts in every.mix.values()) == 600
    assert sum(every.mix["yes"]) == 400
    assert every.accuracy is not None
    assert (every.accuracy.predicted_rows, every.accuracy.labelled_rows) == (600, 100)
    assert every.accuracy.accuracy == pytest.approx(66 / 100)  # rows 0..99: "yes" but for every third
    # The candidate's own report still grades its rows.
    candidate = build_report(
        engine, "drifty", since=timedelta(hours=24), version="2", reference_stats=reference_stats, now=NOW
    )
    assert candidate.rows == 600 and sum(candidate.mix["no"]) == 600
    assert candidate.accuracy is not None
    assert (candidate.accuracy.labelled_rows, candidate.accuracy.accuracy) == (100, 0.0)


def test_the_report_reads_at_most_max_rows_newest_first(engine: Engine, reference_stats: dict) -> None:
    log_rows(engine, per_request=8)
    report = build_report(
        engine, "drifty", since=timedelta(hours=24), reference_stats=reference_stats, now=NOW, max_rows=20
    )
    # 20 rows: the two newest requests whole, and the first 4 rows of the third
    assert report.rows == 20 and sum(sum(counts) for counts in report.mix.values()) == 20
    assert {d.name: d for d in report.drift}["f2"].rows == 20


def test_without_a_reference_the_report_says_drift_is_off(engine: Engine) -> None:
    log_rows(engine, rows=10)
    report = build_report(engine, "drifty", since=timedelta(hours=1), reference_stats={}, now=NOW)
    assert not report.drift_enabled and report.drift == []
    assert "Drift is off for this model" in render_html(report)


def test_an_empty_window_and_a_bad_duration(engine: Engine, reference_stats: dict) -> None:
    report = build_report(
        engine, "drifty", since=timedelta(hours=1), reference_stats=reference_stats, now=NOW
    )
    assert report.rows == 0 and "No predictions in this window" in render_html(report)
    with pytest.raises(ValueError, match="--since must be a positive duration"):
        build_report(engine, "drifty", since=timedelta(0))
