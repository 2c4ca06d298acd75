"""Batch scoring jobs the console runs: an uploaded CSV scored by the batch scoring path (``score``, as
`modelyard score` runs it) on a thread, with the rows done and the total for the page to poll, and the
scored CSV kept until the job is forgotten.

Jobs live in the console's memory and its scratch folder, under ids the console makes: a download is
found by id, never by a path the client names. At most ``MAX_RUNNING`` jobs score at once (Busy, a 503,
beyond); the newest ``KEEP_FINISHED`` finished jobs keep their files, and
older ones are deleted with their folders.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.console import service
from modelyard.errors import Busy, Conflict, ModelyardError, NotFound
from modelyard.settings import Settings

MAX_RUNNING = 2
KEEP_FINISHED = 8
SCORED_FILE = "scored.csv"

log = logging.getLogger(__name__)


@dataclass
class ScoringJob:
    id: str
    model: str
    filename: str
    status: str = "running"  # running, done, failed
    step: str = "reading the model and the file"
    rows_done: int = 0
    rows_total: int | None = None
    message: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "step": self.step,
            "rows_done": self.rows_done,
            "rows_total": self.rows_total,
            "message": self.message,
            "filename": self.filename,
            "download": f"/api/score/{self.id}/result" if self.status == "done" else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class ScoringJobs:
    """The console's scoring jobs, by id, each in a folder of its own under one scratch root."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._root: Path | None = None  # made by the first job
        self._jobs: dict[str, ScoringJob] = {}
        self._lock = threading.Lock()

    def start(self, name: str, version: int, content: bytes) -> ScoringJob:
        """Check what can be told at once (empty, not text), then score on a thread."""
        service.check_upload(content)
        with self._lock:
            running = [job for job in self._jobs.values() if job.status == "running"]
            if len(running) >= MAX_RUNNING:
                raise Busy(
                    f"the console is busy: {len(running)} files are being scored already "
                    f"({', '.join(j.model for j in running)}); try again when one has finished"
                )
            job = ScoringJob(
                id=uuid.uuid4().hex[:16], model=f"{name}@{version}", filename=f"{name}-v{version}-scored.csv"
            )
            self._jobs[job.id] = job
            self._forget_old()
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="modelyard-console-scoring-"))
            folder = self._root / job.id
        folder.mkdir()
        thread = threading.Thread(
            target=self._score, args=(job, content, folder), name=f"score-{job.id}", daemon=True
        )
        thread.start()
        return job

    def get(self, job_id: str) -> ScoringJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(
                f"no scoring job {job_id!r} in this console (the newest {KEEP_FINISHED} are kept until it "
                "restarts): score the file again"
            )
        return job

    def result(self, job_id: str) -> tuple[ScoringJob, Path]:
        """The finished job and its scored CSV; a Conflict while it runs, its error when it failed."""
        job = self.get(job_id)
        if job.status == "running":
            raise Conflict(f"scoring job {job_id} is still running ({job.rows_done} rows scored)")
        if job.status == "failed":
            raise Conflict(f"scoring job {job_id} failed, it has no result: {job.message}")
        assert self._root is not None  # a job exists, so its root does
        return job, self._root / job.id / SCORED_FILE

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def _forget_old(self) -> None:
        finished = sorted(
            (job for job in self._jobs.values() if job.status != "running"), key=lambda job: job.started_at
        )
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]
            if self._root is not None:
                shutil.rmtree(self._root / job.id, ignore_errors=True)

    def _score(self, job: ScoringJob, content: bytes, folder: Path) -> None:
        def progress(done: int, total: int) -> None:
            job.rows_done, job.rows_total = done, total
            job.step = "scoring" if done < total else "writing the scored CSV"

        try:
            _, summary = service.score_csv(
                self._settings, job.model, content, folder, SCORED_FILE, progress=progress
            )
        except ModelyardError as exc:
            job.status, job.message = "failed", exc.message
        except Exception as exc:  # a thread's failure must reach the page, not vanish into the log
            log.exception("scoring job %s failed", job.id)
            job.status = "failed"
            job.message = f"scoring failed ({type(exc).__name__}); the details are in the console's log"
        else:
            job.rows_done = job.rows_total = int(summary["rows"])
            job.status, job.step = "done", "done"
            job.message = f"scored {job.rows_done} rows with {summary['model']}"
        job.finished_at = time.time()
