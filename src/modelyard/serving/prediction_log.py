"""The prediction log: every answered row goes to the registry's ``predictions`` table, off the request path.

``submit`` only appends to a bounded in-memory queue; it never waits on the database, never blocks and
never raises. A writer thread drains the queue in batches (``batch_size`` rows, or whatever waited
``flush_interval_s``) with one executemany INSERT per batch.

When the database is unreachable the writer appends each batch to a local spool (JSON lines, fsync'ed
per batch, at most ``spool_max_bytes``) and retries the database with exponential backoff. Once the
database answers, the spool is replayed in order before any newer record, and truncated when done;
records arriving meanwhile join the end of the spool, so the order holds. A spool left by a crashed
server is replayed when the next one starts.

Nothing is written twice: every INSERT ignores rows whose (request_id, row, model) is already stored.
That is what makes a replay after a crash (or after a commit whose answer was lost with the
connection) safe. It also means request ids must be unique per model: the server should mint its own.

Records are given up only when there is no room: the queue is full (``queue_full``), the spool is full
or cannot be written (``spool_full``), the database refuses a row as such (``rejected``, e.g. a value
too long), a record is malformed (``invalid``), or it was submitted after ``stop`` (``stopped``). Each
is counted in ``dropped`` and in ``modelyard_prediction_log_dropped_total{reason}``, and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import math
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import Connection, Engine, Insert, Table
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, IntegrityError, StatementError

from modelyard.errors import ModelyardError, database_reason
from modelyard.registry.db import WRITE_OPTION, create_engine_for, ensure_schema, normalize_url, redact
from modelyard.registry.tables import MODEL_VERSION_LENGTH, NAME_LENGTH, REQUEST_ID_LENGTH, Prediction
from modelyard.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

SPOOL_NAME = "predictions"
# Servers sharing a spool folder (several local `modelyard serve`) each take the first free slot.
SPOOL_SLOTS = 32
# Longest a Postgres connection attempt may hang (a black-holed host), so retries keep their pace.
CONNECT_TIMEOUT_S = 5
# At most one warning per reason this often: a full queue must not flood the log from the hot path.
WARNING_INTERVAL_S = 10.0
_UNIQUE_KEY = ["request_id", "row", "model"]


@dataclass(frozen=True)
class PredictionRecord:
    """One answered row, as the data plane hands it over."""

    request_id: str
    row: int
    model: str
    version: str
    features: dict[str, Any]
    label: str | int
    probabilities: dict[str, float]
    latency_ms: float
    created_at: datetime


class _InvalidRecord(ValueError):
    pass


def _json_value(value: Any) -> Any:
    """A JSON-safe copy: numpy values unwrapped, NaN and infinities as null (JSON has neither)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _json_value(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(inner) for inner in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        with contextlib.suppress(TypeError, ValueError):
            return _json_value(tolist())
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _text(value: Any, *, field: str, limit: int | None) -> str:
    value = _json_value(value)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise _InvalidRecord(f"{field} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise _InvalidRecord(f"{field} is empty")
    if limit is not None and len(text) > limit:
        raise _InvalidRecord(f"{field} is longer than {limit} characters")
    return text


def _row_number(value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise _InvalidRecord(f"row must be an integer >= 0, got {value!r}") from None
    if number < 0 or isinstance(value, bool):
        raise _InvalidRecord(f"row must be an integer >= 0, got {value!r}")
    return number


def _latency(value: Any) -> float:
    try:
        latency_ms = float(value)
    except (TypeError, ValueError):
        raise _InvalidRecord(f"latency_ms must be a number, got {value!r}") from None
    if not math.isfinite(latency_ms):
        raise _InvalidRecord(f"latency_ms must be finite, got {latency_ms}")
    return latency_ms


def _moment(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise _InvalidRecord(f"created_at is not an ISO timestamp: {value!r}") from None
    if not isinstance(value, datetime):
        raise _InvalidRecord(f"created_at must be a datetime, got {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _mapping(value: Any, *, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _InvalidRecord(f"{field} must be a mapping, got {type(value).__name__}")
    cleaned: dict[str, Any] = _json_value(value)
    return cleaned


def _row(record: Any) -> dict[str, Any]:
    """The table row of a PredictionRecord (or of a spooled row); _InvalidRecord names a bad field."""
    if isinstance(record, PredictionRecord):
        fields: Mapping[str, Any] = record.__dict__
    elif isinstance(record, Mapping):
        fields = record
    else:
        raise _InvalidRecord(f"expected a PredictionRecord, got {type(record).__name__}")
    try:
        return {
            "request_id": _text(fields["request_id"], field="request_id", limit=REQUEST_ID_LENGTH),
            "row": _row_number(fields["row"]),
            "model": _text(fields["model"], field="model", limit=NAME_LENGTH),
            "version": _text(fields["version"], field="version", limit=MODEL_VERSION_LENGTH),
            "features": _mapping(fields["features"], field="features"),
            "label": _text(fields["label"], field="label", limit=None),
            "probabilities": _mapping(fields["probabilities"], field="probabilities"),
            "latency_ms": _latency(fields["latency_ms"]),
            "created_at": _moment(fields["created_at"]),
        }
    except KeyError as missing:
        raise _InvalidRecord(f"{missing.args[0]} is missing") from None


def _spool_line(row: dict[str, Any]) -> bytes:
    text = json.dumps(row, allow_nan=False, separators=(",", ":"), default=_json_value)
    return text.encode() + b"\n"


def _is_rejection(exc: BaseException) -> bool:
    """The database refused the data itself (retrying cannot help); anything else counts as an outage."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    # A StatementError that is no DBAPI error failed while binding parameters (e.g. serialising).
    return isinstance(exc, StatementError) and not hasattr(exc, "connection_invalidated")


class _Spool:
    """An append-only JSON-lines file with a replay offset, owned by one process through a lock file."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock_file: IO[bytes] | None = None
        for slot in range(SPOOL_SLOTS):
            suffix = "" if slot == 0 else f"-{slot}"
            lock_file = (folder / f"{SPOOL_NAME}{suffix}.lock").open("ab")
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                continue
            self._lock_file = lock_file
            self.path = folder / f"{SPOOL_NAME}{suffix}.jsonl"
            break
        else:
            raise OSError(f"all {SPOOL_SLOTS} spool slots in {folder} are held by other servers")
        self._file = self.path.open("a+b")
        self.offset = 0
        self.size = self._file.seek(0, os.SEEK_END)
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut a last line that a crash left half-written, so appends start on a fresh line."""
        if self.size == 0:
            return
        tail_start = max(0, self.size - 65536)
        while True:
            chunk = os.pread(self._file.fileno(), self.size - tail_start, tail_start)
            newline = chunk.rfind(b"\n")
            if newline >= 0 or tail_start == 0:
                break
            tail_start = max(0, tail_start - 65536 * 16)
        keep = tail_start + newline + 1 if newline >= 0 else 0
        if keep != self.size:
            logger.warning(
                "prediction spool %s: dropping %d bytes of a torn last line", self.path, self.size - keep
            )
            self._file.truncate(keep)
            os.fsync(self._file.fileno())
            self.size = keep

    @property
    def pending(self) -> int:
        """Bytes written but not replayed yet."""
        return self.size - self.offset

    def append(self, lines: Sequence[bytes]) -> int:
        """Append as many whole lines as fit (fsync'ed); return how many did."""
        needed = sum(len(line) for line in lines)
        if self.size + needed > self.max_bytes and self.offset > 0:
            self._compact()
        room = self.max_bytes - self.size
        fitting = 0
        for line in lines:
            if len(line) > room:
                break
            room -= len(line)
            fitting += 1
        if fitting:
            data = b"".join(lines[:fitting])
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.size += len(data)
        return fitting

    def read(self, max_lines: int) -> tuple[list[bytes], int]:
        """Up to ``max_lines`` whole lines from the replay offset, and the offset after them."""
        want = 1 << 20
        while True:
            chunk = os.pread(self._file.fileno(), min(want, self.pending), self.offset)
            lines = chunk.split(b"\n")[:-1][:max_lines]  # the last piece is an incomplete line, or b""
            if lines:
                return lines, self.offset + sum(len(line) + 1 for line in lines)
            if len(chunk) >= self.pending:  # no newline up to the end: hand it over as one (bad) line
                return [chunk], self.size
            want *= 4  # one line longer than the read: read more

    def advance(self, offset: int) -> None:
        self.offset = offset
        if self.offset >= self.size:
            # Everything is replayed: start the file afresh.
            self._file.truncate(0)
            os.fsync(self._file.fileno())
            self.offset = self.size = 0

    def _compact(self) -> None:
        """Rewrite the file without its replayed head, atomically (a crash leaves the old or the new)."""
        staging = self.path.with_suffix(".compacting")
        with staging.open("wb") as out:
            position = self.offset
            while position < self.size:
                chunk = os.pread(self._file.fileno(), min(1 << 22, self.size - position), position)
                out.write(chunk)
                position += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        staging.replace(self.path)
        self._file.close()
        self._file = self.path.open("a+b")
        self.size -= self.offset
        self.offset = 0

    def close(self) -> None:
        self._file.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock


class PredictionLog:
    """Writes PredictionRecords to the ``predictions`` table asynchronously; see the module docstring."""

    def __init__(
        self,
        database_url: str,
        *,
        spool_dir: Path,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        spool_max_bytes: int,
        metrics: ServingMetrics | None = None,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 5.0,
    ) -> None:
        for name, number in (
            ("queue_size", queue_size),
            ("batch_size", batch_size),
            ("flush_interval_s", flush_interval_s),
            ("spool_max_bytes", spool_max_bytes),
            ("retry_initial_s", retry_initial_s),
            ("retry_max_s", retry_max_s),
        ):
            if not number > 0:
                raise ValueError(f"{name} must be > 0, got {number!r}")
        url = normalize_url(database_url)
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
        self.engine: Engine = create_engine_for(url)
        self._where = redact(url)
        table = cast(Table, Prediction.__table__)
        self._insert: Insert = (
            postgresql_insert(table).on_conflict_do_nothing(index_elements=_UNIQUE_KEY)
            if url.get_backend_name() == "postgresql"
            else sqlite_insert(table).on_conflict_do_nothing(index_elements=_UNIQUE_KEY)
        )
        self._spool_dir = spool_dir
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._spool_max_bytes = spool_max_bytes
        self._metrics = metrics
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s

        # Shared with producers: the queue and the counters, under one short-held lock.
        self._lock = threading.Lock()
        self._queue: deque[PredictionRecord] = deque()
        self._submitted = 0  # records accepted into the queue
        self._handled = 0  # records taken off the queue and written, spooled or given up
        self._dropped = 0
        self._closed = False
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning: dict[str, float] = {}

        # The writer thread's own state.
        self._spool: _Spool | None = None
        self._connection: Connection | None = None
        self._schema_checked = False
        self._database_up = True
        self._retry_delay_s = retry_initial_s
        self._next_retry = 0.0
        self._written = 0
        self._spooled = 0
        self._replayed = 0

    # ------------------------------------------------------------ the caller's side

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def written(self) -> int:
        """Rows inserted into the database so far (replayed ones included)."""
        return self._written

    @property
    def spooled(self) -> int:
        """Rows written to the spool so far."""
        return self._spooled

    @property
    def replayed(self) -> int:
        """Spooled rows inserted into the database so far."""
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
        """Whether the last attempt to reach the database succeeded."""
        return self._database_up

    async def start(self) -> None:
        """Open the spool (replaying any a previous server left) and start the writer thread."""
        if self._thread is not None:
            return
        try:
            self._spool = await asyncio.to_thread(_Spool, self._spool_dir, self._spool_max_bytes)
        except OSError as exc:
            logger.error(
                "prediction log: no spool in %s (%s); predictions made while the database is "
                "unreachable will be dropped",
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
        self._thread = threading.Thread(target=self._run, name="modelyard-prediction-log", daemon=True)
        self._thread.start()

    def submit(self, records: Sequence[PredictionRecord]) -> None:
        """Queue records for writing. Never blocks on I/O and never raises."""
        try:
            count = len(records)
            if count == 0:
                return
            with self._lock:
                if self._closed:
                    accepted, reason = 0, "stopped"
                else:
                    accepted, reason = min(count, self._queue_size - len(self._queue)), "queue_full"
                    if accepted == count:
                        self._queue.extend(records)
                    elif accepted > 0:
                        self._queue.extend(itertools.islice(records, accepted))
                    self._submitted += accepted
                self._dropped += count - accepted
                depth = len(self._queue)
            if accepted < count:
                why = "the queue is full" if reason == "queue_full" else "submitted after stop()"
                self._count_dropped(count - accepted, reason, why)
            if self._metrics is not None:
                self._metrics.set_log_queue(depth)
            if depth >= self._batch_size:
                self._wakeup.set()
        except Exception:  # the request path must never fail because of the log
            logger.exception("prediction log: submit failed")

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record submitted so far is written, spooled or given up.

        True when they all reached the database (nothing waits in the queue or the spool), False
        when some wait in the spool for the database, or the timeout passed first.
        """
        target = self._submitted
        deadline = time.monotonic() + timeout_s
        self._wakeup.set()
        while self._handled < target and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                return False
            self._wakeup.set()  # again each time: more than one batch may be queued
            await asyncio.sleep(0.005)
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
            # Connect (and migrate) now rather than at the first record, so the tables exist early.
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
                if stopping and not self._queue:
                    break
        finally:
            self._close_connection()
            if self._spool is not None:
                self._spool.close()

    def _close_unstarted(self) -> None:
        try:
            self._spool = _Spool(self._spool_dir, self._spool_max_bytes)
        except OSError as exc:
            logger.error("prediction log: no spool in %s (%s)", self._spool_dir, exc)
        while batch := self._take():
            self._to_spool(self._rows(batch))
        if self._spool is not None:
            self._spool.close()

    def _take(self) -> list[PredictionRecord]:
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
        # Replay without pause while the database takes it.
        return self._waiting_in_spool() and self._database_up

    def _wait_time(self) -> float:
        if self._waiting_in_spool() and not self._database_up:
            return max(0.0, min(self._flush_interval_s, self._next_retry - time.monotonic()))
        return self._flush_interval_s

    def _waiting_in_spool(self) -> bool:
        return self._spool is not None and self._spool.pending > 0

    def _database_due(self) -> bool:
        return self._database_up or time.monotonic() >= self._next_retry

    def _handle(self, batch: list[PredictionRecord]) -> None:
        rows = self._rows(batch)
        if self._waiting_in_spool():
            # Older records wait in the spool: newer ones queue up behind them.
            self._to_spool(rows)
            if self._database_due() and not self._stopping.is_set():
                self._replay_chunk()
        elif rows:
            # Down and too early to try again, or the attempt failed: the spool keeps them.
            written = self._database_due() and self._write(rows)
            if not written:
                self._to_spool(rows)
        with self._lock:
            self._handled += len(batch)

    def _rows(self, batch: list[PredictionRecord]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for record in batch:
            try:
                rows.append(_row(record))
            except _InvalidRecord as exc:
                request_id = getattr(record, "request_id", "?")
                self._give_up(1, "invalid", f"the record of request {request_id!r} is invalid: {exc}")
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        """Insert rows; False when the database is unreachable (the caller spools them)."""
        try:
            inserted = self._insert_rows(rows)
        except Exception as exc:
            self._mark_down(exc)
            return False
        self._mark_up()
        self._written += inserted
        if self._metrics is not None:
            self._metrics.count_log_written(inserted)
        return True

    def _insert_rows(self, rows: list[dict[str, Any]]) -> int:
        """One INSERT for the batch; row by row if the database refuses it, giving up refused rows."""
        connection = self._connect()
        try:
            with connection.begin():
                connection.execute(self._insert, rows)
            return len(rows)
        except Exception as exc:
            if not _is_rejection(exc):
                raise
        inserted = 0
        for row in rows:
            try:
                with connection.begin():
                    connection.execute(self._insert, [row])
                inserted += 1
            except Exception as exc:
                if not _is_rejection(exc):
                    raise
                reason = database_reason(exc)
                self._give_up(1, "rejected", f"the database refused {row['request_id']!r}: {reason}")
        return inserted

    def _connect(self) -> Connection:
        if self._connection is None:
            if not self._schema_checked:
                try:
                    ensure_schema(self.engine)
                except ModelyardError as exc:
                    if exc.__cause__ is not None:  # the database could not be reached
                        raise
                    logger.warning("prediction log: %s; writing anyway", exc.message)
                self._schema_checked = True
            self._connection = self.engine.connect().execution_options(**{WRITE_OPTION: True})
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
        if self._database_up:
            logger.warning(
                "prediction log: the database %s is unreachable (%s); spooling to %s",
                self._where,
                database_reason(exc),
                self._spool.path if self._spool is not None else "nowhere (no spool)",
            )
            self._retry_delay_s = self._retry_initial_s
        else:
            logger.debug("prediction log: the database is still unreachable: %s", database_reason(exc))
            self._retry_delay_s = min(self._retry_delay_s * 2, self._retry_max_s)
        self._database_up = False
        self._next_retry = time.monotonic() + self._retry_delay_s

    def _mark_up(self) -> None:
        if not self._database_up:
            logger.info("prediction log: the database %s is reachable again", self._where)
        self._database_up = True
        self._retry_delay_s = self._retry_initial_s

    def _to_spool(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        lines = [_spool_line(row) for row in rows]
        spooled = 0
        if self._spool is not None:
            try:
                spooled = self._spool.append(lines)
            except OSError as exc:
                logger.error("prediction log: cannot write the spool %s: %s", self._spool.path, exc)
        self._spooled += spooled
        if self._metrics is not None:
            self._metrics.count_log_spooled(spooled)
        if spooled < len(rows):
            self._give_up(
                len(rows) - spooled, "spool_full", f"the spool is full ({self._spool_max_bytes} bytes)"
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
                rows.append(_row(json.loads(line)))
            except (ValueError, _InvalidRecord) as exc:  # JSONDecodeError is a ValueError
                self._give_up(1, "invalid", f"skipping an unreadable line of {spool.path}: {exc}")
        if rows and not self._write(rows):
            return
        spool.advance(next_offset)
        self._replayed += len(rows)
        if self._metrics is not None:
            self._metrics.count_log_replayed(len(rows))
        if not spool.pending:
            logger.info("prediction log: the spool is replayed (%d rows in all)", self._replayed)
        self._update_spool_gauge()

    def _update_spool_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.set_log_spool_bytes(self.spool_bytes)

    # ------------------------------------------------------------ giving up, loudly

    def _give_up(self, count: int, reason: str, why: str) -> None:
        with self._lock:
            self._dropped += count
        self._count_dropped(count, reason, why)

    def _count_dropped(self, count: int, reason: str, why: str) -> None:
        if self._metrics is not None:
            self._metrics.count_log_dropped(count, reason)
        now = time.monotonic()
        if now - self._last_warning.get(reason, -math.inf) >= WARNING_INTERVAL_S:
            self._last_warning[reason] = now
            detail = f": {why}" if why else ""
            logger.warning("prediction log: dropped %d record(s) (%s)%s", count, reason, detail)
