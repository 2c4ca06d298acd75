"""The prediction log as the server runs it: records sent to a writer process, on real databases.

The frames between server and writer round-trip every kind of record the log takes; the writer process
stores what the server submits, counts it into the server's metrics, answers flushes, and loses nothing
when it is killed mid-stream or when the server stops while the database is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import io
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sqlalchemy import delete

from modelyard.registry import create_engine_for
from modelyard.registry.packed import logged_columns
from modelyard.registry.tables import Prediction
from modelyard.serving.features import MatrixColumns
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.prediction_log import process, wire
from modelyard.serving.prediction_log.process import WRITER_COMMAND, PredictionLogProcess
from modelyard.serving.prediction_log.records import RecordRun, one_entry_per_record, table_row
from modelyard.serving.sink import PredictionRecord

from .test_prediction_log import (
    dropped_metric,
    metric,
    migrated_sqlite,
    new_log,
    record,
    stored,
    unreachable_url,
)


def new_process_log(url: str, spool_dir: Path, **overrides: Any) -> PredictionLogProcess:
    options: dict[str, Any] = {
        "spool_dir": spool_dir,
        "queue_size": 10_000,
        "batch_size": 50,
        "flush_interval_s": 0.05,
        "spool_max_bytes": 1 << 22,
    }
    options.update(overrides)
    return PredictionLogProcess(url, **options)


# One list each, as a served model hands its schema's names to every record.
FEATURE_NAMES = ["sepal_length", "petal_width"]
CLASS_NAMES = ["setosa", "versicolor"]


def matrix_record(
    request_id: str, rows: int, *, text: bool = True, color_list: bool = False, **overrides: Any
) -> Any:
    """A record as the data plane builds it: its matrices whole, a text column beside the numbers
    (``color_list``: as a list, not an array)."""
    colors = ["red"] * (rows - 1) + [None]
    features = MatrixColumns(
        FEATURE_NAMES,
        np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)[:, ::-1] + rows,  # strided, as a batch's view
        ({"color": colors if color_list else np.array(colors, dtype=object)} if text else {}),
    )
    probabilities = MatrixColumns(CLASS_NAMES, np.full((rows, 2), 1 / (rows + 1)))
    return record(
        request_id,
        rows,
        features=features,
        probabilities=probabilities,
        **{"labels": np.array(["setosa"] * rows, dtype=object), **overrides},
    )


# ---------------------------------------------------------------- the frames


def payload_of(records: Sequence[PredictionRecord]) -> bytes:
    """The RECORDS payload of ``records`` as the writer reads it: its parts joined."""
    return b"".join(wire.encode_records(records))


def decoded_records(payload: bytes) -> list[PredictionRecord]:
    """The records of a RECORDS payload, each as the writer checks it when it is not stored as a run."""
    records: list[PredictionRecord] = []
    for entry in wire.decode_records(payload):
        if isinstance(entry, RecordRun):
            records.extend(map(entry.record, range(len(entry))))
        else:
            records.append(entry)
    return records


@pytest.mark.parametrize("rows", [1, 3, 300, 1100])
def test_records_cross_the_wire_as_the_same_table_rows(rows: int) -> None:
    originals = [
        matrix_record("m", rows),
        record("plain", rows),
        record("naive-time", rows, created_at=datetime(2026, 11, 23, 12, 0)),
        record("shadow", rows, answered=False, latency_ms=np.float32(2.5)),
    ]
    decoded = decoded_records(payload_of(originals))
    assert len(decoded) == len(originals)
    for original, copy in zip(originals, decoded, strict=True):
        assert_same_table_rows(table_row(copy), table_row(original))


def test_large_matrices_cross_from_the_records_own_arrays_and_small_ones_stacked() -> None:
    def parts_sharing(records: list[PredictionRecord]) -> int:
        parts = wire.encode_records(records)
        return sum(
            any(np.shares_memory(np.frombuffer(part, np.uint8), r.probabilities.matrix) for part in parts)
            for r in records
        )

    large = [matrix_record(name, wire.SEPARATE_MATRIX_BYTES // 16 + 1) for name in ("a", "b", "c")]
    assert parts_sharing(large) == 3  # no copy: the pipe gets each record's probabilities as they are
    for original, copy in zip(large, decoded_records(payload_of(large)), strict=True):
        assert_same_table_rows(table_row(copy), table_row(original))
    assert parts_sharing([matrix_record(name, 3) for name in ("a", "b", "c")]) == 0  # one stacked copy


def test_a_frame_written_from_parts_is_read_back_whole_when_signals_cut_its_writes_short() -> None:
    # More parts than one writev takes, through a pipe a slow reader drains while a timer interrupts the
    # writes: each write a signal cuts short goes on where it stopped.
    rng = np.random.default_rng(0)
    parts: list[wire.Part] = [rng.bytes(int(size)) for size in rng.integers(0, 4000, 2500)]
    parts[7] = memoryview(np.arange(1000, dtype=np.float64)).cast("B")
    received: list[tuple[int, bytes] | None] = []
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: every writev waits for the reader

    def read_slowly() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as stream:
            received.append(wire.read_frame(_SlowReader(stream)))

    interruptions: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: interruptions.append(1))
    reader = threading.Thread(target=read_slowly)
    reader.start()
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        wire.write_frame(write_end, wire.RECORDS, parts)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(write_end)
    reader.join(timeout=30)
    assert interruptions, "the timer never interrupted the writer"
    assert received == [(wire.RECORDS, b"".join(parts))]


class _SlowReader:
    """A stream that hands out at most 64 KiB a read, a moment apart: the pipe fills, the writer waits."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def read(self, size: int) -> bytes:
        chunks = []
        while size > 0:
            time.sleep(0.0005)
            chunk = self.stream.read(min(size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def assert_same_table_rows(got: dict[str, Any], expected: dict[str, Any]) -> None:
    def plain(row: dict[str, Any]) -> dict[str, Any]:
        columns = ("features", "probabilities")
        return {
            key: {name: list(column) for name, column in value.items()} if key in columns else value
            for key, value in row.items()
        }

    assert plain(got) == plain(expected)


def runs_and_alone(payload: bytes) -> list[str]:
    """What each entry of a RECORDS payload is: "run" (of how many records) or "alone"."""
    (_, length) = struct.unpack_from("<II", payload)
    entries = json.loads(payload[8 : 8 + length])
    return [
        f"run of {len(entry['request_ids'])}" if isinstance(entry, dict) else "alone" for entry in entries
    ]


@pytest.mark.parametrize("text", [True, False])
def test_consecutive_records_of_a_model_version_cross_as_one_run_in_order(text: bool) -> None:
    originals = [
        matrix_record("a", 1, text=text),
        matrix_record("b", 3, text=text, labels=np.array(["setosa", "versicolor", "setosa"])),  # <U10
        matrix_record("c", 2, text=text, answered=False),  # a shadow's: a run of its own
        matrix_record("d", 1, text=text, latency_ms=np.float32(2.5)),
        record("plain", 2),
        matrix_record("e", 4, text=text, labels=[1, 0, 1, 1]),
        matrix_record("f", 2, text=text, created_at=datetime(2026, 11, 23, 12, 0)),
    ]
    payload = payload_of(originals)
    decoded = decoded_records(payload)
    assert [copy.request_id for copy in decoded] == ["a", "b", "c", "d", "plain", "e", "f"]
    for original, copy in zip(originals, decoded, strict=True):
        assert_same_table_rows(table_row(copy), table_row(original))
    assert runs_and_alone(payload) == ["run of 2", "run of 1", "run of 1", "alone", "run of 2"]


def test_a_runs_label_arrays_cross_as_the_values_they_hold() -> None:
    originals = [
        matrix_record("text-1", 2, labels=np.array(["setosa", "versicolor"], dtype="<U10")),
        matrix_record("text-2", 1, labels=np.array(["setosa"], dtype="<U10")),
        matrix_record("objects", 2, answered=False, labels=np.array(["setosa", 3], dtype=object)),
        matrix_record("none", 1, answered=False, labels=np.array([None], dtype=object)),
    ]
    payload = payload_of(originals)
    decoded = decoded_records(payload)
    assert runs_and_alone(payload) == ["run of 2", "run of 2"]
    assert [table_row(copy)["labels"] for copy in decoded[:3]] == [
        ["setosa", "versicolor"],
        ["setosa"],
        ["setosa", "3"],
    ]
    with pytest.raises(ValueError, match=r"labels\[0\] must be a string, got NoneType"):
        table_row(decoded[3])


def with_features(record_: Any, *, names: Any = None, matrix: Any = None) -> Any:
    """``record_`` with its feature names or matrix replaced, its other columns kept."""
    features = record_.features
    replaced = MatrixColumns(
        features.names if names is None else names,
        features.matrix if matrix is None else matrix,
        features.other,
    )
    return dataclasses.replace(record_, features=replaced)


def big_endian(record_: Any) -> Any:
    return with_features(record_, matrix=record_.features.matrix.astype(">f8"))


def with_probability_column(record_: Any) -> Any:
    probabilities = record_.probabilities
    extra = {"note": ["x"] * record_.rows}
    return dataclasses.replace(
        record_, probabilities=MatrixColumns(probabilities.names, probabilities.matrix, extra)
    )


def with_other(record_: Any, other: dict[str, Any]) -> Any:
    features = record_.features
    return dataclasses.replace(record_, features=MatrixColumns(features.names, features.matrix, other))


def with_names_copied(record_: Any) -> Any:
    return with_features(record_, names=list(record_.features.names))


def single_precision(record_: Any) -> Any:
    return with_features(record_, matrix=record_.features.matrix.astype(np.float32))


@pytest.mark.parametrize(
    ("odd", "shape", "refusal"),
    [
        (big_endian(matrix_record("odd", 2)), ["run of 1", "alone", "run of 1"], None),
        (with_probability_column(matrix_record("odd", 2)), ["run of 1", "alone", "run of 1"], None),
        (matrix_record("odd", 2, color_list=True), ["run of 3"], None),
        (with_names_copied(matrix_record("odd", 2)), ["run of 1", "run of 1", "run of 1"], None),
        (single_precision(matrix_record("odd", 2)), ["run of 1", "run of 1", "run of 1"], None),
        (
            matrix_record("odd", 0, text=False),
            ["run of 1", "alone", "run of 1"],
            r"rows must be an integer >= 1, got 0",
        ),
        (
            matrix_record("odd", 3, labels=["setosa", "setosa"]),
            ["run of 1", "alone", "run of 1"],
            "labels has 2 values, but the request has 3 rows",
        ),
        (
            matrix_record("odd", 2, answered=1),
            ["run of 1", "alone", "run of 1"],
            "answered must be true or false, got 1",
        ),
    ],
    ids=[
        "big-endian",
        "probability-column",
        "list-column",
        "names-copied",
        "float32",
        "zero-rows",
        "labels-short",
        "answered-1",
    ],
)
def test_a_record_unlike_its_neighbours_splits_their_run_and_crosses_as_it_is(
    odd: Any, shape: list[str], refusal: str | None
) -> None:
    originals = [matrix_record("before", 2), odd, matrix_record("after", 1)]
    payload = payload_of(originals)
    decoded = decoded_records(payload)
    assert [copy.request_id for copy in decoded] == ["before", "odd", "after"]
    assert runs_and_alone(payload) == shape
    for original, copy in zip(originals, decoded, strict=True):
        if original is odd and refusal is not None:  # refused by the writer, alone, by name
            with pytest.raises(ValueError, match=refusal):
                table_row(copy)
        else:
            assert_same_table_rows(table_row(copy), table_row(original))


def a_run_changed(**changes: Any) -> bytes:
    """A RECORDS payload of one run of two records, with ``changes`` made to the run's fields."""
    payload = payload_of([matrix_record("a", 1), matrix_record("b", 1)])
    count, length = struct.unpack_from("<II", payload)
    (run,) = json.loads(payload[8 : 8 + length])
    run.update(changes)
    meta = json.dumps([run]).encode()
    return struct.pack("<II", count, len(meta)) + meta + payload[8 + length :]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rows": [1, 0]}, "a run's row counts must be positive integers"),
        ({"latency_ms": [1.0]}, "a run's columns differ in length"),
        ({"labels": ["setosa"]}, "a run of 2 rows has 1 labels"),
        ({"features": [["sepal_length"], "<f8", 1 << 20]}, "runs past the"),
        ({"rows": [1 << 62, 1], "labels": ["setosa"] * 2}, "a run of 4611686018427387905 rows has 2 labels"),
        ({"features": [["sepal_length", "petal_width"], None, 0]}, "None is no dtype of numbers"),
        ({"features": [["sepal_length", "petal_width"], "<U4", 0]}, "'<U4' is no dtype of numbers"),
        ({"labels": {"0": "setosa", "1": "setosa"}}, "a run's columns must be lists"),
        ({"request_ids": "ab"}, "a run's columns must be lists"),
        ({"other": {"0": {}, "1": {}}}, "a run's columns must be lists"),
        ({"features": [[1, 2], "<f8", 0]}, r"a matrix's column names must be text, got \[1, 2\]"),
        ({"probabilities": [[["a"], "b"], "<f8", 0]}, "a matrix's column names must be text"),
    ],
)
def test_a_run_that_does_not_add_up_is_refused_by_name(changes: dict[str, Any], message: str) -> None:
    assert len(decoded_records(a_run_changed())) == 2
    with pytest.raises(wire.FrameError, match=message):
        wire.decode_records(a_run_changed(**changes))


