"""PredictionLog against real databases: batching, flush, spooling while Postgres is down or not migrated,
replay, bounds.

The kill test runs its own PostgreSQL server (in its own data folder) so that stopping it cannot
disturb the session's shared server. The log never migrates: the tests run `modelyard db upgrade`'s
``upgrade`` first, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, inspect, select

from modelyard.registry import create_engine_for, upgrade
from modelyard.registry.db import redact
from modelyard.registry.packed import logged_columns
from modelyard.registry.tables import Prediction
from modelyard.serving.features import MatrixColumns
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.prediction_log import DatabaseState, PredictionLog, PredictionRecord
from modelyard.serving.prediction_log.records import spool_line, table_row
from modelyard.serving.prediction_log.writer import PACK_MIN_ROWS
from modelyard.serving.sink import PredictionSink
from modelyard.settings import Settings

from ..conftest import PostgresService

MOMENT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def record(request_id: str, rows: int = 1, **overrides: Any) -> PredictionRecord:
    """One answered request of ``rows`` alike rows."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "model": "iris",
        "version": "3",
        "rows": rows,
        "features": {"sepal_length": [5.1] * rows, "petal_width": [0.2] * rows, "color": ["red"] * rows},
        "labels": ["setosa"] * rows,
        "probabilities": {"setosa": [0.9] * rows, "versicolor": [0.07] * rows, "virginica": [0.03] * rows},
        "latency_ms": 0.8,
        "created_at": MOMENT,
    }
    fields.update(overrides)
    return PredictionRecord(**fields)


