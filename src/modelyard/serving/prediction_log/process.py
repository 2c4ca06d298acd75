"""The server's prediction log, written by a process of its own: the log's work leaves the server's GIL.

A PredictionLog in the server's process checks, converts and inserts each record on a thread that
shares the event loop's GIL, so the event loop waits for it. Here the server only queues each record
and, on a thread, sends batches of them as frames (``wire``: a microsecond or two a record, the arrays as
raw bytes) to ``python -m modelyard.serving.prediction_log``, which runs the PredictionLog (database,
spool, replay) and reports back what it did. The server's metrics take those counts over, so the
dashboards and alerts read the same series.

Nothing is lost when the writer dies: a batch stays in the server's memory until the writer reports it
settled (written, spooled or given up), and a writer started again is sent every unsettled batch; the
log's INSERT skips rows already stored, so a batch sent twice is stored once (the counts may then be
off by what the dead writer did but never reported). When the server stops it closes the writer's
input; the writer writes or spools what it holds and exits, or is killed at the stop deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Engine

from modelyard.registry.db import create_engine_for
from modelyard.serving.prediction_log import wire
from modelyard.serving.prediction_log.records import unwritable
from modelyard.serving.prediction_log.writer import (
    DatabaseState,
    LogMetrics,
    RecordIntake,
    log_database_url,
)
from modelyard.serving.sink import PredictionRecord

logger = logging.getLogger(__name__)

WRITER_COMMAND = (sys.executable, "-m", "modelyard.serving.prediction_log")
# Records wait at most this long in the server before they are sent (a full batch goes at once). Each
# time the feeding thread wakes it takes the GIL from the event loop, and the writer has a frame more to
# read: fewer, larger sends cost a loaded server less throughput (docs/benchmarks.md, issue 12).
SEND_INTERVAL_S = 0.2
# The writer's input pipe holds this much (Linux's default is 64 KiB): a second of single-row records at
# a few thousand a second is sent without waiting for the writer to read.
PIPE_BYTES = 1 << 20
# A frame carries about this many rows at most (about 700 KiB for 20 features): the writer reads each
# frame whole, and frames of tens of megabytes cost it more kernel time (docs/benchmarks.md, issue 12).
FRAME_ROWS = 4096
# Starting a writer again is retried with backoff while it keeps failing.
RESTART_INITIAL_S = 0.5
RESTART_MAX_S = 30.0
# While the server stops, a writer that dies is started again this many times before its records go.
STOP_ATTEMPTS = 3
# Longest stop() waits for the writer to write or spool what it holds; then it is killed.
STOP_TIMEOUT_S = 30.0


@dataclass(eq=False)
class _FlushWaiter:
    """A flush() in progress: answered (on its own loop) once the writer answered its ``ticket``."""

    ticket: int
    timeout_s: float
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[bool] = field(repr=False)


def _answer(done: asyncio.Future[bool], complete: bool) -> None:
    if not done.done():
        done.set_result(complete)


@dataclass
class _Writer:
    """One writer process, and how far its reports have come."""

    process: subprocess.Popen[bytes]
    reader: threading.Thread | None = None
    settled: int = 0  # records sent to this writer that it reported settled (the server forgot them)
    counts: dict[str, Any] = field(default_factory=dict)  # its last report


class PredictionLogProcess(RecordIntake[PredictionRecord]):
    """A PredictionSink whose records a writer process stores; see the module docstring.

    Its arguments are the PredictionLog's, which the writer process runs; ``engine`` is the server's own
    connection to the same database (feedback and live accuracy read through it).
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
        log_level: str = "INFO",
        send_interval_s: float = SEND_INTERVAL_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        command: Sequence[str] = WRITER_COMMAND,
    ) -> None:
        super().__init__(
            queue_size=queue_size,
            batch_size=batch_size,
            metrics=metrics,
            numbers={
                "flush_interval_s": flush_interval_s,
                "spool_max_bytes": spool_max_bytes,
                "send_interval_s": send_interval_s,
                "stop_timeout_s": stop_timeout_s,
            },
        )
        self.engine: Engine = create_engine_for(log_database_url(database_url))
        self._config = {
            "database_url": database_url,
            "spool_dir": str(spool_dir),
            "queue_size": queue_size,
            "batch_size": batch_size,
            "flush_interval_s": flush_interval_s,
            "spool_max_bytes": spool_max_bytes,
            "log_level": log_level,
        }
        self._command = list(command)
        self._send_interval_s = send_interval_s
        self._stop_timeout_s = stop_timeout_s
        self._stop_deadline = math.inf

        # Under the intake's lock, with the queue (the reader takes it too).
        # (records, RECORDS payload) sent, not settled
        self._unsettled: deque[tuple[int, list[wire.Part]]] = deque()
        self._unsettled_records = 0
        self._taken = 0  # records taken off the queue: sent, or given up as invalid
        self._flush_waiters: list[_FlushWaiter] = []
        # Each flush() takes the next ticket; the writer is asked to flush once every record submitted
        # before the newest ticket is sent, and its answer to a ticket answers every earlier one too.
        self._flush_ticket = 0
        self._flush_target = 0  # records submitted when the newest ticket was taken
        self._flush_sent = 0  # the newest ticket the current writer was asked about
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._feeding = False  # the feeding thread runs and answers flushes
        self._totals = {"written": 0, "spooled": 0, "replayed": 0}
        self._spool_bytes = 0
        self._spool_path: Path | None = None
        self._state = DatabaseState.UP
        self._writer: _Writer | None = None

    # ------------------------------------------------------------ the caller's side

    @property
    def written(self) -> int:
        """Records (requests) inserted into the database so far, as ``PredictionLog.written`` counts them."""
        return self._totals["written"]

    @property
    def spooled(self) -> int:
        return self._totals["spooled"]

    @property
    def replayed(self) -> int:
        return self._totals["replayed"]

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes

    @property
    def spool_path(self) -> Path | None:
        return self._spool_path

    @property
    def database_available(self) -> bool:
        return self._state is DatabaseState.UP

    @property
    def database_state(self) -> DatabaseState:
        return self._state

    @property
    def writer_pid(self) -> int | None:
        writer = self._writer
        return writer.process.pid if writer is not None else None

    async def start(self) -> None:
        """Start the writer process and the thread that feeds it."""
        if self._thread is not None:
            return
        self._feeding = True
        self._thread = threading.Thread(target=self._run, name="modelyard-prediction-log", daemon=True)
        self._thread.start()

    def _backlog(self, depth: int) -> int:
        # Records sent to the writer stay here until it settles them.
        return depth + self._unsettled_records

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the writer has written every record submitted so far (or spooled it while the
        database cannot take it, or given it up), or ``timeout_s`` passed. True when every record
        reached the database and nothing waits in the spool."""
        loop = asyncio.get_running_loop()
        with self._lock:
            target = self._submitted
            if not self._feeding:
                return self._taken >= target and not self._unsettled and self._spool_bytes == 0
            self._flush_ticket += 1
            self._flush_target = target
            waiter = _FlushWaiter(self._flush_ticket, timeout_s, loop, loop.create_future())
            self._flush_waiters.append(waiter)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(waiter.done, timeout_s)
        except TimeoutError:
            return False
        finally:
            with self._lock, contextlib.suppress(ValueError):  # already answered
                self._flush_waiters.remove(waiter)

    async def stop(self) -> None:
        """Send what is queued, let the writer write or spool it, and wait for the writer to exit."""
        with self._lock:
            self._closed = True
            self._stop_deadline = time.monotonic() + self._stop_timeout_s
        self._stopping.set()
        self._wakeup.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        elif self._queue:  # never started: a writer still takes what was queued
            await asyncio.to_thread(self._run)
        self.engine.dispose()

    # ------------------------------------------------------------ the feeding thread

    def _run(self) -> None:
        restart_delay_s = RESTART_INITIAL_S
        attempts_while_stopping = 0
        launch_failed = False
        try:
            while True:
                try:
                    writer = self._writer
                    if self._stopping.is_set() and time.monotonic() > self._stop_deadline:
                        self._give_up_stopping(writer)
                        return
                    if writer is None or writer.process.poll() is not None:
                        if writer is not None:
                            self._bury(writer)
                        if self._stopping.is_set():
                            if not self._queue and not self._unsettled:
                                return
                            attempts_while_stopping += 1
                            if attempts_while_stopping > STOP_ATTEMPTS:
                                self._abandon(f"no writer settled them in {STOP_ATTEMPTS} attempts")
                                return
                        if writer is not None or launch_failed:  # not again at once
                            self._stopping.wait(restart_delay_s)
                            restart_delay_s = min(restart_delay_s * 2, RESTART_MAX_S)
                        launch_failed = not self._launch()
                        continue
                    if writer.settled:  # this writer works: a later death is retried quickly again
                        restart_delay_s = RESTART_INITIAL_S
                    if not self._has_work():
                        self._wakeup.wait(self._send_interval_s)
                        self._wakeup.clear()
                    try:
                        self._send_queued(writer)
                        if self._stopping.is_set() and not self._queue:
                            self._finish(writer)
                    except OSError:  # the writer is gone: the loop buries it and starts another
                        pass
                except Exception:  # a bug here must not end the log; the records stay queued
                    logger.exception("prediction log: feeding the writer failed; retrying in a second")
                    self._stopping.wait(1.0)
        finally:
            self._release_flushers()

    def _has_work(self) -> bool:
        return (
            len(self._queue) >= self._batch_size
            or self._stopping.is_set()
            or self._flush_ticket > self._flush_sent
        )

    def _launch(self) -> bool:
        """Start a writer, and send it the configuration and every unsettled batch; False when it could
        not be started (the caller waits before the next attempt)."""
        try:
            # A session of its own: a Ctrl-C at the terminal reaches the server, which stops its writer.
            process = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
                bufsize=0,  # frames are written with writev, never through a buffer
            )
        except OSError as exc:
            logger.error("prediction log: cannot start the writer %s: %s", " ".join(self._command), exc)
            return False
        if hasattr(fcntl, "F_SETPIPE_SZ") and process.stdin is not None:
            with contextlib.suppress(OSError):  # above the system's pipe-max-size: the default then
                fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        writer = _Writer(process)
        reader = threading.Thread(
            target=self._read_reports, args=(writer,), name="modelyard-prediction-log-reports", daemon=True
        )
        self._writer = writer
        with self._lock:
            self._flush_sent = 0  # a flush the last writer did not answer is asked of this one
            resend = list(self._unsettled)
        writer.reader = reader
        reader.start()
        try:
            self._write(writer, wire.CONFIG, [orjson.dumps(self._config)])
            for _, payload in resend:
                self._write(writer, wire.RECORDS, payload)
        except OSError:
            return True  # it died at once: the loop notices, and starts another after a pause
        if resend:
            logger.warning(
                "prediction log: sent %d unsettled record(s) to the new writer (pid %d)",
                sum(count for count, _ in resend),
                process.pid,
            )
        return True

    def _bury(self, writer: _Writer) -> None:
        """Collect a writer that exited, and its last reports."""
        if writer.reader is not None:
            writer.reader.join()
        with contextlib.suppress(OSError):
            if writer.process.stdin is not None:
                writer.process.stdin.close()
        code = writer.process.wait()
        self._writer = None
        if self._unsettled:
            logger.error(
                "prediction log: the writer (pid %d) exited with %s before it settled %d record(s); "
                "starting another",
                writer.process.pid,
                code,
                self._unsettled_records,
            )
        elif code != 0:
            logger.error("prediction log: the writer (pid %d) exited with %s", writer.process.pid, code)

    def _send_queued(self, writer: _Writer) -> None:
        while True:
            with self._lock:
                batch = self._next_frame()
            if not batch:
                break
            payload, count = self._encode(batch)
            with self._lock:
                self._taken += len(batch)
                if count:
                    self._unsettled.append((count, payload))
                    self._unsettled_records += count
            if count:
                self._write(writer, wire.RECORDS, payload)
        with self._lock:
            ticket = self._flush_ticket if self._taken >= self._flush_target else 0
            timeout_s = max((w.timeout_s for w in self._flush_waiters), default=0.0)
        if ticket > self._flush_sent:
            self._flush_sent = ticket
            self._write(writer, wire.FLUSH, [orjson.dumps({"ticket": ticket, "timeout_s": timeout_s})])

    def _next_frame(self) -> list[PredictionRecord]:
        """The queued records the next frame carries: at most a batch, and at most about FRAME_ROWS rows
        (the record that reaches them goes too). Call with the lock held."""
        batch: list[PredictionRecord] = []
        rows = 0
        queue = self._queue
        while queue and len(batch) < self._batch_size and rows < FRAME_ROWS:
            record = queue.popleft()
            batch.append(record)
            count = record.rows
            rows += count if type(count) is int and count > 0 else 1  # the writer refuses a bad count
        return batch

    def _encode(self, batch: list[PredictionRecord]) -> tuple[list[wire.Part], int]:
        """The RECORDS payload of a batch, and its record count; a record no JSON can carry is given up."""
        try:
            return wire.encode_records(batch), len(batch)
        except Exception:  # one bad record: find it, keep the rest
            kept = []
            for record in batch:
                try:
                    wire.encode_records([record])
                except Exception as exc:
                    request_id = getattr(record, "request_id", "?")
                    self._drops.give_up(1, "invalid", unwritable(request_id, exc))
                else:
                    kept.append(record)
            return (wire.encode_records(kept), len(kept)) if kept else ([], 0)

    @staticmethod
    def _write(writer: _Writer, kind: int, payload: list[wire.Part]) -> None:
        stdin = writer.process.stdin
        assert stdin is not None
        wire.write_frame(stdin.fileno(), kind, payload)

    def _finish(self, writer: _Writer) -> None:
        """Close the writer's input and wait (until the stop deadline) for it to write or spool
        everything and exit."""
        stdin = writer.process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError):
            stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):  # the loop gives up on it
            writer.process.wait(max(0.0, self._stop_deadline - time.monotonic()))

    def _give_up_stopping(self, writer: _Writer | None) -> None:
        """The stop deadline passed: end the writer, and give up what it had not settled."""
        if writer is not None and writer.process.poll() is None:
            writer.process.kill()
            self._bury(writer)
        self._abandon(f"the writer did not finish within {self._stop_timeout_s:g} s of the stop")

    def _abandon(self, why: str) -> None:
        """Give up what no writer settled while the server stopped."""
        with self._lock:
            lost = self._unsettled_records + len(self._queue)
            self._unsettled.clear()
            self._unsettled_records = 0
            self._queue.clear()
        if lost:
            self._drops.give_up(lost, "writer_failed", why)

    # ------------------------------------------------------------ the writer's reports

    def _read_reports(self, writer: _Writer) -> None:
        stream: IO[bytes] | None = writer.process.stdout
        assert stream is not None
        try:
            while (next_frame := wire.read_frame(stream)) is not None:
                kind, payload = next_frame
                if kind == wire.STATUS:
                    self._take_report(writer, orjson.loads(payload))
        except Exception:
            # Unheard, the writer's records would never settle: it is ended, and the feeding thread
            # starts another and sends it what this one had not settled.
            logger.exception("prediction log: cannot read the writer's reports; ending it")
            with contextlib.suppress(OSError):
                writer.process.kill()
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            self._wakeup.set()

    def _take_report(self, writer: _Writer, report: dict[str, Any]) -> None:
        last = writer.counts
        with self._lock:
            settled = int(report["settled"])
            while self._unsettled and settled - writer.settled >= self._unsettled[0][0]:
                count, _ = self._unsettled.popleft()
                writer.settled += count
                self._unsettled_records -= count
            depth = self._backlog(len(self._queue))
            waiters = self._flush_waiters
            flushed = report.get("flushed")
            answered = [] if flushed is None else [w for w in waiters if w.ticket <= flushed]
            self._flush_waiters = [w for w in waiters if w not in answered]
            added = {
                name: int(report[name]) - int(last.get(name, 0))
                for name in ("written", "spooled", "replayed")
            }
            dropped = {
                reason: int(count) - int(last.get("dropped", {}).get(reason, 0))
                for reason, count in report["dropped"].items()
            }
            for name, count in added.items():
                self._totals[name] += count
        writer.counts = report
        for reason, count in dropped.items():
            if count > 0:  # the writer said why in its own log
                self._drops.count_said_elsewhere(count, reason)
        if self._metrics is not None:
            self._metrics.count_log_written(added["written"])
            self._metrics.count_log_spooled(added["spooled"])
            self._metrics.count_log_replayed(added["replayed"])
        self._spool_bytes = int(report["spool_bytes"])
        self._spool_path = Path(report["spool_path"]) if report["spool_path"] else None
        self._state = DatabaseState(report["database"])
        if self._metrics is not None:
            self._metrics.set_log_spool_bytes(self._spool_bytes)
            self._metrics.set_log_queue(depth)
        for waiter in answered:
            with contextlib.suppress(RuntimeError):  # its event loop is closed: nobody waits any more
                waiter.loop.call_soon_threadsafe(_answer, waiter.done, bool(report.get("complete")))

    def _release_flushers(self) -> None:
        """Answer every flush still waiting, and any later one at once: the feeding is over."""
        with self._lock:
            self._feeding = False
            waiters, self._flush_waiters = self._flush_waiters, []
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):
                waiter.loop.call_soon_threadsafe(_answer, waiter.done, False)


__all__ = ["SEND_INTERVAL_S", "WRITER_COMMAND", "PredictionLogProcess"]