def test_a_record_the_writer_would_refuse_crosses_the_wire_and_is_refused_there_by_name() -> None:
    (copy,) = decoded_records(payload_of([dataclasses.replace(record("bad", 2), rows=3)]))
    message = r"features\['sepal_length'\] has 2 values, but the request has 3 rows"
    with pytest.raises(ValueError, match=message):
        table_row(copy)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01", "not a batch of prediction records"),
        (b"\x01\x00\x00\x00\x05\x00\x00\x00[1,2", "not a batch of prediction records"),
        (b"\x02\x00\x00\x00\x02\x00\x00\x00[]", "0 records where the frame says 2"),
    ],
)
def test_a_payload_that_is_no_batch_is_refused_by_name(payload: bytes, message: str) -> None:
    with pytest.raises(wire.FrameError, match=message):
        wire.decode_records(payload)


# ---------------------------------------------------------------- the writer's runs


def queued(payload: bytes) -> list[Any]:
    """What the writer process queues of a RECORDS payload: each record alone, or a run's members."""
    return one_entry_per_record(wire.decode_records(payload))


def write_all(url: str, spool_dir: Path, entries: list[Any], metrics: ServingMetrics | None = None) -> Any:
    """A PredictionLog that took ``entries``, flushed and stopped."""
    log = new_log(url, spool_dir, metrics=metrics)

    async def main() -> None:
        await log.start()
        log.submit(entries)
        await log.flush()
        await log.stop()

    asyncio.run(main())
    return log


