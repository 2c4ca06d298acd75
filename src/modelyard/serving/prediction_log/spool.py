"""The spool: where the prediction log keeps rows while the database cannot take them.

An append-only JSON-lines file, fsync'ed per append and bounded in bytes, with a replay offset: lines
before it are in the database, lines after it wait. When everything is replayed the file is truncated;
when an append would pass the bound the replayed head is cut off by an atomic rewrite first. One process
owns a spool file through a lock file; servers sharing a folder (several local `modelyard serve`) each
take the first free slot. A spool left by a crashed server is picked up by the next one to take its
slot, and a last line the crash left half-written is cut off.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from modelyard.storage import atomic_write

logger = logging.getLogger(__name__)

SPOOL_NAME = "predictions"
SPOOL_SLOTS = 32
_TAIL_READ = 1 << 16


class Spool:
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
        tail_start = max(0, self.size - _TAIL_READ)
        while True:
            chunk = os.pread(self._file.fileno(), self.size - tail_start, tail_start)
            newline = chunk.rfind(b"\n")
            if newline >= 0 or tail_start == 0:
                break
            tail_start = max(0, tail_start - _TAIL_READ * 16)
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
        """Mark the lines before ``offset`` as replayed."""
        self.offset = offset
        if self.offset >= self.size:
            # Everything is replayed: start the file afresh.
            self._file.truncate(0)
            os.fsync(self._file.fileno())
            self.offset = self.size = 0

    def _compact(self) -> None:
        """Rewrite the file without its replayed head, atomically (a crash leaves the old or the new)."""
        with atomic_write(self.path) as staging, staging.open("wb") as out:
            position = self.offset
            while position < self.size:
                chunk = os.pread(self._file.fileno(), min(1 << 22, self.size - position), position)
                out.write(chunk)
                position += len(chunk)
        self._file.close()
        self._file = self.path.open("a+b")
        self.size -= self.offset
        self.offset = 0

    def close(self) -> None:
        self._file.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock


__all__ = ["SPOOL_NAME", "SPOOL_SLOTS", "Spool"]
