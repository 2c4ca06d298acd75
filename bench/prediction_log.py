"""What the prediction log's writer process spends per record as its table grows, by the kind of request id.

    .venv/bin/python bench/prediction_log.py [--records 300000] [--step 50000] [--database-url URL]

The writer as the server runs it: a PredictionLogProcess starts ``python -m
modelyard.serving.prediction_log`` and is handed single-row records as the data plane makes them (20
numeric features, 2 classes), ``CHUNK`` records at a time, each chunk flushed before the next, so that
the writer holds about as much as it does under a few thousand requests a second. After one chunk to
warm the writer up, each step of ``--step`` records reports the writer process's CPU time (psutil) per
record, in microseconds, once with ids the server mints (``new_request_id``, time-ordered) and then
with random ones (``uuid4``, as a client might send), each into a database of its own: SQLite files in
a temporary folder, or the two databases ``--database-url`` names with ``{kind}`` in it (``minted`` and
``random``; both must exist and be empty, as in
``postgresql+psycopg://postgres@/log_{kind}?host=/run/postgresql``). A database server's own CPU is not
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

from modelyard.registry import upgrade
from modelyard.serving.features import MatrixColumns
from modelyard.serving.prediction_log.process import PredictionLogProcess
from modelyard.serving.sink import PredictionRecord
from modelyard.serving.types import new_request_id

FEATURES = [f"x{i}" for i in range(20)]
CLASSES = ["no", "yes"]
CHUNK = 2_000  # records handed over and flushed at a time


def records(count: int, make_id: Callable[[], str], rng: np.random.Generator) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            request_id=make_id(),
            model="bench",
            version="1",
            rows=1,
            features=MatrixColumns(FEATURES, rng.random((1, len(FEATURES))), {}),
            labels=np.array(["yes"], dtype=object),
            probabilities=MatrixColumns(CLASSES, rng.random((1, len(CLASSES)))),
            latency_ms=0.5,
            created_at=datetime.now(UTC),
            answered=True,
        )
        for _ in range(count)
    ]


async def cpu_per_record(url: str, total: int, step: int, make_id: Callable[[], str]) -> list[float]:
    """The writer's CPU microseconds per record of each ``step`` records written, in order."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as spool:
        log = PredictionLogProcess(
            url,
            spool_dir=Path(spool),
            queue_size=2 * CHUNK,
            batch_size=500,
            flush_interval_s=0.05,
            spool_max_bytes=1 << 30,
        )
        await log.start()
        try:
            # the writer's start-up (imports, connecting, the first insert) is not a record's cost
            log.submit(records(CHUNK, make_id, rng))
            await log.flush(timeout_s=600)
            figures = []
            for _ in range(total // step):
                chunks = [records(CHUNK, make_id, rng) for _ in range(step // CHUNK)]
                writer = psutil.Process(await writer_pid(log))
                started = writer.cpu_times()
                for chunk in chunks:
                    log.submit(chunk)
                    if not await log.flush(timeout_s=600):
                        raise SystemExit(f"the writer did not settle {CHUNK} records within 600 s")
                ended = writer.cpu_times()
                spent = ended.user + ended.system - started.user - started.system
                figures.append(spent / step * 1e6)
                print(f"  {make_id.__name__}: {len(figures) * step:>9,} rows, {figures[-1]:.1f} us/record")
            if log.dropped or log.spooled:
                raise SystemExit(
                    f"the log dropped {log.dropped} and spooled {log.spooled} records: "
                    "the figures would not be the database's"
                )
        finally:
            await log.stop()
    return figures


async def writer_pid(log: PredictionLogProcess) -> int:
    for _ in range(100):
        if (pid := log.writer_pid) is not None:
            return pid
        await asyncio.sleep(0.05)
    raise SystemExit("the writer process did not start")


def random_request_id() -> str:
    return uuid.uuid4().hex


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300_000, help="records per id kind (default 300000)")
    parser.add_argument("--step", type=int, default=50_000, help="records per reported step (default 50000)")
    parser.add_argument("--database-url", help="database URL with {kind} in it (default: SQLite files)")
    args = parser.parse_args()
    if args.step % CHUNK or args.records % args.step or args.records < args.step:
        parser.error(f"--step must be a multiple of {CHUNK}, and --records a multiple of --step")
    if args.database_url and "{kind}" not in args.database_url:
        parser.error("--database-url must contain {kind}: one database per kind of id")

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, make_id in (("minted", new_request_id), ("random", random_request_id)):
            url = (
                args.database_url.format(kind=kind) if args.database_url else f"sqlite:///{folder}/{kind}.db"
            )
            upgrade(url)
            results[make_id.__name__] = asyncio.run(cpu_per_record(url, args.records, args.step, make_id))

    print(f"\n| rows in the table after the step | {' | '.join(results)} |")
    print(f"| ---: | {' | '.join('---:' for _ in results)} |")
    for index in range(args.records // args.step):
        cells = " | ".join(f"{figures[index]:.1f} us" for figures in results.values())
        print(f"| {(index + 1) * args.step:,} | {cells} |")


if __name__ == "__main__":
    main()