def stored_values(url: str) -> list[dict[str, Any]]:
    """Every stored row's values but its id, in order."""
    rows = [row._asdict() for row in stored(url)]
    for row in rows:
        del row["id"]
    return rows


def logged(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row's values with its columns as readers see them, however they were stored."""
    read = dict(row)
    read["features"] = logged_columns(read.pop("features"), read.pop("packed_features"))
    read["probabilities"] = logged_columns(read.pop("probabilities"), read.pop("packed_probabilities"))
    return read


def emptied(url: str) -> None:
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            connection.execute(delete(Prediction.__table__))
    finally:
        engine.dispose()


def test_a_runs_records_are_stored_as_the_very_rows_each_alone_makes(
    database_url: str, tmp_path: Path
) -> None:
    originals = [
        matrix_record("one-row", 1),
        matrix_record("three-rows", 3, labels=np.array(["setosa", "versicolor", "setosa"], dtype=object)),
        matrix_record("naive-time", 1, created_at=datetime(2026, 11, 23, 12, 0)),
        matrix_record("float32-latency", 2, latency_ms=np.float32(2.5)),
        matrix_record("plain", 1, text=False),
        dataclasses.replace(
            matrix_record("nan", 1, text=False),
            probabilities=MatrixColumns(CLASS_NAMES, np.array([[np.nan, 1.0]])),
        ),
        single_precision(matrix_record("float32", 2)),
        matrix_record("shadow", 1, answered=False),
    ]
    payload = payload_of(originals)
    assert runs_and_alone(payload) == ["run of 6", "run of 1", "run of 1"]
    runs = wire.decode_records(payload)
    assert all(isinstance(run, RecordRun) and run.times_if_all_pass(0, len(run)) for run in runs)
    write_all(database_url, tmp_path / "runs", one_entry_per_record(runs))
    as_runs = stored_values(database_url)
    emptied(database_url)
    write_all(database_url, tmp_path / "alone", originals)
    assert as_runs == stored_values(database_url)
    assert [row["request_id"] for row in as_runs] == [record.request_id for record in originals]


@pytest.mark.parametrize(
    ("odd", "message"),
    [
        (dataclasses.replace(matrix_record("odd", 1), request_id=""), "request_id is empty"),
        (dataclasses.replace(matrix_record("odd", 1), request_id="x" * 300), "request_id is longer than 256"),
        (matrix_record("odd", 2, labels=np.array(["setosa", ""], dtype=object)), r"labels\[1\] is empty"),
        (matrix_record("odd", 1, created_at="yesterday"), "created_at is not an ISO timestamp: 'yesterday'"),
        (
            with_other(matrix_record("odd", 2), {"color": ["red"]}),
            r"features\['color'\] has 1 values, but the request has 2 rows",
        ),
        (matrix_record("odd", 1, latency_ms=2), None),  # not a float, but a number: stored as 2.0
        (matrix_record("odd", 1, created_at="2026-11-23T12:00:00"), None),  # no zone: UTC
    ],
    ids=["empty-id", "long-id", "empty-label", "bad-time", "short-other", "integer-latency", "text-time"],
)
def test_a_record_its_run_cannot_store_goes_alone_and_is_refused_by_name_between_its_neighbours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: Any, message: str | None
) -> None:
    url = migrated_sqlite(tmp_path)
    payload = payload_of([matrix_record("before", 1), odd, matrix_record("after", 2)])
    assert runs_and_alone(payload) == ["run of 3"]
    metrics = ServingMetrics()
    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        log = write_all(url, tmp_path / "spool", queued(payload), metrics)
    rows = stored(url)
    if message is None:
        assert [row.request_id for row in rows] == ["before", "odd", "after"]
        assert (log.written, log.dropped) == (3, 0)
        assert rows[1].latency_ms == float(odd.latency_ms)
        assert rows[1].created_at.replace(tzinfo=None) == datetime(2026, 11, 23, 12, 0)
    else:
        assert [row.request_id for row in rows] == ["before", "after"]
        assert (log.written, log.dropped, dropped_metric(metrics, "invalid")) == (2, 1, 1)
        assert re.search(message, caplog.text)