def stored(url: str) -> list[Any]:
    """Every row of the predictions table, in insertion order."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(Prediction.__table__).order_by(Prediction.id)).all())
    finally:
        engine.dispose()


def dropped_metric(metrics: ServingMetrics, reason: str) -> float:
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.endswith("_log_dropped_total") and sample.labels == {"reason": reason}:
                return sample.value
    raise AssertionError(f"no dropped sample for {reason}")


def metric(metrics: ServingMetrics, sample_name: str) -> float:
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == sample_name:
                return sample.value
    raise AssertionError(f"no sample {sample_name}")


def tables(url: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def migrated_sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    return url


def unreachable_url(tmp_path: Path) -> str:
    """A Postgres URL whose socket folder has no server: connections are refused at once."""
    return f"postgresql://postgres@/nowhere?host={tmp_path / 'no-server-here'}"


def new_log(url: str, spool_dir: Path, **overrides: Any) -> PredictionLog:
    options: dict[str, Any] = {
        "spool_dir": spool_dir,
        "queue_size": 10_000,
        "batch_size": 100,
        "flush_interval_s": 0.05,
        "spool_max_bytes": 1 << 20,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
    }
    options.update(overrides)
    return PredictionLog(url, **options)


# ---------------------------------------------------------------- writing


def test_records_land_in_the_table_with_every_field(database_url: str, tmp_path: Path) -> None:
    metrics = ServingMetrics()
    log = new_log(database_url, tmp_path / "spool", metrics=metrics)
    naive_moment = datetime(2026, 11, 23, 13, 30)  # naive timestamps are taken as UTC
    numeric = np.array([[5.1, np.nan], [np.inf, 1.5]])  # the data plane hands strided column views

    async def main() -> bool:
        await log.start()
        log.submit(
            [
                record("req-1"),
                record(
                    "req-2",
                    2,
                    features={
                        "sepal_length": numeric[:, 0],
                        "petal_width": numeric[:, 1],
                        "n": np.array([3, 4]),
                        "color": np.array(["red", None], dtype=object),
                    },
                    labels=np.array([2, 0]),
                    probabilities={"0": np.array([0.1, 0.9]), "2": np.array([0.9, 0.1])},
                    latency_ms=np.float64(2.5),
                    created_at=naive_moment,
                ),
            ]
        )
        flushed = await log.flush()
        await log.stop()
        return flushed

    assert asyncio.run(main()) is True
    rows = stored(database_url)
    assert [(row.request_id, row.model, row.version, row.rows, row.labels) for row in rows] == [
        ("req-1", "iris", "3", 1, ["setosa"]),
        ("req-2", "iris", "3", 2, ["2", "0"]),
    ]
    assert rows[0].features == {"sepal_length": [5.1], "petal_width": [0.2], "color": ["red"]}
    assert rows[0].probabilities == {"setosa": [0.9], "versicolor": [0.07], "virginica": [0.03]}
    assert rows[0].latency_ms == 0.8
    assert rows[0].created_at.replace(tzinfo=UTC) == MOMENT
    # NaN and infinity are stored as null (JSON has neither); numpy values as plain numbers.
    assert rows[1].features == {
        "sepal_length": [5.1, None],
        "petal_width": [None, 1.5],
        "n": [3, 4],
        "color": ["red", None],
    }
    assert rows[1].probabilities == {"0": [0.1, 0.9], "2": [0.9, 0.1]}
    assert rows[1].latency_ms == 2.5
    assert rows[1].created_at.replace(tzinfo=UTC) == naive_moment.replace(tzinfo=UTC)
    assert (log.written, log.dropped, log.spooled, log.queue_depth) == (2, 0, 0, 0)


def test_a_256_row_request_is_one_row_of_the_table(database_url: str, tmp_path: Path) -> None:
    log = new_log(database_url, tmp_path / "spool")
    numeric = np.random.default_rng(1).normal(size=(256, 2))

    async def main() -> None:
        await log.start()
        log.submit(
            [
                record(
                    "big",
                    256,
                    features={"sepal_length": numeric[:, 0], "petal_width": numeric[:, 1]},
                    labels=np.array(["setosa", "virginica"] * 128, dtype=object),
                    probabilities={"setosa": np.full(256, 0.5), "virginica": np.full(256, 0.5)},
                )
            ]
        )
        assert await log.flush()
        await log.stop()

    asyncio.run(main())
    [row] = stored(database_url)
    assert (row.request_id, row.rows, len(row.labels)) == ("big", 256, 256)
    # the float columns are packed as binary, not JSON numbers, and read back through one function
    assert (row.features, row.probabilities) == ({}, {})
    assert row.packed_features is not None and row.packed_probabilities is not None
    features = logged_columns(row.features, row.packed_features)
    assert features == {"sepal_length": numeric[:, 0].tolist(), "petal_width": numeric[:, 1].tolist()}
    assert logged_columns(row.probabilities, row.packed_probabilities) == {
        "setosa": [0.5] * 256,
        "virginica": [0.5] * 256,
    }
    assert row.labels[:3] == ["setosa", "virginica", "setosa"]
    assert (log.written, log.dropped) == (1, 0)


def test_only_float_arrays_of_larger_requests_are_packed_and_every_value_reads_back(
    database_url: str, tmp_path: Path
) -> None:
    log = new_log(database_url, tmp_path / "spool")
    rows = PACK_MIN_ROWS
    numeric = np.arange(rows * 2, dtype="float64").reshape(rows, 2)
    numeric[0, 0], numeric[1, 1] = np.nan, np.inf  # missing, and not finite: None as in JSON
    colours = np.array(["red", None] * (rows // 2), dtype=object)
    features = {"sepal_length": numeric[:, 0], "petal_width": numeric[:, 1], "color": colours}
    probabilities = {"setosa": np.full(rows, 0.25, dtype="float32"), "virginica": [0.75] * rows}

    async def main() -> None:
        await log.start()
        log.submit(
            [
                record("packed", rows, features=features, probabilities=probabilities),
                record("small", rows - 1, features={"sepal_length": numeric[1:, 0]}, probabilities={}),
            ]
        )
        assert await log.flush()
        await log.stop()

    asyncio.run(main())
    packed, small = stored(database_url)
    expected_lengths = [None, *numeric[1:, 0].tolist()]
    assert packed.features == {"color": colours.tolist()}  # object columns stay JSON
    assert logged_columns(packed.features, packed.packed_features) == {
        "color": colours.tolist(),
        "sepal_length": expected_lengths,
        "petal_width": [1.0, None, *numeric[2:, 1].tolist()],
    }
    assert packed.probabilities == {"virginica": [0.75] * rows}  # a list stays JSON
    assert logged_columns(packed.probabilities, packed.packed_probabilities) == {
        "virginica": [0.75] * rows,
        "setosa": [0.25] * rows,
    }
    # below PACK_MIN_ROWS rows a request is cheaper as JSON
    assert (small.packed_features, small.packed_probabilities) == (None, None)
    assert logged_columns(small.features, small.packed_features) == {"sepal_length": expected_lengths[1:]}


def test_the_data_planes_float_matrices_are_packed_whole_at_any_size_and_spooled_as_json(
    database_url: str, tmp_path: Path
) -> None:
    log = new_log(database_url, tmp_path / "spool")

    def matrix_record(request_id: str, rows: int) -> PredictionRecord:
        numeric = np.arange(rows * 2, dtype="float64").reshape(rows, 2)
        numeric[0, 1] = np.nan
        colours = np.array(["red"] * rows, dtype=object)
        probabilities = np.full((rows, 2), 0.5, dtype="float32")
        return record(
            request_id,
            rows,
            features=MatrixColumns(["sepal_length", "petal_width"], numeric, {"color": colours}),
            probabilities=MatrixColumns(["setosa", "virginica"], probabilities),
        )

    def expected(rows: int) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        numeric = np.arange(rows * 2, dtype="float64").reshape(rows, 2).T.tolist()
        numeric[1][0] = None
        features = {"sepal_length": numeric[0], "petal_width": numeric[1], "color": ["red"] * rows}
        return features, {"setosa": [0.5] * rows, "virginica": [0.5] * rows}

    async def main() -> None:
        await log.start()
        integers = record(
            "integers", 1, features=MatrixColumns(["petals"], np.array([[3]])), probabilities={}
        )
        log.submit([matrix_record("large", PACK_MIN_ROWS), matrix_record("single", 1), integers])
        assert await log.flush()
        await log.stop()

    asyncio.run(main())
    large, single, integers = stored(database_url)
    for row in (large, single):  # the float matrices went packed, whole, whatever the rows
        assert row.features == {"color": ["red"] * row.rows}
        assert row.probabilities == {}
        assert row.packed_features is not None and row.packed_probabilities is not None
    assert (integers.features, integers.packed_features) == ({"petals": [3]}, None)
    for row in (large, single):
        features = logged_columns(row.features, row.packed_features)
        probabilities = logged_columns(row.probabilities, row.packed_probabilities)
        assert (features, probabilities) == expected(row.rows)
    # the spool (while the database is down) holds the same columns as JSON lists
    spooled = json.loads(spool_line(table_row(matrix_record("spooled", 3))))
    assert (spooled["features"], spooled["probabilities"]) == expected(3)


def test_matrix_columns_read_like_a_mapping() -> None:
    matrix = np.array([[1.0, 2.0], [3.0, 4.0]])
    columns = MatrixColumns(["a", "b"], matrix, {"c": np.array(["x", None], dtype=object)})
    assert list(columns) == ["a", "b", "c"] and len(columns) == 3
    assert columns["b"].tolist() == [2.0, 4.0] and columns["c"].tolist() == ["x", None]
    assert columns.tolist() == {"a": [1.0, 3.0], "b": [2.0, 4.0], "c": ["x", None]}
    with pytest.raises(KeyError):
        columns["d"]


def test_invalid_records_are_dropped_by_name_and_the_rest_are_written(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServingMetrics()
    log = new_log(database_url, tmp_path / "spool", metrics=metrics)

    async def main() -> None:
        await log.start()
        log.submit(
            [
                record("good-1"),
                record("x" * 300),
                record("bad-rows", rows=0),
                record("bad-labels", labels=["setosa", "setosa"]),
                record("bad-latency", latency_ms=float("nan")),
                record("bad-features", features=[1, 2]),
                record(""),
                "not a record",  # type: ignore[list-item]
                record("good-2"),
            ]
        )
        assert await log.flush()
        await log.stop()

    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        asyncio.run(main())
    assert [row.request_id for row in stored(database_url)] == ["good-1", "good-2"]
    assert log.dropped == 7
    assert dropped_metric(metrics, "invalid") == 7
    # Warnings are rate-limited per reason: the first one names the record and the problem.
    assert "request_id is longer than 256 characters" in caplog.text


def test_submit_never_raises_whatever_it_is_given(tmp_path: Path) -> None:
    log = new_log(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "spool")
    log.submit(None)  # type: ignore[arg-type]
    log.submit(42)  # type: ignore[arg-type]
    log.submit([])
    assert log.queue_depth == 0


def test_a_record_is_written_within_the_flush_interval_without_a_flush(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    log = new_log(url, tmp_path / "spool", batch_size=1000, flush_interval_s=0.2)

    async def main() -> float:
        await log.start()
        started = time.monotonic()
        log.submit([record("lonely")])
        while log.written == 0 and time.monotonic() - started < 5:
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        await log.stop()
        return elapsed

    assert asyncio.run(main()) < 2.0
    assert [row.request_id for row in stored(url)] == ["lonely"]


def test_flush_writes_every_queued_batch_without_waiting_for_the_interval(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    log = new_log(url, tmp_path / "spool", batch_size=10, flush_interval_s=30.0)

    async def main() -> tuple[bool, float]:
        await log.start()
        log.submit([record(f"req-{index}") for index in range(5)])
        await asyncio.sleep(0.3)
        unflushed = log.written  # below a batch, inside the interval: nothing is written yet
        log.submit([record(f"req-{index}") for index in range(5, 35)])
        started = time.monotonic()
        flushed = await log.flush(timeout_s=10)
        elapsed = time.monotonic() - started
        await log.stop()
        assert unflushed == 0
        return flushed, elapsed

    flushed, elapsed = asyncio.run(main())
    assert flushed and elapsed < 5.0
    assert len(stored(url)) == 35


def test_single_row_submits_are_written_in_a_few_batched_round_trips(
    database_url: str, tmp_path: Path
) -> None:
    log = new_log(database_url, tmp_path / "spool", batch_size=500, flush_interval_s=5.0)
    statements: list[tuple[str, bool]] = []

    @event.listens_for(log.engine, "before_cursor_execute")
    def count(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, executemany: bool
    ) -> None:
        statements.append((statement, executemany))

    async def main() -> None:
        await log.start()
        for index in range(2000):
            log.submit([record(f"req-{index}")])
        assert await log.flush()
        await log.stop()

    asyncio.run(main())
    inserts = [executemany for statement, executemany in statements if "INSERT INTO predictions" in statement]
    assert len(stored(database_url)) == 2000
    # 2000 records in batches of 500: four (at most a few more) executemany INSERTs, not 2000.
    assert 4 <= len(inserts) <= 6 and all(inserts), inserts
    assert len(statements) < 40  # the rest: the table check at first connect


def test_the_same_record_is_written_once_and_a_reused_request_id_twice(
    database_url: str, tmp_path: Path
) -> None:
    log = new_log(database_url, tmp_path / "spool")
    later = MOMENT + timedelta(seconds=1)

    async def main() -> list[int]:
        written = []
        await log.start()
        log.submit([record("req-1", 2)])
        assert await log.flush()
        written.append(log.written)
        # a replay of req-1 (same key and moment) is ignored, and not counted as written
        log.submit([record("req-1", 2, labels=["virginica"] * 2), record("req-2")])
        assert await log.flush()
        written.append(log.written)
        # the client sent req-1 again: a second prediction, logged beside the first
        log.submit([record("req-1", labels=["versicolor"], created_at=later)])
        assert await log.flush()
        written.append(log.written)
        # a candidate version scored the same request at the same moment: logged under its version
        log.submit([record("req-1", 2, version="4", labels=["virginica"] * 2)])
        assert await log.flush()
        written.append(log.written)
        await log.stop()
        return written

    assert asyncio.run(main()) == [1, 2, 3, 4]
    rows = stored(database_url)
    assert [(row.request_id, row.version, row.rows, row.labels) for row in rows] == [
        ("req-1", "3", 2, ["setosa", "setosa"]),
        ("req-2", "3", 1, ["setosa"]),
        ("req-1", "3", 1, ["versicolor"]),
        ("req-1", "4", 2, ["virginica", "virginica"]),
    ]
    assert log.dropped == 0


# ---------------------------------------------------------------- bounds


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    metrics = ServingMetrics()
    log = new_log(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "spool", queue_size=10, metrics=metrics)
    # No writer runs: submit returns with the queue full, dropping the rest rather than waiting for room.
    log.submit([record(f"req-{index}") for index in range(25)])
    assert (log.queue_depth, log.dropped) == (10, 15)
    assert dropped_metric(metrics, "queue_full") == 15


def test_a_full_spool_drops_and_counts_while_the_database_is_down(tmp_path: Path) -> None:
    metrics = ServingMetrics()
    spool_dir = tmp_path / "spool"
    log = new_log(unreachable_url(tmp_path), spool_dir, spool_max_bytes=2048, batch_size=10, metrics=metrics)

    async def main() -> None:
        await log.start()
        for index in range(60):
            log.submit([record(f"req-{index}")])
            await asyncio.sleep(0.001)
        assert await log.flush() is False  # some are spooled, none reached the database
        await log.stop()

    asyncio.run(main())
    spool = spool_dir / "predictions.jsonl"
    lines = spool.read_bytes().splitlines()
    assert spool.stat().st_size <= 2048
    assert log.spooled == len(lines) > 0
    assert log.dropped == 60 - len(lines)
    assert dropped_metric(metrics, "spool_full") == log.dropped
    assert not log.database_available


def test_records_submitted_after_stop_are_counted_as_dropped(tmp_path: Path) -> None:
    metrics = ServingMetrics()
    log = new_log(migrated_sqlite(tmp_path), tmp_path / "spool", metrics=metrics)

    async def main() -> None:
        await log.start()
        await log.stop()
        log.submit([record("late")])

    asyncio.run(main())
    assert log.dropped == 1
    assert dropped_metric(metrics, "stopped") == 1


# ---------------------------------------------------------------- spool and replay


def test_a_spool_left_by_an_earlier_run_is_replayed_at_start_once(database_url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    # An earlier server could not reach its database: its records went to the spool.
    earlier = new_log(unreachable_url(tmp_path), spool_dir)

    async def spool_some() -> None:
        await earlier.start()
        earlier.submit([record(f"req-{index}") for index in range(5)])
        await earlier.flush()
        await earlier.stop()

    asyncio.run(spool_some())
    spool = spool_dir / "predictions.jsonl"
    assert len(spool.read_bytes().splitlines()) == 5
    # It crashed mid-replay: req-0 is already in the table; and mid-append: a torn last line.
    seed = new_log(database_url, tmp_path / "seed")

    async def seed_one() -> None:
        await seed.start()
        seed.submit([record("req-0")])
        assert await seed.flush()
        await seed.stop()

    asyncio.run(seed_one())
    with spool.open("ab") as torn:
        torn.write(b'{"request_id":"req-5","ro')

    metrics = ServingMetrics()
    log = new_log(database_url, spool_dir, metrics=metrics)

    async def main() -> None:
        await log.start()
        log.submit([record("after-restart")])
        assert await log.flush()
        await log.stop()

    asyncio.run(main())
    assert [row.request_id for row in stored(database_url)] == [
        "req-0",
        "req-1",
        "req-2",
        "req-3",
        "req-4",
        "after-restart",
    ]
    # Five from the earlier run, plus the new record if it queued up behind them in the spool.
    assert log.replayed == 5 + log.spooled
    assert spool.read_bytes() == b""
    assert log.dropped == 0  # the torn line was never a whole record


def test_a_bad_spooled_line_is_dropped_by_name_and_the_rest_replays_once(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = json.loads(spool_line(table_row(record("good", 2))))
    short = {**good, "request_id": "short", "labels": ["setosa"]}  # one label for two rows
    lines = [good, short, {**good, "request_id": "after"}, good]  # "good" twice: a replay of a replay
    (spool_dir / "predictions.jsonl").write_bytes(
        b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    )
    metrics = ServingMetrics()
    log = new_log(database_url, spool_dir, metrics=metrics)

    async def main() -> None:
        await log.start()
        assert await log.flush()
        await log.stop()

    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        asyncio.run(main())
    assert [(row.request_id, row.rows) for row in stored(database_url)] == [("good", 2), ("after", 2)]
    assert (log.replayed, log.written, log.dropped) == (3, 2, 1)
    assert dropped_metric(metrics, "invalid") == 1
    assert "labels has 1 values, but the request has 2 rows" in caplog.text


def test_servers_sharing_a_spool_folder_use_separate_files(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = new_log(unreachable_url(tmp_path), spool_dir)
    second = new_log(unreachable_url(tmp_path), spool_dir)

    async def main() -> tuple[Path | None, Path | None]:
        await first.start()
        await second.start()
        paths = first.spool_path, second.spool_path
        first.submit([record("from-first")])
        second.submit([record("from-second")])
        await first.flush()
        await second.flush()
        await first.stop()
        await second.stop()
        return paths

    first_path, second_path = asyncio.run(main())
    assert first_path == spool_dir / "predictions.jsonl"
    assert second_path == spool_dir / "predictions-1.jsonl"
    assert b"from-first" in first_path.read_bytes() and b"from-first" not in second_path.read_bytes()
    assert b"from-second" in second_path.read_bytes()


# ---------------------------------------------------------------- Postgres dies under load


def test_killing_postgres_under_load_loses_no_record_and_blocks_no_request(
    killable_postgres: PostgresService, tmp_path: Path
) -> None:
    killable_postgres.server.psql("CREATE DATABASE under_load;")
    url = killable_postgres.url("under_load")
    upgrade(url)
    metrics = ServingMetrics()
    batch_size = 200
    log = new_log(
        url,
        tmp_path / "spool",
        queue_size=100_000,
        batch_size=batch_size,
        flush_interval_s=0.1,
        spool_max_bytes=64 << 20,
        retry_initial_s=0.1,
        retry_max_s=0.5,
        metrics=metrics,
    )
    submitted: list[str] = []
    submitted_while_down = 0
    seen_down = False

    async def traffic(seconds: float) -> None:
        """Requests as a server makes them: a few records every couple of milliseconds."""
        nonlocal seen_down, submitted_while_down
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            down = not log.database_available
            for _ in range(4):
                request_id = f"req-{len(submitted)}"
                log.submit([record(request_id)])
                submitted.append(request_id)
            seen_down = seen_down or down
            submitted_while_down += 4 if down else 0
            await asyncio.sleep(0.002)

    async def outage() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(killable_postgres.kill)
        await asyncio.sleep(2.5)
        await asyncio.to_thread(killable_postgres.start)

    async def main() -> bool:
        await log.start()
        await asyncio.gather(traffic(7.0), outage())
        # Everything reaches the table once Postgres is back (bounded wait).
        deadline = time.monotonic() + 60
        caught_up = False
        while not caught_up and time.monotonic() < deadline:
            # False at once while the writer waits to retry the database: ask again a little later.
            caught_up = await log.flush(timeout_s=5) or await asyncio.sleep(0.1, result=False)
        await log.stop()
        return caught_up

    caught_up = asyncio.run(main())
    assert seen_down and log.spooled > 0, "the outage was never noticed: the test proved nothing"
    assert caught_up, f"{log.spool_bytes} spooled bytes never reached the database"
    rows = stored(url)
    request_ids = [row.request_id for row in rows]
    assert len(request_ids) == len(submitted)
    assert set(request_ids) == set(submitted)
    # Replayed in order: insertion order is submission order.
    assert request_ids == submitted
    assert log.dropped == 0 and log.replayed == log.spooled
    # A submit that waited for the database would hold the loop for the whole outage: none would be made
    # while it is down. Traffic went on instead (no clock is asserted: the machine may be busy).
    assert submitted_while_down > 40, f"only {submitted_while_down} records were submitted during the outage"
    # The metrics tell the same story.
    assert metric(metrics, "modelyard_prediction_log_spooled_total") == log.spooled
    assert metric(metrics, "modelyard_prediction_log_replayed_total") == log.replayed
    # ``written`` counts what the writer saw the database take. When Postgres dies after committing the
    # batch in flight but before answering, that batch is spooled and its replay inserts none of it: the
    # count then falls short of the table by that one batch, never more, and never exceeds it.
    assert metric(metrics, "modelyard_prediction_log_written_total") == log.written
    assert len(submitted) - batch_size <= log.written <= len(submitted)
    assert metric(metrics, "modelyard_prediction_log_queue_depth") == 0
    assert metric(metrics, "modelyard_prediction_log_spool_bytes") == 0


def test_a_row_the_database_refuses_is_dropped_and_the_batch_still_lands(
    database_url: str, tmp_path: Path
) -> None:
    metrics = ServingMetrics()
    log = new_log(database_url, tmp_path / "spool", metrics=metrics)
    # Postgres text cannot hold NUL: the database itself refuses this row (SQLite takes it).
    records = [record("before"), record("nul", features={"comment": ["a\x00b"]}), record("after")]

    async def main() -> None:
        await log.start()
        log.submit(records)
        assert await log.flush()
        await log.stop()

    asyncio.run(main())
    request_ids = [row.request_id for row in stored(database_url)]
    if database_url.startswith("postgresql"):
        assert request_ids == ["before", "after"]
        assert log.dropped == 1 and dropped_metric(metrics, "rejected") == 1
        assert log.database_available  # a refused row is no outage
    else:
        assert request_ids == ["before", "nul", "after"]


def test_a_row_whose_values_no_column_can_take_is_dropped_by_name_and_the_batch_still_lands(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServingMetrics()
    log = new_log(database_url, tmp_path / "spool", metrics=metrics)
    # JSON has no integers beyond 64 bits: the features column cannot hold this one, on any database
    records = [record("before"), record("huge", features={"n": [2**70]}), record("after")]

    async def main() -> None:
        await log.start()
        log.submit(records)
        assert await log.flush()
        log.submit([record("huge-alone", features={"n": [2**70]})])  # a batch with nothing to insert
        assert await log.flush()
        await log.stop()

    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        asyncio.run(main())
    assert [row.request_id for row in stored(database_url)] == ["before", "after"]
    assert (log.written, log.dropped, log.spooled) == (2, 2, 0)
    # the same reason as when the database is down (the spool cannot hold it either), on every database
    assert (dropped_metric(metrics, "invalid"), dropped_metric(metrics, "rejected")) == (2, 0)
    assert "the record of request 'huge' cannot be written: Integer exceeds 64-bit range" in caplog.text
    assert log.database_available


def test_a_row_no_column_can_take_is_dropped_once_while_the_database_is_down(tmp_path: Path) -> None:
    metrics = ServingMetrics()
    log = new_log(unreachable_url(tmp_path), tmp_path / "spool", metrics=metrics)

    async def main() -> None:
        await log.start()
        log.submit([record("kept"), record("huge", features={"n": [2**70]})])
        assert not await log.flush()  # the database is down: "kept" waits in the spool
        await log.stop()

    asyncio.run(main())
    # "huge" is given up once, as the spool cannot hold it either; "kept" waits for the database
    assert (log.spooled, log.dropped) == (1, 1)
    assert (dropped_metric(metrics, "invalid"), dropped_metric(metrics, "rejected")) == (1, 0)


def test_stopping_while_the_database_is_down_spools_what_is_queued(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    log = new_log(unreachable_url(tmp_path), spool_dir, flush_interval_s=30.0)

    async def main() -> None:
        await log.start()
        log.submit([record(f"req-{index}") for index in range(7)])
        await log.stop()

    asyncio.run(main())
    lines = (spool_dir / "predictions.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"req-{index}" for index in range(7)]
    assert (log.spooled, log.dropped, log.queue_depth) == (7, 0, 0)


def test_a_log_stopped_before_it_started_spools_its_queue(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    log = new_log(f"sqlite:///{tmp_path / 'r.db'}", spool_dir)
    log.submit([record("early")])
    asyncio.run(log.stop())
    assert b'"request_id":"early"' in (spool_dir / "predictions.jsonl").read_bytes()


# ---------------------------------------------------------------- the PredictionSink protocol


def feed(sink: PredictionSink, records: list[PredictionRecord]) -> None:
    """What the data plane does with its sink, typed as the data plane types it."""
    sink.submit(records)


def test_the_prediction_log_is_a_prediction_sink(tmp_path: Path) -> None:
    log = new_log(migrated_sqlite(tmp_path), tmp_path / "spool")
    assert isinstance(log, PredictionSink)
    assert not isinstance(object(), PredictionSink)

    async def main() -> bool:
        await log.start()
        feed(log, [record("through-the-protocol")])
        flushed = await log.flush()
        await log.stop()
        return flushed

    assert asyncio.run(main())
    assert log.written == 1


MYPY_SNIPPET = """
from collections.abc import Sequence

