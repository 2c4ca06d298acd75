"""The PredictionLog: each answered request goes to the registry's ``predictions`` table, off the hot path.

``submit`` only appends to a bounded in-memory queue; it never waits on the database, never blocks and
never raises. A record is one request, however many rows it has, and becomes one table row (its values
column by column). A writer thread drains the queue in batches (``batch_size`` records, or whatever
waited ``flush_interval_s``), checks them, packs their float columns as binary float64 and serialises the
rest with orjson (on this thread, never on the event loop), and writes each batch with one executemany
INSERT, compiled once, its values made by the column types' own bind processors and handed straight to
the driver (``InsertStatement``). The writer process also queues records that came as a run
(``records.RecordRun``, one queue entry per record): a stretch of a run is checked and made into the
driver's values column by column, the same values the record-by-record way makes. A stretch with any
record those checks do not pass goes record by record, and ``table_row`` names what is wrong. ``flush``
wakes the writer and waits for it to signal that it is done with what was submitted before; it does
not poll.

When the database cannot take rows (it is unreachable, or it has no ``predictions`` table because
nobody ran ``modelyard db upgrade`` yet: the log never migrates) the writer appends each batch to the
spool and retries the database with exponential backoff. Once the database takes rows, the spool is
replayed in order before any newer record; records arriving meanwhile join the end of the spool, so the
order holds. A spool left by a crashed server is replayed when the next one starts.

Nothing is written twice: every INSERT ignores rows whose (request_id, model, version, created_at) is
already stored. That is what makes a replay after a crash (or after a commit whose answer was lost with
the connection) safe, and ``written`` counts only the records the database took. A client that sends one
request id twice gets both predictions logged, told apart by ``created_at``; feedback refuses such an
id as ambiguous (``feedback.py``).

Records are given up only when there is no room: the queue is full (``queue_full``), the spool is full
or cannot be written (``spool_full``), the database refuses a row as such (``rejected``, e.g. a
value too long), a record is malformed or holds a value JSON cannot (``invalid``, e.g. an integer beyond
64 bits, whether the database is up or not), or it was submitted after ``stop`` (``stopped``). Each is
counted in ``dropped`` and in ``modelyard_prediction_log_dropped_total{reason}``, and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
from sqlalchemy import URL, Connection, Dialect, Engine, Insert, Table, inspect
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from modelyard.errors import database_reason
from modelyard.registry.db import WRITE_OPTION, create_engine_for, normalize_url, redact
from modelyard.registry.packed import pack_columns, pack_matrix, pack_row_blocks
from modelyard.registry.tables import Prediction
from modelyard.serving.features import MatrixColumns
from modelyard.serving.prediction_log.records import (
    InvalidRecord,
    RecordRun,
    RunMember,
    UnwritableValue,
    json_text,
    row_from_spool_line,
    spool_line,
    table_row,
    unwritable,
)
from modelyard.serving.prediction_log.spool import Spool
from modelyard.serving.sink import PredictionRecord

logger = logging.getLogger(__name__)

# Longest a Postgres connection attempt may hang (a black-holed host), so retries keep their pace.
CONNECT_TIMEOUT_S = 5
# Longest an insert waits for a lock on the table (a migration rewriting it): then its batch spools.
LOCK_TIMEOUT_MS = 2000
# At most one warning per reason this often: a full queue must not flood the log from the hot path.
WARNING_INTERVAL_S = 10.0
_UNIQUE_KEY = ["request_id", "model", "version", "created_at"]


class DatabaseState(enum.Enum):
    """What the writer's last attempt found."""

    UP = "up"
    UNREACHABLE = "unreachable"
    UNMIGRATED = "unmigrated"  # it answers, but has no predictions table


class LogMetrics(Protocol):
    """Where the log counts what it did: the server's ``ServingMetrics``, or the writer process's tally
    that the server's metrics take over (``prediction_log.process``)."""

    def set_log_queue(self, depth: int) -> None: ...
    def count_log_dropped(self, n: int, reason: str) -> None: ...
    def count_log_written(self, n: int) -> None: ...
    def count_log_spooled(self, n: int) -> None: ...
    def count_log_replayed(self, n: int) -> None: ...
    def set_log_spool_bytes(self, size: int) -> None: ...