def test_a_run_whose_model_cannot_be_stored_is_refused_record_by_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = migrated_sqlite(tmp_path)
    records = [matrix_record(name, 1, model="m" * 100) for name in ("a", "b")]
    payload = payload_of(records)
    assert runs_and_alone(payload) == ["run of 2"]
    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        log = write_all(url, tmp_path / "spool", queued(payload))
    assert stored(url) == [] and log.dropped == 2
    assert "model is longer than 63 characters" in caplog.text


def test_a_runs_records_are_spooled_while_the_database_is_down_and_replayed_as_the_same_rows(
    tmp_path: Path,
) -> None:
    url = migrated_sqlite(tmp_path)
    payload = payload_of([matrix_record(name, 2) for name in ("a", "b", "c")])
    spool = tmp_path / "spool"
    log = write_all(unreachable_url(tmp_path), spool, queued(payload))
    assert (log.written, log.spooled, log.dropped) == (0, 3, 0)
    write_all(url, spool, [])  # replays what the first log spooled
    from_spool = stored_values(url)
    emptied(url)
    write_all(url, tmp_path / "direct", queued(payload))
    assert [row["request_id"] for row in from_spool] == ["a", "b", "c"]
    assert list(map(logged, from_spool)) == list(map(logged, stored_values(url)))


