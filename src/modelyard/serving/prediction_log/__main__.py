"""``python -m modelyard.serving.prediction_log``: the prediction-log writer process a server starts.

It reads frames (``wire``) on stdin: the configuration, then batches of records and flush requests.
It runs a PredictionLog on them, and reports what the log did as STATUS frames on stdout. It never
stops on a signal: the server that started it decides when, by closing its stdin (also when the server
dies), and it then writes or spools what it holds and exits. Its own log lines go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any

import orjson

from modelyard.serving.prediction_log import wire
from modelyard.serving.prediction_log.records import one_entry_per_record
from modelyard.serving.prediction_log.writer import PredictionLog

logger = logging.getLogger("modelyard.serving.prediction_log")

# How often the writer reports its counts while they change; a flush is answered at once.
STATUS_INTERVAL_S = 0.2


class Tally:
    """The log's counts (``writer.LogMetrics``), reported to the server, whose metrics take them over."""

    def __init__(self) -> None:
        self.queue = 0
        self.written = 0
        self.spooled = 0
        self.replayed = 0
        self.spool_bytes = 0
        self.dropped: dict[str, int] = {}

    def set_log_queue(self, depth: int) -> None:
        self.queue = depth

    def count_log_dropped(self, n: int, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def count_log_written(self, n: int) -> None:
        self.written += n

    def count_log_spooled(self, n: int) -> None:
        self.spooled += n

    def count_log_replayed(self, n: int) -> None:
        self.replayed += n

    def set_log_spool_bytes(self, size: int) -> None:
        self.spool_bytes = size


class Reporter:
    """Writes STATUS frames: the log's counts so far, and the answers to flushes. Once the server is gone
    (its end of the pipe closed) it stops writing, and the writer goes on until its input ends."""

    def __init__(self, out: IO[bytes], log: PredictionLog, tally: Tally) -> None:
        self._out = out
        self._log = log
        self._tally = tally
        self._last: bytes = b""
        self.server_gone = False
        self.unreadable = 0  # records of frames that could not be decoded: given up, and settled

    def give_up_unreadable(self, count: int, why: str) -> None:
        logger.error("prediction log writer: dropped %d record(s) (invalid): %s", count, why)
        self.unreadable += count
        self._tally.count_log_dropped(count, "invalid")

    def status(self, **answer: Any) -> dict[str, Any]:
        log, tally = self._log, self._tally
        spool = log.spool_path
        return {
            "settled": log.settled + self.unreadable,
            "written": tally.written,
            "spooled": tally.spooled,
            "replayed": tally.replayed,
            "dropped": tally.dropped,
            "queue": tally.queue,
            "spool_bytes": log.spool_bytes,
            "spool_path": str(spool) if spool is not None else None,
            "database": log.database_state.value,
            **answer,
        }

    def send(self, *, changed_only: bool = False, **answer: Any) -> None:
        if self.server_gone:
            return
        payload = orjson.dumps(self.status(**answer))
        if changed_only and payload == self._last:
            return
        self._last = payload
        try:
            self._out.write(wire.frame(wire.STATUS, payload))
            self._out.flush()
        except OSError:
            self.server_gone = True


def _read_frames(stream: IO[bytes], loop: asyncio.AbstractEventLoop, frames: asyncio.Queue[Any]) -> None:
    """Hand each frame of ``stream`` to the loop; None once it ends (or breaks)."""
    try:
        while (next_frame := wire.read_frame(stream)) is not None:
            loop.call_soon_threadsafe(frames.put_nowait, next_frame)
    except (OSError, wire.FrameError) as exc:
        logger.error("prediction log writer: the server's stream broke: %s", exc)
    loop.call_soon_threadsafe(frames.put_nowait, None)


async def _report_while_running(reporter: Reporter, stopped: asyncio.Event) -> None:
    while not stopped.is_set():
        reporter.send(changed_only=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), STATUS_INTERVAL_S)


async def _answer_flush(log: PredictionLog, reporter: Reporter, ticket: int, timeout_s: float) -> None:
    """Flush the log and answer ``ticket``: on a task of its own, so records keep coming in meanwhile."""
    complete = await log.flush(timeout_s=timeout_s)
    reporter.send(flushed=ticket, complete=complete)


async def serve(config: dict[str, Any], source: IO[bytes], out: IO[bytes]) -> None:
    """Run a PredictionLog on the records of ``source`` until it ends, reporting on ``out``."""
    tally = Tally()
    log = PredictionLog(
        config["database_url"],
        spool_dir=Path(config["spool_dir"]),
        queue_size=config["queue_size"],
        batch_size=config["batch_size"],
        flush_interval_s=config["flush_interval_s"],
        spool_max_bytes=config["spool_max_bytes"],
        metrics=tally,
    )
    reporter = Reporter(out, log, tally)
    # What is alive now (the modules, the engine) lives as long as this process: frozen, the collector's
    # full collections, which the records' churn sets off, no longer scan it (a sixth of the writer's
    # CPU). Before the writer thread starts, so that what is frozen does not depend on how far it got.
    gc.collect()
    gc.freeze()
    await log.start()
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[Any] = asyncio.Queue()
    threading.Thread(target=_read_frames, args=(source, loop, frames), daemon=True).start()
    stopped = asyncio.Event()
    reporting = asyncio.create_task(_report_while_running(reporter, stopped))
    flushes: set[asyncio.Task[None]] = set()
    try:
        while (next_frame := await frames.get()) is not None:
            kind, payload = next_frame
            if kind == wire.RECORDS:
                try:
                    entries = wire.decode_records(payload)
                except wire.FrameError as exc:  # not from our own server; said, and never fatal
                    reporter.give_up_unreadable(wire.record_count(payload), str(exc))
                else:
                    log.submit(one_entry_per_record(entries))
            elif kind == wire.FLUSH:
                try:
                    request = orjson.loads(payload)
                    ticket, timeout_s = int(request["ticket"]), float(request["timeout_s"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    logger.error("prediction log writer: skipping a flush request it cannot read: %s", exc)
                    continue
                task = asyncio.create_task(_answer_flush(log, reporter, ticket, timeout_s))
                flushes.add(task)
                task.add_done_callback(flushes.discard)
    finally:  # the input ended (or a bug ended the loop): nothing already submitted is left behind
        await log.stop()  # writes or spools every record submitted, whatever ended the loop
        stopped.set()
        await asyncio.gather(reporting, *flushes, return_exceptions=True)
        reporter.send(stopped=True)


def main() -> None:
    # The server decides when this process ends (a Ctrl-C reaches the whole process group; a pod's
    # SIGTERM may too): on a signal it would lose what it holds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Frames go out on the original stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    source = sys.stdin.buffer
    first = wire.read_frame(source)
    if first is None or first[0] != wire.CONFIG:
        sys.exit("python -m modelyard.serving.prediction_log: expected a CONFIG frame on stdin")
    config = orjson.loads(first[1])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("modelyard")
    ours.addHandler(handler)
    ours.propagate = False
    ours.setLevel(config.get("log_level", "INFO"))
    asyncio.run(serve(config, source, out))


if __name__ == "__main__":
    main()