def log_database_url(database_url: str) -> URL:
    """The registry URL as the log connects to it: on Postgres, a bounded connect and lock wait."""
    url = normalize_url(database_url)
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    if url.get_backend_name() == "postgresql" and "options" not in url.query:
        url = url.update_query_dict({"options": f"-c lock_timeout={LOCK_TIMEOUT_MS}"})
    return url


class Drops:
    """Records given up: counted, by reason in the metrics, and said at most once per reason every
    WARNING_INTERVAL_S (a full queue must not flood the log from the hot path)."""

    def __init__(self, metrics: LogMetrics | None) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._last_warning: dict[str, float] = {}
        self.count = 0

    def give_up(self, count: int, reason: str, why: str) -> None:
        self.count_said_elsewhere(count, reason)
        now = time.monotonic()
        if now - self._last_warning.get(reason, -math.inf) >= WARNING_INTERVAL_S:
            self._last_warning[reason] = now
            detail = f": {why}" if why else ""
            logger.warning("prediction log: dropped %d record(s) (%s)%s", count, reason, detail)

    def count_said_elsewhere(self, count: int, reason: str) -> None:
        """Count records another process gave up (and said so in its own log)."""
        with self._lock:
            self.count += count
        if self._metrics is not None:
            self._metrics.count_log_dropped(count, reason)


# What an intake queues: the data plane's records on the server; the writer process also takes runs' members.
_Queued = TypeVar("_Queued", PredictionRecord, PredictionRecord | RunMember)


class RecordIntake(Generic[_Queued]):
    """The bounded queue both prediction logs take records into on the request path: ``submit()`` never
    blocks on I/O and never raises, and what does not fit is given up and counted by reason.

    ``numbers`` are the log's settings that must be positive, checked by name.
    """

    def __init__(
        self, *, queue_size: int, batch_size: int, metrics: LogMetrics | None, numbers: Mapping[str, float]
    ) -> None:
        for name, number in {"queue_size": queue_size, "batch_size": batch_size, **numbers}.items():
            if not number > 0:
                raise ValueError(f"{name} must be > 0, got {number!r}")
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._metrics = metrics
        self._drops = Drops(metrics)
        # Shared with producers, flushers and the log's own threads: under one short-held lock.
        self._lock = threading.Lock()
        self._queue: deque[_Queued] = deque()
        self._submitted = 0  # records accepted into the queue
        self._refused = 0  # records submit() could not take (queue full, or stopped)
        self._closed = False
        self._wakeup = threading.Event()

    @property
    def queue_depth(self) -> int:
        """Records taken and not yet settled (the queue gauge's value)."""
        return self._backlog(len(self._queue))

    @property
    def dropped(self) -> int:
        return self._drops.count

    def _room(self) -> int:
        """How many more records the log takes now (called under the lock): what it holds unsettled
        counts against the queue's size."""
        return self._queue_size - self._backlog(len(self._queue))

    def _backlog(self, depth: int) -> int:
        """The records held and not yet settled while ``depth`` are queued."""
        return depth

    def submit(self, records: Sequence[_Queued]) -> None:
        """Queue records for writing. Never blocks on I/O and never raises."""
        try:
            count = len(records)
            if count == 0:
                return
            with self._lock:
                if self._closed:
                    accepted, reason = 0, "stopped"
                else:
                    accepted, reason = max(0, min(count, self._room())), "queue_full"
                    if accepted == count:
                        self._queue.extend(records)
                    elif accepted > 0:
                        self._queue.extend(itertools.islice(records, accepted))
                    self._submitted += accepted
                self._refused += count - accepted
                depth = len(self._queue)
            if accepted < count:
                why = "the queue is full" if reason == "queue_full" else "submitted after stop()"
                self._drops.give_up(count - accepted, reason, why)
            if self._metrics is not None:
                self._metrics.set_log_queue(self._backlog(depth))
            if depth >= self._batch_size:
                self._wakeup.set()
        except Exception:  # the request path must never fail because of the log
            logger.exception("prediction log: submit failed")


class MissingTable(Exception):
    """The database answers but has no ``predictions`` table: ``modelyard db upgrade`` was not run."""