def test_a_run_whose_model_is_no_text_goes_record_by_record_and_is_stored_as_its_text(tmp_path: Path) -> None:
    (run,) = wire.decode_records(a_run_changed(model=5))
    assert isinstance(run, RecordRun) and run.times_if_all_pass(0, 2) is None
    url = migrated_sqlite(tmp_path)
    log = write_all(url, tmp_path / "spool", one_entry_per_record([run]))
    assert [(row.request_id, row.model) for row in stored(url)] == [("a", "5"), ("b", "5")]
    assert log.dropped == 0


def test_a_run_split_across_the_writers_batches_is_stored_whole_in_order(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    records = [matrix_record(f"r{i}", 1 + i % 3) for i in range(7)]
    records.insert(3, record("alone", 2))
    payload = payload_of(records)
    assert runs_and_alone(payload) == ["run of 3", "alone", "run of 4"]
    log = new_log(url, tmp_path / "spool", batch_size=2)

    async def main() -> bool:
        await log.start()
        log.submit(queued(payload))
        complete = await log.flush()
        await log.stop()
        return complete

    assert asyncio.run(main())
    assert [row.request_id for row in stored(url)] == [record_.request_id for record_ in records]
    assert (log.written, log.settled, log.dropped) == (8, 8, 0)


def test_a_value_of_a_runs_other_columns_no_json_holds_drops_its_record_once_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = migrated_sqlite(tmp_path)
    (run,) = wire.decode_records(payload_of([matrix_record(name, 1) for name in ("a", "b", "c")]))
    assert isinstance(run, RecordRun) and run.other is not None
    huge = dataclasses.replace(run, other=[run.other[0], {"color": [2**70]}, run.other[2]])
    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        log = write_all(url, tmp_path / "spool", one_entry_per_record([huge]))
    assert [row.request_id for row in stored(url)] == ["a", "c"]
    assert (log.written, log.dropped) == (2, 1)
    assert "the record of request 'b' cannot be written" in caplog.text


def test_a_bad_record_of_a_run_is_dropped_once_while_the_database_is_down(tmp_path: Path) -> None:
    bad = dataclasses.replace(matrix_record("bad", 1), request_id="")
    payload = payload_of([matrix_record("a", 1), bad, matrix_record("b", 1)])
    metrics = ServingMetrics()
    log = write_all(unreachable_url(tmp_path), tmp_path / "spool", queued(payload), metrics)
    assert (log.written, log.spooled, log.dropped, dropped_metric(metrics, "invalid")) == (0, 2, 1, 1)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x02\x05", "the stream ended inside a frame header"),
        (b"\x09\x00\x00\x00\x00", "unknown frame kind 9"),
        (b"\x02\x05\x00\x00\x00abc", "the stream ended inside a frame \\(3 of 5 bytes\\)"),
    ],
)
def test_a_cut_or_foreign_stream_is_refused_by_name(stream: bytes, message: str) -> None:
    with pytest.raises(wire.FrameError, match=message):
        wire.read_frame(io.BytesIO(stream))


