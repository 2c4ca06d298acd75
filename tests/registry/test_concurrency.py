"""Concurrent publishes get versions 1..N with no gaps and no duplicates, on Postgres and on SQLite.

Every worker opens its own Registry (its own connections), as separate pods or CLI processes would; the
SQLite case also runs in separate processes, where "database is locked" would show up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelyard.registry import Registry, upgrade
from modelyard.settings import Settings

WORKERS = 8
PUBLISHES_PER_WORKER = 5


class UploadError(Exception):
    pass


def _publish_many(database_url: str, worker: int, count: int, hold_s: float) -> list[int]:
    """Publish ``count`` versions of 'iris'; every third attempt fails mid-upload and must leave no trace."""
    versions = []
    attempt = 0
    with Registry(database_url, ensure_schema=False) as registry:
        while len(versions) < count:
            attempt += 1
            try:
                with registry.reserve_version("iris") as reservation:
                    time.sleep(hold_s)  # the upload: others must wait, not take the same number
                    if attempt % 3 == 0:
                        raise UploadError(f"worker {worker} attempt {attempt}")
                    record = reservation.record(
                        storage_uri=f"file:///store/iris/{reservation.version}",
                        sha256=f"{worker:064x}",
                        metrics={"accuracy": 0.9},
                        params={"worker": worker, "attempt": attempt},
                        algorithm="svm",
                    )
            except UploadError:
                continue
            versions.append(record.version)
    return versions


def _check(registry: Registry, returned: list[list[int]]) -> None:
    expected = list(range(1, WORKERS * PUBLISHES_PER_WORKER + 1))
    assert sorted(v for worker in returned for v in worker) == expected
    assert sorted(record.version for record in registry.list_versions("iris")) == expected
    # Each worker saw its own versions increase: numbers are handed out in commit order.
    assert all(worker == sorted(worker) for worker in returned)


def test_concurrent_publishes_from_threads_get_consecutive_versions(settings: Settings) -> None:
    upgrade(settings.database_url)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [
            pool.submit(_publish_many, settings.database_url, worker, PUBLISHES_PER_WORKER, 0.002)
            for worker in range(WORKERS)
        ]
        returned = [future.result(timeout=120) for future in futures]
    with Registry(settings.database_url) as registry:
        _check(registry, returned)


# Runs in a fresh interpreter: publishes versions of 'iris', failing every third upload, prints them.
_PUBLISHER = """
import json, sys, time
from modelyard.registry import Registry
database_url, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
versions, attempt = [], 0
with Registry(database_url, ensure_schema=False) as registry:
    while len(versions) < count:
        attempt += 1
        try:
            with registry.reserve_version("iris") as reservation:
                time.sleep(0.002)
                if attempt % 3 == 0:
                    raise RuntimeError("upload failed")
                record = reservation.record(
                    storage_uri="file:///x", sha256=f"{worker:064x}", metrics={}, params={}, algorithm="svm"
                )
        except RuntimeError:
            continue
        versions.append(record.version)
print(json.dumps(versions))
"""


def test_concurrent_publishes_from_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(database_url)
    count = WORKERS * PUBLISHES_PER_WORKER // 4
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, database_url, str(worker), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(4)
    ]
    returned = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        returned.append(json.loads(stdout))
    with Registry(database_url) as registry:
        _check(registry, returned)


def test_concurrent_promotions_leave_exactly_one_production_version(settings: Settings, publish) -> None:
    for _ in range(4):
        publish("iris")

    def promote(version: int) -> None:
        with Registry(settings.database_url, ensure_schema=False) as registry:
            for _ in range(5):
                registry.promote("iris", version)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(promote, [1, 2, 3, 4]))
    with Registry(settings.database_url) as registry:
        stages = [record.stage.value for record in registry.list_versions("iris")]
        assert stages.count("production") == 1
        assert stages.count("archived") == 3
