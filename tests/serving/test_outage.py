"""The registry database dies under load: no request fails, and no prediction record is lost."""

from __future__ import annotations

import json
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from modelyard.registry.tables import Prediction as PredictionRow

from ..conftest import PostgresService
from .conftest import server_env, start_server

pytestmark = pytest.mark.slow

ROW = [5.1, 3.5, 1.4, 0.2]
CLIENTS = 4
LOAD_SECONDS = 7.0
KILL_AT_S, DOWN_FOR_S = 1.5, 2.5


def logged_count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(PredictionRow)).scalar_one())
    except OperationalError:
        return 0
    finally:
        engine.dispose()


def test_killing_postgres_under_load_fails_no_request_and_loses_no_record(
    bundles: dict[str, Path], killable_postgres: PostgresService, tmp_path: Path
) -> None:
    killable_postgres.server.psql("CREATE DATABASE outage;")
    url = killable_postgres.url("outage")
    home = tmp_path / "home"
    env = server_env(home, MODELYARD_DATABASE_URL=url, MODELYARD_SERVING__LOG_FLUSH_INTERVAL_S="0.2")
    server = start_server(bundles["numeric"], home, "--model-name", "iris", env=env)
    body = json.dumps({"instances": [ROW]}).encode()
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_SECONDS

    def client(number: int) -> None:
        connection = HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        sent = 0
        while time.monotonic() < deadline:
            request_id = f"c{number}-{sent}"
            connection.request(
                "POST",
                "/v1/models/iris:predict",
                body,
                {"Content-Type": "application/json", "x-request-id": request_id},
            )
            response = connection.getresponse()
            response.read()
            with lock:
                answered.append((request_id, response.status))
            sent += 1
        connection.close()

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(KILL_AT_S)
        killable_postgres.kill()
        time.sleep(DOWN_FOR_S)
        killable_postgres.start()
        for thread in threads:
            thread.join(60)
        # The server replays its spool once the database is back (bounded wait).
        wait_until = time.monotonic() + 60
        while logged_count(url) < len(answered) and time.monotonic() < wait_until:
            time.sleep(0.5)
    finally:
        exit_code = server.stop()
    assert exit_code == 0, server.log()
    statuses = {status for _, status in answered}
    assert statuses == {200}, f"some requests failed during the outage: {statuses}"
    assert len(answered) > 100, "too little traffic to prove anything"
    log = server.log()
    assert "is unreachable" in log, f"the outage was never noticed: the test proved nothing\n{log}"
    assert "is reachable again" in log

    engine = create_engine(url)
    with engine.connect() as connection:
        logged = [row.request_id for row in connection.execute(select(PredictionRow.request_id))]
    engine.dispose()
    assert len(logged) == len(set(logged)), "a record was written twice"
    assert set(logged) == {request_id for request_id, _ in answered}, "records were lost"