def test_frames_follow_each_other_and_the_stream_ends_cleanly() -> None:
    flush = wire.frame(wire.FLUSH, orjson.dumps({"ticket": 3}))
    stream = io.BytesIO(wire.frame(wire.RECORDS, b"abc") + flush)
    assert wire.read_frame(stream) == (wire.RECORDS, b"abc")
    assert wire.read_frame(stream) == (wire.FLUSH, b'{"ticket":3}')
    assert wire.read_frame(stream) is None


# ---------------------------------------------------------------- the writer process


def test_the_writer_process_stores_what_the_server_submits_and_the_servers_metrics_count_it(
    tmp_path: Path,
) -> None:
    url = migrated_sqlite(tmp_path)
    metrics = ServingMetrics()
    log = new_process_log(url, tmp_path / "spool", metrics=metrics)

    async def scenario() -> tuple[bool, list[bool], bool]:
        await log.start()
        log.submit([matrix_record(f"r{n}", 1 + n % 10) for n in range(120)])
        flushed = await log.flush(timeout_s=30)
        # with nothing new, and side by side: each flush is answered, none waits for its timeout
        again = [await log.flush(timeout_s=5)]
        again += await asyncio.gather(log.flush(timeout_s=5), log.flush(timeout_s=5))
        log.submit([record("late")])
        await log.stop()
        return flushed, again, await log.flush(timeout_s=1)

    flushed, again, after_stop = asyncio.run(scenario())
    assert flushed is True
    assert again == [True, True, True]
    assert after_stop is True  # nothing is left anywhere
    rows = stored(url)
    assert [row.request_id for row in rows] == [f"r{n}" for n in range(120)] + ["late"]
    assert rows[11].rows == 2
    assert log.written == 121
    assert metric(metrics, "modelyard_prediction_log_written_total") == 121
    assert metric(metrics, "modelyard_prediction_log_queue_depth") == 0
    assert log.queue_depth == 0


