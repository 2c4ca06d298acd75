"""The registry database dies under load, or was never migrated: no request fails, no record is lost."""

from __future__ import annotations

import json
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from modelyard.registry import upgrade
from modelyard.registry.tables import Prediction as PredictionRow

from ..conftest import PostgresService
from .conftest import post_json, server_env, start_server

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


def test_a_server_on_an_unmigrated_database_says_so_once_serves_and_replays_after_upgrade(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'modelyard.db'}"
    env = server_env(home, MODELYARD_SERVING__LOG_FLUSH_INTERVAL_S="0.2")
    server = start_server(bundles["numeric"], home, "--model-name", "iris", env=env, migrate=False)
    predict = f"{server.url}/v1/models/iris:predict"
    feedback = f"{server.url}/v1/models/iris/feedback"
    try:
        answers = [post_json(predict, {"instances": [ROW]}, {"x-request-id": f"r{n}"}) for n in range(5)]
        refused = post_json(feedback, {"request_id": "r0", "label": "setosa"})
        spool = home / "spool" / "predictions.jsonl"
        deadline = time.monotonic() + 30
        # the writer process makes the spool once it starts
        while (not spool.exists() or spool.read_bytes().count(b"\n") < 5) and time.monotonic() < deadline:
            time.sleep(0.1)
        spooled = [json.loads(line)["request_id"] for line in spool.read_bytes().splitlines()]
        upgrade(url)  # `modelyard db upgrade`, run while the server keeps serving
        answers.append(post_json(predict, {"instances": [ROW]}, {"x-request-id": "r5"}))
        deadline = time.monotonic() + 60
        while logged_count(url) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        accepted = post_json(feedback, {"request_id": "r0", "label": "setosa"})
    finally:
        exit_code = server.stop()
    log = server.log()
    assert exit_code == 0, log
    assert [answer.status for answer in answers] == [200] * 6
    assert refused.status == 503
    assert (
        "has no predictions and no feedback table: it is not migrated; run `modelyard db upgrade`"
        in (refused.json()["error"])
    )
    assert spooled == [f"r{n}" for n in range(5)]
    named = [line for line in log.splitlines() if "has no predictions table" in line]
    assert len(named) == 1, log
    assert (
        f"prediction log: the database at {url} has no predictions table; run `modelyard db upgrade`; "
        f"spooling to {spool} meanwhile"
    ) in named[0]
    assert "has its predictions table now" in log
    engine = create_engine(url)
    with engine.connect() as connection:
        logged = [row.request_id for row in connection.execute(select(PredictionRow.request_id))]
    engine.dispose()
    assert logged == [f"r{n}" for n in range(6)]
    assert accepted.status == 200, accepted.body