@dataclass(eq=False)
class _FlushWaiter:
    """A flush() in progress: released (on its own loop) once the writer is done with ``target`` records."""

    target: int
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


def _release(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _row_fault(exc: BaseException) -> str | None:
    """Why inserting a row failed for the row itself, so that retrying cannot help: the database refused
    it (``rejected``), or a value of it cannot be written as JSON (``invalid``, as the spool cannot take
    it either; psycopg serialises JSON as it executes). None: anything else, which counts as an outage."""
    if isinstance(exc, IntegrityError | DataError):
        return "rejected"
    cause = exc.orig if isinstance(exc, StatementError) else exc
    return "invalid" if isinstance(cause, UnwritableValue) else None


def _fault_message(request_id: str, exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        return f"the database refused {request_id!r}: {database_reason(exc)}"
    return unwritable(request_id, exc.orig if isinstance(exc, StatementError) else exc)


# Below this many rows a request's columns given as a mapping stay JSON: a few numbers cost orjson less
# than packing them. The data plane's float matrices are always packed (their name list is cached).
PACK_MIN_ROWS = 8


def _packed(columns: Mapping[str, Any], rows: int) -> tuple[Mapping[str, Any], bytes | None]:
    """(the columns left for JSON, the float arrays among them packed); lists stay JSON."""
    if type(columns) is MatrixColumns and columns.matrix.dtype.kind == "f":
        return columns.other, pack_matrix(columns.names, columns.matrix)
    if rows < PACK_MIN_ROWS:
        # as plain lists at once: orjson would fail on the mapping first, then ask ``plain_value``
        return (columns.tolist() if type(columns) is MatrixColumns else columns), None
    numeric = {
        name: column
        for name, column in columns.items()
        if type(column) is np.ndarray and column.dtype.kind == "f"
    }
    if not numeric:
        return columns, None
    rest = {name: column for name, column in columns.items() if name not in numeric}
    return rest, pack_columns(numeric, rows)


def stored_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row as the INSERT takes it: the data plane's float matrices packed as binary, not JSON (and
    float columns given as a mapping, from ``PACK_MIN_ROWS`` rows).

    Serialising a 256-row request's numbers as JSON text, and SQLite storing that text, was most of
    what the log cost; packing copies the arrays the data plane handed over (``registry.packed``).
    """
    features, packed_features = _packed(row["features"], row["rows"])
    probabilities, packed_probabilities = _packed(row["probabilities"], row["rows"])
    return {
        **row,
        "features": features,
        "probabilities": probabilities,
        "packed_features": packed_features,
        "packed_probabilities": packed_probabilities,
    }


# One row's values as the driver takes them: in column order, or by name for named parameter styles.
Parameters = tuple[Any, ...] | dict[str, Any]


@dataclass(eq=False)
class _RunStretch:
    """Records ``first`` to ``end`` of a run, taken off the queue together; ``times`` once checked."""

    run: RecordRun
    first: int
    end: int
    times: list[datetime] = field(default_factory=list)


# A record as the writer stores it: its table row, or its place in a checked stretch of a run.
_Checked = dict[str, Any] | _RunStretch


def _stretches(batch: list[PredictionRecord | RunMember]) -> list[PredictionRecord | _RunStretch]:
    """The batch with consecutive members of one run as one stretch."""
    stretches: list[PredictionRecord | _RunStretch] = []
    last: _RunStretch | None = None
    for entry in batch:
        if type(entry) is not RunMember:
            stretches.append(cast(PredictionRecord, entry))
            last = None
        elif last is not None and entry.run is last.run and entry.position == last.end:
            last.end += 1
        else:
            last = _RunStretch(entry.run, entry.position, entry.position + 1)
            stretches.append(last)
    return stretches


class InsertStatement:
    """The log's INSERT compiled once for a dialect, and each stored row's values as its driver takes them.

    Run with ``Connection.exec_driver_sql``: SQLAlchemy's executemany builds a parameter dict per row and
    looks each value's bind processor up again, a third of the writer's CPU for single-row requests. The
    values are the ones SQLAlchemy would send: its bind processors (JSON, dates, binary) make them.
    """

    def __init__(self, statement: Insert, table: Table, dialect: Dialect) -> None:
        columns = [column.key for column in table.columns if not column.primary_key]
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        names = list(compiled.positiontup or []) if compiled.positional else columns
        if sorted(names) != sorted(columns) or sorted(compiled.binds) != sorted(columns):
            raise RuntimeError(f"the {table.name} INSERT binds {sorted(compiled.binds)}, not {columns}")
        self.sql = str(compiled)
        self._positional = compiled.positional
        self._names = names
        self._processors = [
            (name, table.columns[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
        ]

    def parameters(self, row: Mapping[str, Any]) -> Parameters:
        """The driver's values of one stored row (``stored_row``): a tuple, or a dict for named styles."""
        values = [row[name] if process is None else process(row[name]) for name, process in self._processors]
        return tuple(values) if self._positional else dict(zip(self._names, values, strict=True))

    def column_parameters(
        self, columns: Mapping[str, Sequence[Any]], same: Mapping[str, Any]
    ) -> list[Parameters]:
        """The driver's values of rows given column by column: ``columns`` holds each row's value of a
        column, ``same`` the value every row has (made once). Each name is in one of them."""
        count = len(next(iter(columns.values())))
        values: list[Any] = []
        for name, process in self._processors:
            if name in same:
                value = same[name] if process is None else process(same[name])
                values.append(itertools.repeat(value, count))
            else:
                values.append(columns[name] if process is None else map(process, columns[name]))
        if self._positional:
            return list(zip(*values, strict=True))
        return [dict(zip(self._names, row, strict=True)) for row in zip(*values, strict=True)]


class PredictionLog(RecordIntake[PredictionRecord | RunMember]):
    """Writes PredictionRecords to the ``predictions`` table asynchronously; see the module docstring.

    It is a ``modelyard.serving.sink.PredictionSink``.
    """

    def __init__(
        self,
        database_url: str,
        *,
        spool_dir: Path,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        spool_max_bytes: int,
        metrics: LogMetrics | None = None,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 5.0,
    ) -> None:
        super().__init__(
            queue_size=queue_size,
            batch_size=batch_size,
            metrics=metrics,
            numbers={
                "flush_interval_s": flush_interval_s,
                "spool_max_bytes": spool_max_bytes,
                "retry_initial_s": retry_initial_s,
                "retry_max_s": retry_max_s,
            },
        )
        url = log_database_url(database_url)
        self.engine: Engine = create_engine_for(url, json_serializer=json_text)
        self._where = redact(url)
        table = cast(Table, Prediction.__table__)
        self._table_name = table.name
        # A replayed row is skipped, and the executemany's rowcount (sqlite3 and psycopg sum it over the
        # rows; kept by ``preserve_rowcount``) counts only the rows that went in. No RETURNING: with it,
        # SQLAlchemy sends each batch as one multi-row INSERT and fetches its ids, which cost the writer
        # about a third of its CPU.
        insert: Insert = (
            postgresql_insert(table).on_conflict_do_nothing(index_elements=_UNIQUE_KEY)
            if url.get_backend_name() == "postgresql"
            else sqlite_insert(table).on_conflict_do_nothing(index_elements=_UNIQUE_KEY)
        )
        self._insert = InsertStatement(insert, table, self.engine.dialect)
        self._spool_dir = spool_dir
        self._flush_interval_s = flush_interval_s
        self._spool_max_bytes = spool_max_bytes
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s

        # Under the intake's lock, with the queue: the counters and the waiting flushes.
        self._handled = 0  # records taken off the queue and written, spooled or given up
        self._writer_running = False
        self._flush_waiters: list[_FlushWaiter] = []
        self._flush_upto = 0  # the writer goes on without pausing until it has handled this many
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

        # The writer thread's own state.
        self._spool: Spool | None = None
        self._connection: Connection | None = None
        self._state = DatabaseState.UP
        self._retry_delay_s = retry_initial_s
        self._next_retry = 0.0
        self._written = 0
        self._spooled = 0
        self._replayed = 0

    # ------------------------------------------------------------ the caller's side

    @property
    def settled(self) -> int:
        """Records submitted that need nothing more: written, spooled, or given up (refused included)."""
        return self._handled + self._refused

    @property
    def written(self) -> int:
        """Records (requests) inserted into the database so far (replayed ones included). A batch whose
        commit landed but whose answer was lost with the connection is not counted: its replay finds it
        stored."""
        return self._written

    @property
    def spooled(self) -> int:
        """Records written to the spool so far."""
        return self._spooled

    @property
    def replayed(self) -> int:
        """Spooled records replayed into the database so far (any it already held included)."""
        return self._replayed

    @property
    def spool_bytes(self) -> int:
        """Bytes in the spool waiting for the database (0 when nothing waits)."""
        spool = self._spool
        return spool.pending if spool is not None else 0

    @property
    def spool_path(self) -> Path | None:
        spool = self._spool
        return spool.path if spool is not None else None

    @property
    def database_available(self) -> bool:
        """Whether the last attempt to write succeeded (False while unreachable or unmigrated)."""
        return self._state is DatabaseState.UP

    @property
    def database_state(self) -> DatabaseState:
        return self._state

    async def start(self) -> None:
        """Open the spool (replaying any a previous server left) and start the writer thread."""
        if self._thread is not None:
            return
        try:
            self._spool = await asyncio.to_thread(Spool, self._spool_dir, self._spool_max_bytes)
        except OSError as exc:
            logger.error(
                "prediction log: no spool in %s (%s); predictions made while the database cannot take "
                "them will be dropped",
                self._spool_dir,
                exc,
            )
        if self._spool is not None and self._spool.pending:
            logger.info(
                "prediction log: replaying %d bytes spooled by an earlier run from %s",
                self._spool.pending,
                self._spool.path,
            )
        self._update_spool_gauge()
        with self._lock:
            self._writer_running = True
        self._thread = threading.Thread(target=self._run, name="modelyard-prediction-log", daemon=True)
        self._thread.start()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the writer is done with every record submitted so far, or ``timeout_s`` passed.

        Done means each record is written, given up, or spooled while the database cannot take it; and
        while the database can, the spool is replayed too. The writer is woken at once (no waiting for
        a full batch or the flush interval) and signals when it is done. True when every record reached
        the database and nothing waits in the spool; False otherwise.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            target = self._submitted
            if not self._writer_running or (self._handled >= target and not self._replaying()):
                waiter = None
            else:
                waiter = _FlushWaiter(target, loop, loop.create_future())
                self._flush_waiters.append(waiter)
                self._flush_upto = max(self._flush_upto, target)
        if waiter is not None:
            self._wakeup.set()
            try:
                await asyncio.wait_for(waiter.done, timeout_s)
            except TimeoutError:
                pass
            finally:
                with self._lock, contextlib.suppress(ValueError):  # already released
                    self._flush_waiters.remove(waiter)
        return self._handled >= target and self.spool_bytes == 0

    async def stop(self) -> None:
        """Write what is queued (to the database, or to the spool) and stop the writer thread."""
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wakeup.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        else:  # never started: the queue goes straight to the spool
            await asyncio.to_thread(self._close_unstarted)
        self.engine.dispose()

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        try:
            # Connect now rather than at the first record, so that an unreachable or unmigrated database
            # is reported as the server starts.
            try:
                self._connect()
            except Exception as exc:
                self._mark_down(exc)
            while True:
                # Wait first: records submitted while connecting wait for a full batch, the flush
                # interval, flush() or stop(), like any others.
                if not self._should_continue_now():
                    self._wakeup.wait(self._wait_time())
                    self._wakeup.clear()
                stopping = self._stopping.is_set()
                try:
                    batch = self._take()
                    if batch:
                        self._handle(batch)
                    elif self._waiting_in_spool() and self._database_due():
                        self._replay_chunk()
                except Exception:  # a bug here must not end the writer; the records stay queued or spooled
                    logger.exception("prediction log: the writer failed; retrying in a second")
                    self._stopping.wait(1.0)
                self._release_flushers()
                if stopping and not self._queue:
                    break
        finally:
            self._close_connection()
            if self._spool is not None:
                self._spool.close()
            with self._lock:
                self._writer_running = False
            self._release_flushers(everyone=True)

    def _close_unstarted(self) -> None:
        try:
            self._spool = Spool(self._spool_dir, self._spool_max_bytes)
        except OSError as exc:
            logger.error("prediction log: no spool in %s (%s)", self._spool_dir, exc)
        while batch := self._take():
            self._to_spool(self._table_rows(self._checked(batch)))
        if self._spool is not None:
            self._spool.close()

    def _take(self) -> list[PredictionRecord | RunMember]:
        with self._lock:
            size = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            depth = len(self._queue)
        if batch and self._metrics is not None:
            self._metrics.set_log_queue(depth)
        return batch

    def _should_continue_now(self) -> bool:
        if len(self._queue) >= self._batch_size or self._stopping.is_set():
            return True
        if self._queue and self._handled < self._flush_upto:
            return True  # a flush waits for these
        # Replay without pause while the database takes it.
        return self._replaying()

    def _replaying(self) -> bool:
        """Rows wait in the spool and the database takes rows: the writer is busy replaying."""
        return self._waiting_in_spool() and self._state is DatabaseState.UP

    def _release_flushers(self, *, everyone: bool = False) -> None:
        """Release each flush() whose records are all handled, unless a replay is still under way."""
        with self._lock:
            if not self._flush_waiters:
                return
            idle = everyone or not self._replaying()
            released = [w for w in self._flush_waiters if everyone or (idle and w.target <= self._handled)]
            if not released:
                return
            self._flush_waiters = [w for w in self._flush_waiters if w not in released]
        for waiter in released:
            with contextlib.suppress(RuntimeError):  # its event loop is closed: nobody waits any more
                waiter.loop.call_soon_threadsafe(_release, waiter.done)

    def _wait_time(self) -> float:
        if self._waiting_in_spool() and self._state is not DatabaseState.UP:
            return max(0.0, min(self._flush_interval_s, self._next_retry - time.monotonic()))
        return self._flush_interval_s

    def _waiting_in_spool(self) -> bool:
        return self._spool is not None and self._spool.pending > 0

    def _database_due(self) -> bool:
        return self._state is DatabaseState.UP or time.monotonic() >= self._next_retry

    def _handle(self, batch: list[PredictionRecord | RunMember]) -> None:
        try:
            checked = self._checked(batch)
            if self._waiting_in_spool():
                # Older records wait in the spool: newer ones queue up behind them.
                self._to_spool(self._table_rows(checked))
                if self._database_due() and not self._stopping.is_set():
                    self._replay_chunk()
            elif checked:
                # Down and too early to try again, or the attempt failed: the spool keeps them.
                written = self._database_due() and self._write(checked)
                if not written:
                    self._to_spool(self._table_rows(checked))
        finally:  # counted even if a bug interrupted it, so that no flush() waits for it in vain
            with self._lock:
                self._handled += len(batch)

    def _checked(self, batch: list[PredictionRecord | RunMember]) -> list[_Checked]:
        """Each record's table row, or a stretch of a run's records that passed its checks column by
        column; a record that fails its checks is given up, by name."""
        checked: list[_Checked] = []
        for entry in _stretches(batch):
            if isinstance(entry, _RunStretch):
                times = entry.run.times_if_all_pass(entry.first, entry.end)
                if times is not None:
                    entry.times = times
                    checked.append(entry)
                    continue
            checked.extend(self._records_rows(entry))
        return checked

    def _records_rows(
        self, entry: PredictionRecord | _RunStretch, refused: list[tuple[str, Exception]] | None = None
    ) -> list[dict[str, Any]]:
        """The table rows of a record, or of each record of a stretch; those that fail ``table_row``'s
        checks are given up, by name, or added to ``refused`` (request id, why) when it is given."""
        records = (
            map(entry.run.record, range(entry.first, entry.end))
            if isinstance(entry, _RunStretch)
            else [entry]
        )
        rows = []
        for record in records:
            try:
                rows.append(table_row(record))
            except InvalidRecord as exc:
                request_id = getattr(record, "request_id", "?")
                if refused is not None:
                    refused.append((request_id, exc))
                else:
                    self._give_up(1, "invalid", f"the record of request {request_id!r} is invalid: {exc}")
        return rows

    def _table_rows(self, checked: list[_Checked]) -> list[dict[str, Any]]:
        """The table rows of checked records (a run's, made record by record: for the spool)."""
        rows: list[dict[str, Any]] = []
        for entry in checked:
            if isinstance(entry, _RunStretch):
                rows.extend(self._records_rows(entry))
            else:
                rows.append(entry)
        return rows

    def _write(self, checked: Sequence[_Checked]) -> bool:
        """Insert checked records; False when the database cannot take them now (the caller spools them)."""
        try:
            inserted = self._insert_rows(checked)
        except Exception as exc:
            self._mark_down(exc)
            return False
        self._mark_up()
        self._written += inserted
        if self._metrics is not None:
            self._metrics.count_log_written(inserted)
        return True

    def _insert_rows(self, checked: Sequence[_Checked]) -> int:
        """One INSERT for the batch; row by row if the database refuses it, giving up refused rows."""
        connection = self._connect()
        batch, unstorable = self._parameters(checked)
        inserted = 0
        try:
            if batch:
                with connection.begin():
                    result = connection.exec_driver_sql(self._insert.sql, [values for _, values in batch])
                    inserted = result.rowcount
        except Exception as exc:
            if _row_fault(exc) is None:
                raise
            inserted = self._insert_one_by_one(connection, batch)
        # Given up only now: had the database been down, these rows would have gone to the spool with the
        # rest of the batch, and been given up there (once, as here).
        for request_id, error in unstorable:
            self._give_up(1, "invalid", unwritable(request_id, error))
        return inserted

    def _insert_one_by_one(self, connection: Connection, batch: list[tuple[str, Parameters]]) -> int:
        inserted = 0
        for request_id, values in batch:
            try:
                with connection.begin():
                    inserted += connection.exec_driver_sql(self._insert.sql, [values]).rowcount
            except Exception as exc:
                reason = _row_fault(exc)
                if reason is None:
                    raise
                self._give_up(1, reason, _fault_message(request_id, exc))
        return inserted

    def _parameters(
        self, checked: Sequence[_Checked]
    ) -> tuple[list[tuple[str, Parameters]], list[tuple[str, Exception]]]:
        """(request id, the driver's values) of each row, and (request id, why) of the rows with a value
        JSON cannot hold (no retry can store those). A run's stretch is made column by column."""
        batch: list[tuple[str, Parameters]] = []
        unstorable: list[tuple[str, Exception]] = []
        for entry in checked:
            if isinstance(entry, _RunStretch):
                try:
                    batch.extend(
                        zip(
                            entry.run.request_ids[entry.first : entry.end],
                            self._run_parameters(entry),
                            strict=True,
                        )
                    )
                    continue
                except UnwritableValue:  # a value of some record's other columns: found record by record
                    # a refusal is not expected after the stretch's checks; given up once, with the rest
                    rows = self._records_rows(entry, refused=unstorable)
            else:
                rows = [entry]
            for row in rows:
                try:
                    batch.append((row["request_id"], self._insert.parameters(stored_row(row))))
                except UnwritableValue as exc:
                    unstorable.append((row["request_id"], exc))
        return batch, unstorable

    def _run_parameters(self, stretch: _RunStretch) -> list[Parameters]:
        """The driver's values of a run's checked records: the rows ``stored_row`` makes of them, column
        by column (their matrices packed, the other columns as JSON)."""
        run, first, end = stretch.run, stretch.first, stretch.end
        starts = run.starts[first : end + 1]
        columns: dict[str, Sequence[Any]] = {
            "request_id": run.request_ids[first:end],
            "rows": run.rows[first:end],
            "labels": [run.labels[start:stop] for start, stop in itertools.pairwise(starts)],
            "packed_features": pack_row_blocks(run.feature_names, run.features, starts),
            "packed_probabilities": pack_row_blocks(run.class_names, run.probabilities, starts),
            "latency_ms": run.latency_ms[first:end],
            "created_at": stretch.times,
        }
        same: dict[str, Any] = {
            "model": run.model,
            "version": run.version,
            "answered": run.answered,
            "probabilities": {},
        }
        if run.other is not None:
            columns["features"] = run.other[first:end]
        else:
            same["features"] = {}
        return self._insert.column_parameters(columns, same)

    def _connect(self) -> Connection:
        """The writer's connection; MissingTable when the database was never migrated (it is not, here)."""
        if self._connection is None:
            connection = self.engine.connect()
            try:
                with connection.begin():
                    present = inspect(connection).has_table(self._table_name)
            except BaseException:
                connection.close()
                raise
            if not present:
                connection.close()
                raise MissingTable(f"the database at {self._where} has no {self._table_name} table")
            self._connection = connection.execution_options(**{WRITE_OPTION: True, "preserve_rowcount": True})
        return self._connection

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            connection.invalidate()
        with contextlib.suppress(Exception):
            connection.close()

    def _mark_down(self, exc: BaseException) -> None:
        self._close_connection()
        state = DatabaseState.UNMIGRATED if isinstance(exc, MissingTable) else DatabaseState.UNREACHABLE
        spool = str(self._spool.path) if self._spool is not None else "nowhere (no spool)"
        if state is not self._state and state is DatabaseState.UNMIGRATED:
            logger.warning(
                "prediction log: the database at %s has no %s table; run `modelyard db upgrade`; "
                "spooling to %s meanwhile",
                self._where,
                self._table_name,
                spool,
            )
        elif state is not self._state:
            logger.warning(
                "prediction log: the database %s is unreachable (%s); spooling to %s",
                self._where,
                database_reason(exc),
                spool,
            )
        else:
            logger.debug("prediction log: the database is still %s: %s", state.value, database_reason(exc))
        if self._state is DatabaseState.UP:
            self._retry_delay_s = self._retry_initial_s
        else:
            self._retry_delay_s = min(self._retry_delay_s * 2, self._retry_max_s)
        self._state = state
        self._next_retry = time.monotonic() + self._retry_delay_s

    def _mark_up(self) -> None:
        if self._state is DatabaseState.UNREACHABLE:
            logger.info("prediction log: the database %s is reachable again", self._where)
        elif self._state is DatabaseState.UNMIGRATED:
            logger.info(
                "prediction log: the database at %s has its %s table now", self._where, self._table_name
            )
        self._state = DatabaseState.UP
        self._retry_delay_s = self._retry_initial_s

    def _to_spool(self, rows: list[dict[str, Any]]) -> None:
        lines = []
        for row in rows:
            try:
                lines.append(spool_line(row))
            except InvalidRecord as exc:
                self._give_up(1, "invalid", str(exc))
        if not lines:
            return
        spooled = 0
        if self._spool is not None:
            try:
                spooled = self._spool.append(lines)
            except OSError as exc:
                logger.error("prediction log: cannot write the spool %s: %s", self._spool.path, exc)
        self._spooled += spooled
        if self._metrics is not None:
            self._metrics.count_log_spooled(spooled)
        if spooled < len(lines):
            self._give_up(
                len(lines) - spooled, "spool_full", f"the spool is full ({self._spool_max_bytes} bytes)"
            )
        self._update_spool_gauge()

    def _replay_chunk(self) -> None:
        """Insert the next batch of spooled lines; on failure they stay for the next attempt."""
        spool = self._spool
        assert spool is not None
        lines, next_offset = spool.read(self._batch_size)
        rows: list[dict[str, Any]] = []
        for line in lines:
            try:
                rows.append(row_from_spool_line(line))
            except InvalidRecord as exc:
                self._give_up(1, "invalid", f"skipping an unreadable line of {spool.path}: {exc}")
        if rows and not self._write(rows):
            return
        spool.advance(next_offset)
        self._replayed += len(rows)
        if self._metrics is not None:
            self._metrics.count_log_replayed(len(rows))
        if not spool.pending:
            logger.info("prediction log: the spool is replayed (%d records in all)", self._replayed)
        self._update_spool_gauge()

    def _update_spool_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.set_log_spool_bytes(self.spool_bytes)

    # ------------------------------------------------------------ giving up, loudly

    def _give_up(self, count: int, reason: str, why: str) -> None:
        self._drops.give_up(count, reason, why)


__all__ = [
    "CONNECT_TIMEOUT_S",
    "PACK_MIN_ROWS",
    "DatabaseState",
    "InsertStatement",
    "LogMetrics",
    "MissingTable",
    "PredictionLog",
    "RecordIntake",
    "log_database_url",
    "stored_row",
]