def test_large_requests_travel_in_frames_of_about_frame_rows_and_every_one_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "FRAME_ROWS", 10)
    url = migrated_sqlite(tmp_path)
    sizes = [4, 4, 4, 25, 1, 3, 9, 2]
    unstarted = new_process_log(url, tmp_path / "spool")
    unstarted.submit([matrix_record(f"r{n}", rows) for n, rows in enumerate(sizes)])
    # the record that reaches the bound goes with the frame: 4+4+4, then 25, then 1+3+9, then 2
    with unstarted._lock:
        frames = [[record.rows for record in unstarted._next_frame()] for _ in range(5)]
    assert frames == [[4, 4, 4], [25], [1, 3, 9], [2], []]
    unstarted.engine.dispose()

    log = new_process_log(url, tmp_path / "spool")

    async def scenario() -> bool:
        await log.start()
        log.submit([matrix_record(f"r{n}", rows) for n, rows in enumerate(sizes)])
        flushed = await log.flush(timeout_s=30)
        await log.stop()
        return flushed

    assert asyncio.run(scenario()) is True
    assert [(row.request_id, row.rows) for row in stored(url)] == [
        (f"r{n}", rows) for n, rows in enumerate(sizes)
    ]


def test_a_killed_writer_is_started_again_and_every_record_is_stored_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = migrated_sqlite(tmp_path)
    # A long flush interval: the first writer holds its records unwritten when it is killed.
    log = new_process_log(url, tmp_path / "spool", flush_interval_s=30.0, batch_size=1_000)

    async def scenario() -> tuple[int | None, int | None]:
        await log.start()
        log.submit([record(f"a{n}") for n in range(40)])
        deadline = time.monotonic() + 30
        while log.writer_pid is None:
            assert time.monotonic() < deadline, "no writer started"
            await asyncio.sleep(0.02)
        first = log.writer_pid
        await asyncio.sleep(1.5)  # sent by now (and read, once the writer has started)
        os.kill(first, signal.SIGKILL)
        log.submit([record(f"b{n}") for n in range(40)])
        assert await log.flush(timeout_s=60) is True
        second = log.writer_pid
        await log.stop()
        return first, second

    with caplog.at_level(logging.WARNING, logger="modelyard"):
        first, second = asyncio.run(scenario())
    assert second is not None and second != first
    ids = [row.request_id for row in stored(url)]
    assert sorted(ids) == sorted([f"a{n}" for n in range(40)] + [f"b{n}" for n in range(40)])
    assert len(ids) == len(set(ids))
    assert log.written == 80  # the first writer wrote nothing: its flush interval never came
    assert f"the writer (pid {first}) exited with -9 before it settled" in caplog.text
    assert "unsettled record(s) to the new writer" in caplog.text