from modelyard.serving.prediction_log import PredictionLog, PredictionRecord
from modelyard.serving.sink import PredictionSink


def feed(sink: PredictionSink) -> None:
    sink.submit([])


def the_log(log: PredictionLog) -> None:
    feed(log)


class NoFlush:
    def submit(self, records: Sequence[PredictionRecord]) -> None:
        pass


feed(NoFlush())
"""


def test_mypy_takes_the_log_as_a_sink_and_refuses_what_cannot_flush(tmp_path: Path) -> None:
    from mypy import api

    root = Path(__file__).resolve().parents[2]
    snippet = tmp_path / "sink_check.py"
    snippet.write_text(MYPY_SNIPPET)
    arguments = ["--config-file", str(root / "pyproject.toml"), "--cache-dir", str(root / ".mypy_cache")]
    report, errors, _status = api.run([*arguments, str(snippet)])
    assert errors == ""
    problems = [line for line in report.splitlines() if ": error:" in line]
    # The only complaint is NoFlush: the log itself type-checks as a PredictionSink.
    assert len(problems) == 1, report
    assert 'Argument 1 to "feed" has incompatible type "NoFlush"; expected "PredictionSink"' in problems[0]


def test_the_sink_module_imports_neither_sqlalchemy_nor_the_log() -> None:
    probe = (
        "import sys, modelyard.serving.sink\n"
        "unwanted = ('sqlalchemy', 'modelyard.serving.prediction_log')\n"
        "loaded = [m for m in sys.modules if m.startswith(unwanted)]\n"
        "print(sorted(loaded))"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"


# ---------------------------------------------------------------- flush waits on the writer's signal


def test_flush_returns_once_the_batch_is_written_and_not_before(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    # Neither a full batch nor the interval would ever start this write: only flush() does.
    log = new_log(url, tmp_path / "spool", batch_size=100, flush_interval_s=3600.0)
    inserting, may_insert = threading.Event(), threading.Event()

    @event.listens_for(log.engine, "before_cursor_execute")
    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO predictions"):
            inserting.set()
            may_insert.wait(30)  # the writer thread holds here until the test lets it go

    async def main() -> tuple[bool, int, bool]:
        await log.start()
        log.submit([record(f"req-{index}") for index in range(3)])
        flushing = asyncio.create_task(log.flush(timeout_s=3600))
        assert await asyncio.to_thread(inserting.wait, 30), "flush() did not wake the writer"
        await asyncio.sleep(0.2)
        waited, written_meanwhile = not flushing.done(), log.written
        may_insert.set()
        flushed = await asyncio.wait_for(flushing, 30)
        await log.stop()
        return waited, written_meanwhile, flushed

    waited, written_meanwhile, flushed = asyncio.run(main())
    assert waited and written_meanwhile == 0, "flush() returned before its batch was written"
    assert flushed and log.written == 3
    assert [row.request_id for row in stored(url)] == ["req-0", "req-1", "req-2"]


def test_flush_returns_at_once_when_the_writer_has_nothing_left_to_do(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    never_started = new_log(url, tmp_path / "spool-0")
    log = new_log(url, tmp_path / "spool", flush_interval_s=3600.0)

    async def main() -> list[bool]:
        answers = [await asyncio.wait_for(never_started.flush(timeout_s=3600), 10)]
        never_started.submit([record("queued-only")])
        answers.append(await asyncio.wait_for(never_started.flush(timeout_s=3600), 10))
        await log.start()
        answers.append(await asyncio.wait_for(log.flush(timeout_s=3600), 10))  # nothing submitted
        log.submit([record("req-1")])
        answers.append(await asyncio.wait_for(log.flush(timeout_s=3600), 10))
        answers.append(await asyncio.wait_for(log.flush(timeout_s=3600), 10))  # all written already
        await log.stop()
        answers.append(await asyncio.wait_for(log.flush(timeout_s=3600), 10))  # the writer has stopped
        await never_started.stop()
        return answers

    assert asyncio.run(main()) == [True, False, True, True, True, True]


def test_flush_returns_once_the_records_are_spooled_while_the_database_is_down(tmp_path: Path) -> None:
    # The next retry is an hour away: flush() must not wait for it.
    log = new_log(unreachable_url(tmp_path), tmp_path / "spool", retry_initial_s=3600.0, retry_max_s=3600.0)

    async def main() -> bool:
        await log.start()
        log.submit([record(f"req-{index}") for index in range(4)])
        flushed = await asyncio.wait_for(log.flush(timeout_s=3600), 10)
        await log.stop()
        return flushed

    assert asyncio.run(main()) is False
    assert (log.spooled, log.written, log.dropped) == (4, 0, 0)


def test_an_insert_blocked_by_a_migrations_lock_spools_and_replays_once_the_lock_is_gone(
    postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    migration = create_engine_for(postgres_url)
    log = new_log(postgres_url, tmp_path / "spool", retry_initial_s=0.2, retry_max_s=0.5)
    locked = migration.connect()
    transaction = locked.begin()
    locked.exec_driver_sql("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")  # as a table rewrite holds it

    async def main() -> tuple[bool, bool]:
        await log.start()
        log.submit([record(f"locked-{index}") for index in range(3)])
        # the writer gives the insert up after its lock timeout, not after the migration
        while_locked = await asyncio.wait_for(log.flush(timeout_s=30), 15)
        transaction.rollback()
        locked.close()
        deadline = time.monotonic() + 30
        while log.replayed < 3 and time.monotonic() < deadline:  # the writer's next retry replays
            await asyncio.sleep(0.05)
        after = await log.flush(timeout_s=30)
        await log.stop()
        return while_locked, after

    try:
        assert asyncio.run(main()) == (False, True)
    finally:
        locked.close()
        migration.dispose()
    assert (log.spooled, log.replayed, log.dropped) == (3, 3, 0)
    assert sorted(row.request_id for row in stored(postgres_url)) == ["locked-0", "locked-1", "locked-2"]


def test_flush_waits_for_the_replay_while_the_database_takes_rows(database_url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    earlier = new_log(unreachable_url(tmp_path), spool_dir)

    async def spool_some() -> None:
        await earlier.start()
        earlier.submit([record(f"req-{index}") for index in range(6)])
        await earlier.flush()
        await earlier.stop()

    asyncio.run(spool_some())
    log = new_log(database_url, spool_dir, batch_size=2, flush_interval_s=3600.0)  # three replay chunks

    async def main() -> bool:
        await log.start()
        flushed = await log.flush(timeout_s=30)
        await log.stop()
        return flushed

    assert asyncio.run(main()) is True
    assert log.replayed == 6 and log.spool_bytes == 0
    assert [row.request_id for row in stored(database_url)] == [f"req-{index}" for index in range(6)]


# ---------------------------------------------------------------- a database nobody migrated


def test_an_unmigrated_database_is_named_in_one_line_and_the_spool_replays_after_upgrade(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = settings.database_url
    spool_dir = tmp_path / "spool"
    log = new_log(url, spool_dir, retry_initial_s=0.05, retry_max_s=0.1)
    states: list[DatabaseState] = []

    async def main() -> bool:
        await log.start()
        log.submit([record(f"req-{index}") for index in range(3)])
        states.append(log.database_state)
        assert await log.flush() is False  # spooled: there is no table to write to
        states.append(log.database_state)
        await asyncio.sleep(0.5)  # the writer keeps retrying meanwhile, quietly
        assert tables(url) == set(), "the prediction log migrated the database"
        await asyncio.to_thread(upgrade, url)  # `modelyard db upgrade`, run by someone else
        log.submit([record("after-upgrade")])
        deadline = time.monotonic() + 30
        caught_up = False
        while not caught_up and time.monotonic() < deadline:
            caught_up = await log.flush(timeout_s=5) or await asyncio.sleep(0.05, result=False)
        await log.stop()
        return caught_up

    with caplog.at_level("INFO", logger="modelyard.serving.prediction_log"):
        caught_up = asyncio.run(main())
    assert caught_up, f"{log.spool_bytes} spooled bytes never reached the database"
    assert states[-1] is DatabaseState.UNMIGRATED and log.database_state is DatabaseState.UP
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"prediction log: the database at {redact(log.engine.url)} has no predictions table; run "
        f"`modelyard db upgrade`; spooling to {spool_dir / 'predictions.jsonl'} meanwhile"
    ]
    assert f"prediction log: the database at {redact(log.engine.url)} has its predictions table now" in (
        caplog.text
    )
    assert [row.request_id for row in stored(url)] == ["req-0", "req-1", "req-2", "after-upgrade"]
    assert log.dropped == 0 and log.replayed == log.spooled >= 3