def test_stopping_while_the_database_is_down_spools_everything_for_the_next_server(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    metrics = ServingMetrics()
    log = new_process_log(unreachable_url(tmp_path), spool, metrics=metrics)

    async def scenario() -> None:
        await log.start()
        log.submit([record(f"r{n}", 2) for n in range(25)])
        await log.stop()

    asyncio.run(scenario())
    lines = (spool / "predictions.jsonl").read_bytes().splitlines()
    assert len(lines) == 25
    assert log.spooled == 25
    assert metric(metrics, "modelyard_prediction_log_spooled_total") == 25
    assert metric(metrics, "modelyard_prediction_log_spool_bytes") == sum(len(line) + 1 for line in lines)
    assert log.database_available is False


def test_a_record_json_cannot_carry_is_dropped_by_name_and_the_rest_are_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = migrated_sqlite(tmp_path)
    metrics = ServingMetrics()
    log = new_process_log(url, tmp_path / "spool", metrics=metrics)

    async def scenario() -> None:
        await log.start()
        log.submit([record("fine-1"), record("huge", features={"big": [2**70]}), record("fine-2")])
        await log.stop()

    with caplog.at_level(logging.WARNING, logger="modelyard"):
        asyncio.run(scenario())
    assert [row.request_id for row in stored(url)] == ["fine-1", "fine-2"]
    assert dropped_metric(metrics, "invalid") == 1
    assert "the record of request 'huge' cannot be written: Integer exceeds 64-bit range" in caplog.text


def test_when_no_writer_can_run_the_stopping_server_gives_its_records_up_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServingMetrics()
    log = new_process_log(migrated_sqlite(tmp_path), tmp_path / "spool", metrics=metrics, command=["false"])

    async def scenario() -> None:
        await log.start()
        log.submit([record(f"r{n}") for n in range(5)])
        await log.stop()

    with caplog.at_level(logging.WARNING, logger="modelyard"):
        asyncio.run(scenario())
    assert dropped_metric(metrics, "writer_failed") == 5
    assert "dropped 5 record(s) (writer_failed): no writer settled them in 3 attempts" in caplog.text


def test_a_full_server_queue_drops_by_name_and_counts_what_waits_for_the_writer(tmp_path: Path) -> None:
    metrics = ServingMetrics()
    url = migrated_sqlite(tmp_path)
    log = new_process_log(url, tmp_path / "spool", metrics=metrics, queue_size=10)
    log.submit([record(f"r{n}") for n in range(12)])  # not started: nothing leaves the queue
    assert log.queue_depth == 10
    assert dropped_metric(metrics, "queue_full") == 2
    asyncio.run(log.stop())  # a writer still takes what was queued
    assert [row.request_id for row in stored(url)] == [f"r{n}" for n in range(10)]


def test_a_writer_whose_server_is_gone_ignores_signals_and_stores_everything_it_was_sent(
    tmp_path: Path,
) -> None:
    """The server died while the writer answered a flush: nobody reads its reports any more, and a
    SIGTERM and a SIGINT (a pod's, a terminal's) reach it; it still stores every record it got."""
    url = migrated_sqlite(tmp_path)
    config = {
        "database_url": url,
        "spool_dir": str(tmp_path / "spool"),
        "queue_size": 1000,
        "batch_size": 50,
        "flush_interval_s": 0.05,
        "spool_max_bytes": 1 << 22,
    }
    writer = subprocess.Popen(WRITER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write(
        wire.frame(wire.CONFIG, orjson.dumps(config))
        + wire.frame(wire.RECORDS, payload_of([record(f"a{n}") for n in range(5)]))
        + wire.frame(wire.FLUSH, orjson.dumps({"ticket": 1, "timeout_s": 5}))
    )
    writer.stdin.flush()
    time.sleep(2.0)  # started, and its signal handlers set
    writer.stdout.close()  # the server is gone
    writer.send_signal(signal.SIGTERM)
    writer.send_signal(signal.SIGINT)
    writer.stdin.write(wire.frame(wire.RECORDS, payload_of([record(f"b{n}") for n in range(5)])))
    writer.stdin.close()
    assert writer.wait(timeout=60) == 0
    assert sorted(row.request_id for row in stored(url)) == [f"a{n}" for n in range(5)] + [
        f"b{n}" for n in range(5)
    ]


def test_a_writer_that_hangs_is_ended_at_the_stop_deadline_and_its_records_given_up_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hangs = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    metrics = ServingMetrics()
    log = new_process_log(
        migrated_sqlite(tmp_path), tmp_path / "spool", metrics=metrics, command=hangs, stop_timeout_s=1.0
    )

    async def scenario() -> float:
        await log.start()
        log.submit([record(f"r{n}") for n in range(4)])
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await log.stop()
        return time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="modelyard"):
        took = asyncio.run(scenario())
    assert took < 10
    assert dropped_metric(metrics, "writer_failed") == 4
    assert (
        "dropped 4 record(s) (writer_failed): the writer did not finish within 1 s of the stop" in caplog.text
    )


def test_the_flush_intervals_description_counts_the_servers_send_interval() -> None:
    """README.md and the chart's schema repeat this description: it names how long records wait in the
    server too, so a change to process.SEND_INTERVAL_S shows here."""
    from modelyard.settings import ServingSettings

    description = ServingSettings.model_fields["log_flush_interval_s"].description or ""
    assert f"within {process.SEND_INTERVAL_S:g} s" in description
