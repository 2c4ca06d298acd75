"""A candidate version beside the stable one, in real server processes: shadow (the stable version answers,
the candidate scores the same rows and is counted and logged under its version), canary (a share of the
requests by request id), a candidate the server refuses to start with, and the contract with the
operator's analysis: a real Prometheus scrapes two shadowing predictors and ``Analysis.run`` judges them.

Three bundles of one iris-like model: the stable version; a good candidate (the same fit, so it agrees on
every row); and a bad one, fitted on shuffled labels and without the imputer, so it disagrees often and
fails on a row with a missing value."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from sqlalchemy import create_engine, func, select

from modelyard.bundle import BundleMetadata, load_bundle, publish_bundle, write_bundle
from modelyard.errors import ModelyardError
from modelyard.operator.analysis import FAIL, PASS, Analysis, Prometheus
from modelyard.operator.resource import Thresholds
from modelyard.registry.tables import Prediction as PredictionRow
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.model import ServedModel
from modelyard.serving.rollout import MAX_SHADOW_BACKLOG_ROWS, Rollout, canary_share
from modelyard.serving.server import bundle_version
from modelyard.serving.types import new_request_id
from modelyard.settings import S3Settings
from modelyard.storage import open_store

from ..conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, S3Service
from ..monitoring.conftest import start_prometheus, wait_until
from .conftest import (
    NUMERIC_CLASSES,
    NUMERIC_FEATURES,
    ServerProcess,
    free_ports,
    http_status,
    numeric_frame,
    post_json,
    server_env,
    start_server,
    write_tiny_bundle,
)
from .sleepy import SleepyClassifier
from .test_dataplane import RecordingSink
from .test_metrics import families

COLUMNS = [feature.name for feature in NUMERIC_FEATURES]
MISSING_ROW = [5.1, None, 1.4, 0.2]  # the stable pipeline imputes it; the bad candidate cannot


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("versions")
    write_tiny_bundle(root / "stable", "numeric", name="iris")
    write_tiny_bundle(root / "good", "numeric", name="iris")
    frame, labels = numeric_frame()
    shuffled = np.random.default_rng(3).permutation(labels)
    write_numeric_bundle(root / "bad", LogisticRegression(max_iter=500).fit(frame, shuffled), NUMERIC_CLASSES)
    two = labels != "virginica"
    write_numeric_bundle(
        root / "two-classes", LogisticRegression().fit(frame[two], labels[two]), NUMERIC_CLASSES[:2]
    )
    return {path.name: path for path in root.iterdir()}


def write_numeric_bundle(dest: Path, model: Any, classes: list[str]) -> None:
    metadata = BundleMetadata(
        name="iris",
        algorithm="logistic_regression",
        target="species",
        features=NUMERIC_FEATURES,
        classes=classes,
        dataset_fingerprint=hashlib.sha256(b"tiny").hexdigest(),
    )
    write_bundle(dest, model=model, metadata=metadata, model_card="# tiny\n", report_html="<p>tiny</p>")


def predicted(bundle: Path, rows: pd.DataFrame) -> list[str]:
    """The class each row gets from the bundle's model, as the server picks it (the most probable)."""
    probabilities = load_bundle(bundle).model.predict_proba(rows[COLUMNS].astype(np.float64))
    return [NUMERIC_CLASSES[index] for index in np.argmax(probabilities, axis=1)]


# ---------------------------------------------------------------- talking to a server


def v2_rest(
    server: ServerProcess, rows: list[list[float | None]], request_id: str | None = None, model: str = "iris"
) -> Any:
    document: dict[str, Any] = {
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [len(rows), 4], "data": rows}]
    }
    if request_id is not None:
        document["id"] = request_id
    answer = post_json(f"{server.url}/v2/models/{model}/infer", document)
    assert answer.status == 200, answer.body
    return answer.json()


def labels_of(answer: Any) -> list[str]:
    (label,) = [output for output in answer["outputs"] if output["name"] == "label"]
    return list(label["data"])


def v2_grpc(
    server: ServerProcess, rows: list[list[float]], request_id: str = "", model: str = "iris"
) -> tuple[str, list[str]]:
    """(the answering version, the labels) of a gRPC ModelInfer."""
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        tensor = grpcclient.InferInput("input-0", [len(rows), 4], "FP64")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.float64))
        result = client.infer(model, [tensor], request_id=request_id)
    finally:
        client.close()
    labels = [label.decode() for label in result.as_numpy("label").tolist()]
    return result.get_response().model_version, labels


def scrape(server: ServerProcess) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"{server.probe_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    family = name.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
    values = [
        float(sample.value)
        for sample in samples.get(family, [])
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(values)


def sample_total(metrics: ServingMetrics, name: str, **labels: str) -> float:
    """:func:`total` of an in-process server's metrics."""
    return total(families(metrics), name, **labels)


WAIT_S = 60.0


def serve_with_candidate(
    stable: Path, home: Path, *args: str, name: str = "iris", **variables: str
) -> ServerProcess:
    env = server_env(home, **variables)
    return start_server(
        stable,
        home,
        "--model-name",
        name,
        "--model-version",
        "1",
        *args,
        env=env,
        wait_for="/v2/health/ready",
    )


# ---------------------------------------------------------------- shadow


@pytest.fixture(scope="module")
def shadow_server(
    versions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The bad candidate in shadow mode, configured as the operator does: through the environment."""
    server = serve_with_candidate(
        versions["stable"],
        tmp_path_factory.mktemp("shadow-home"),
        MODELYARD_SERVING__CANDIDATE_URI=f"file://{versions['bad']}",
        MODELYARD_SERVING__CANDIDATE_VERSION="2",
        MODELYARD_SERVING__ROLLOUT_MODE="shadow",
    )
    yield server
    server.stop()


def test_shadow_answers_with_the_stable_version_and_scores_the_candidate_under_its_own(
    shadow_server: ServerProcess, versions: dict[str, Path]
) -> None:
    frame, _ = numeric_frame(rows=60, seed=7)
    stable, candidate = predicted(versions["stable"], frame), predicted(versions["bad"], frame)
    assert stable != candidate  # the candidate differs on some rows: agreement is a real count
    rows = frame[COLUMNS].to_numpy().tolist()
    ids = []
    for start in range(0, 60, 6):
        batch, expected = rows[start : start + 6], stable[start : start + 6]
        if start % 12 == 0:
            answer = v2_rest(shadow_server, batch, request_id=f"shadow-{start}")
            assert answer["model_version"] == "1" and labels_of(answer) == expected
        else:
            assert v2_grpc(shadow_server, batch, request_id=f"shadow-{start}") == ("1", expected)
        ids.append(f"shadow-{start}")
    # A row only the stable pipeline can score: the client still gets the stable answer, twice.
    failing = [v2_rest(shadow_server, [MISSING_ROW]) for _ in range(2)]
    assert all(answer["model_version"] == "1" for answer in failing)

    def shadowed() -> bool:
        samples = scrape(shadow_server)
        return total(samples, "modelyard_requests_total", protocol="shadow", model="iris") == 12

    wait_until(shadowed, "the candidate to score every request", WAIT_S)
    samples = scrape(shadow_server)
    iris = {"model": "iris"}
    agreed = sum(a == b for a, b in zip(stable, candidate, strict=True))
    assert total(samples, "modelyard_shadow_compared_total", **iris, version="2") == 60
    assert total(samples, "modelyard_shadow_agreed_total", **iris, version="2") == agreed
    requests = "modelyard_requests_total"
    assert total(samples, requests, protocol="shadow", **iris, version="2", status="200") == 10
    assert total(samples, requests, protocol="shadow", **iris, version="2", status="500") == 2
    assert total(samples, requests, protocol="v2-rest", **iris, version="1", status="200") == 7
    assert total(samples, requests, protocol="v2-grpc", **iris, version="1", status="OK") == 5
    assert total(samples, requests, protocol="v2-rest", **iris, version="2") == 0  # it answered no client
    stable_failing = [labels_of(answer)[0] for answer in failing]
    for version, labels in (("1", stable + stable_failing), ("2", candidate)):
        for label, count in Counter(labels).items():
            predictions = total(
                samples, "modelyard_predictions_total", **iris, version=version, **{"class": label}
            )
            assert predictions == count, (version, label)
        seconds = "modelyard_request_stage_seconds_count"
        # clients' requests take stage total; the shadow's copies, stage shadow
        assert total(samples, seconds, stage="total", **iris, version=version) == (
            12 if version == "1" else 0
        )
        assert total(samples, seconds, stage="shadow", **iris, version=version) == (
            0 if version == "1" else 10
        )
    roles = {(sample.labels["version"], sample.labels["role"]) for sample in samples["modelyard_model_info"]}
    assert roles == {("1", "stable"), ("2", "candidate")}
    assert shadow_server.log().count("the shadow candidate iris@2 failed") == 1

    # Both versions' rows are logged under their version; the label grades the stable answer.
    engine = create_engine(f"sqlite:///{shadow_server.home / 'modelyard.db'}")

    def logged(version: str) -> int:
        """Rows logged under ``version`` (the log holds one entry per request, of ``rows`` rows)."""
        with engine.connect() as connection:
            query = select(func.coalesce(func.sum(PredictionRow.rows), 0)).where(
                PredictionRow.version == version
            )
            return int(connection.execute(query).scalar_one())

    wait_until(lambda: logged("1") == 62 and logged("2") == 60, "the prediction log", WAIT_S)
    with engine.connect() as connection:
        answered = select(PredictionRow.version, PredictionRow.answered).distinct()
        assert sorted(tuple(row) for row in connection.execute(answered)) == [("1", True), ("2", False)]
    url = f"{shadow_server.url}/v1/models/iris/feedback"
    graded = post_json(url, {"request_id": ids[0], "label": stable[0], "row": 0})
    assert graded.status == 200, graded.body
    assert graded.json()["version"] == "1" and graded.json()["correct"] is True


def test_on_sigterm_every_shadowed_row_is_logged_before_the_server_exits(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    server = serve_with_candidate(
        versions["stable"],
        tmp_path / "home",
        *("--candidate-uri", str(versions["good"]), "--candidate-version", "2"),
        MODELYARD_SERVING__LOG_FLUSH_INTERVAL_S="60",  # nothing is written before the shutdown
    )
    try:
        frame, _ = numeric_frame(rows=40, seed=2)
        rows = frame[COLUMNS].to_numpy().tolist()
        for start in range(0, 40, 4):
            v2_rest(server, rows[start : start + 4])
    finally:
        assert server.stop() == 0, server.log()
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'modelyard.db'}")
    with engine.connect() as connection:
        query = select(PredictionRow.version, func.sum(PredictionRow.rows)).group_by(PredictionRow.version)
        logged = dict(connection.execute(query).tuples().all())
    engine.dispose()
    assert logged == {"1": 40, "2": 40}  # rows, in ten requests of four


def test_a_candidate_in_s3_is_fetched_and_versioned_by_its_key(
    versions: dict[str, Path], s3: S3Service, tmp_path: Path
) -> None:
    bucket = s3.create_bucket()
    credentials = S3Settings(
        endpoint_url=s3.endpoint_url,
        access_key_id=S3_ACCESS_KEY,
        secret_access_key=S3_SECRET_KEY,
        region=S3_REGION,
    )
    uri = publish_bundle(versions["good"], open_store(f"s3://{bucket}/models", credentials), "iris/4")
    assert uri == f"s3://{bucket}/models/iris/4"
    server = serve_with_candidate(
        versions["stable"], tmp_path / "home", **s3.env(), MODELYARD_SERVING__CANDIDATE_URI=uri
    )
    try:
        assert v2_rest(server, [[5.1, 3.5, 1.4, 0.2]])["model_version"] == "1"
        wait_until(
            lambda: total(scrape(server), "modelyard_shadow_compared_total", model="iris", version="4") == 1,
            "the candidate fetched from S3 to score the request",
            WAIT_S,
        )
    finally:
        server.stop()
    assert (tmp_path / "home" / "candidates" / bucket / "models" / "iris" / "4" / "metadata.json").is_file()


def test_a_request_is_not_shadowed_while_the_candidate_is_behind_by_too_many_rows(
    versions: dict[str, Path],
) -> None:
    metrics = ServingMetrics()
    stable, candidate = (
        ServedModel("iris", versions["stable"], version="1"),
        ServedModel("iris", versions["good"], version="2"),
    )
    assert stable.load() and candidate.load()
    dataplane = DataPlane(max_request_rows=MAX_SHADOW_BACKLOG_ROWS + 10, metrics=metrics)
    dataplane.add_model(stable)
    rollout = Rollout(candidate, "shadow")
    dataplane.add_candidate(rollout)
    row = [5.1, 3.5, 1.4, 0.2]

    def counted(name: str) -> float:
        return sample_total(metrics, f"modelyard_shadow_{name}_total", model="iris", version="2")

    async def predict(request_id: str, rows: int) -> None:
        await dataplane.predict_v1("iris", [row] * rows, request_id=request_id)
        await dataplane.finish_shadows(30.0)

    try:
        rollout.backlog_rows = MAX_SHADOW_BACKLOG_ROWS - 2  # as if that many rows waited for the candidate
        asyncio.run(predict("fits", 2))
        assert (counted("skipped"), counted("compared")) == (0, 2)
        rollout.backlog_rows = MAX_SHADOW_BACKLOG_ROWS - 2
        asyncio.run(predict("behind", 3))  # one row too many: skipped, counted in rows
        assert (counted("skipped"), counted("compared")) == (3, 2)
        rollout.backlog_rows = 0
        # a request larger than the bound is shadowed when nothing else waits
        asyncio.run(predict("large", MAX_SHADOW_BACKLOG_ROWS + 10))
        assert (counted("skipped"), counted("compared")) == (3, MAX_SHADOW_BACKLOG_ROWS + 12)
        assert counted("agreed") == counted("compared") and rollout.backlog_rows == 0
    finally:
        stable.close()
        candidate.close()


def test_a_candidates_rows_that_overflow_together_are_rescored_alone_as_the_stable_versions_are(
    versions: dict[str, Path],
) -> None:
    metrics = ServingMetrics()
    stable, candidate = (
        ServedModel("iris", versions["stable"], version="1"),
        ServedModel("iris", versions["good"], version="2"),
    )
    assert stable.load() and candidate.load()
    dataplane = DataPlane(max_request_rows=10, metrics=metrics)
    dataplane.add_model(stable)
    dataplane.add_candidate(Rollout(candidate, "shadow"))
    # the second row's probabilities are NaN when scored with the first, finite alone
    rows = [[1e308, 1e308, 1e308, -1e308], [1e308, 1e308, 1.7976931348623157e308, -1e308]]

    async def predict() -> Any:
        answer = await dataplane.predict_v1("iris", rows, request_id="overflow")
        await dataplane.finish_shadows(30.0)
        return answer

    try:
        answer = asyncio.run(predict())
    finally:
        stable.close()
        candidate.close()
    assert np.isfinite(answer.probabilities).all()
    shadow = {"model": "iris", "version": "2"}
    assert sample_total(metrics, "modelyard_shadow_compared_total", **shadow) == 2
    assert sample_total(metrics, "modelyard_requests_total", protocol="shadow", status="500", **shadow) == 0


def test_shadow_requests_left_at_the_deadline_are_cancelled_and_counted_skipped(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    metrics = ServingMetrics()
    stable = ServedModel("iris", versions["stable"], version="1")
    slow = ServedModel("iris", sleepy_bundle(versions["good"], tmp_path / "slow", 1.0), version="2")
    assert stable.load() and slow.load()
    dataplane = DataPlane(max_request_rows=10, metrics=metrics)
    dataplane.add_model(stable)
    rollout = Rollout(slow, "shadow")
    dataplane.add_candidate(rollout)

    async def stop_early() -> set[asyncio.Task[Any]]:
        await dataplane.predict_v1("iris", [[5.1, 3.5, 1.4, 0.2]] * 3, request_id="cut-short")
        await asyncio.sleep(0)  # the shadow task starts and waits for the sleeping candidate
        await dataplane.finish_shadows(0.05)
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    try:
        # no shadow task is left pending for the loop's teardown; the model's own batcher stops with it
        left = asyncio.run(stop_early())
        assert {task.get_name() for task in left} <= {"modelyard-batcher"}
    finally:
        stable.close()
        slow.close()
    assert sample_total(metrics, "modelyard_shadow_skipped_total", model="iris", version="2") == 3
    assert sample_total(metrics, "modelyard_shadow_compared_total", model="iris", version="2") == 0
    assert rollout.backlog_rows == 0


def test_a_shadow_candidates_record_is_not_answered_and_has_the_stable_records_time(
    versions: dict[str, Path],
) -> None:
    stable, candidate = (
        ServedModel("iris", versions["stable"], version="1"),
        ServedModel("iris", versions["bad"], version="2"),
    )
    assert stable.load() and candidate.load()
    sink = RecordingSink()
    dataplane = DataPlane(max_request_rows=10, prediction_log=sink)
    dataplane.add_model(stable)
    dataplane.add_candidate(Rollout(candidate, "shadow"))

    async def predict() -> None:
        for index in range(3):
            await dataplane.predict_v1("iris", [[5.1, 3.5, 1.4, 0.2]] * 2, request_id=f"r{index}")
        await dataplane.finish_shadows(10.0)

    try:
        asyncio.run(predict())
    finally:
        stable.close()
        candidate.close()
    by_version = {
        version: {record.request_id: record for record in sink.records if record.version == version}
        for version in ("1", "2")
    }
    assert sorted(by_version["1"]) == sorted(by_version["2"]) == ["r0", "r1", "r2"]
    for request_id, answer in by_version["1"].items():
        shadow = by_version["2"][request_id]
        assert answer.answered and not shadow.answered
        # feedback given before the shadow finished grades the candidate's row too (created_at <= label)
        assert shadow.created_at == answer.created_at


def test_the_probes_say_live_but_not_ready_while_the_candidate_loads(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    slow = sleepy_bundle(versions["good"], tmp_path / "slow-to-load", 0.0, load_seconds=6.0)
    home = tmp_path / "home"
    home.mkdir()
    http_port, metrics_port = free_ports(2)
    command = [
        sys.executable, "-m", "modelyard.serving", "--model-dir", str(versions["stable"]),
        "--model-version", "1", "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", "0",
        "--metrics-port", str(metrics_port), "--no-prediction-log", "--candidate-uri", str(slow),
        "--candidate-version", "2",
    ]  # fmt: skip
    environment = server_env(home, PYTHONPATH=str(ROOT))
    probes = f"http://127.0.0.1:{metrics_port}"
    with (home / "server.log").open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_until(
            lambda: http_status(f"{probes}/v2/health/live", timeout=0.5) == 200, "the liveness probe", WAIT_S
        )
        # the candidate is still loading: not ready, and REST does not listen yet
        assert http_status(f"{probes}/v2/health/ready", timeout=0.5) == 503
        assert http_status(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=0.5) is None
        wait_until(lambda: http_status(f"{probes}/v2/health/ready", timeout=0.5) == 200, "readiness", WAIT_S)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, (home / "server.log").read_text()


# ---------------------------------------------------------------- canary


@pytest.fixture(scope="module")
def canary_server(
    versions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = serve_with_candidate(
        versions["stable"],
        tmp_path_factory.mktemp("canary-home"),
        *("--candidate-uri", str(versions["bad"]), "--candidate-version", "2"),
        *("--rollout-mode", "canary", "--canary-percent", "30"),
    )
    yield server
    server.stop()


def test_canary_answers_its_percent_of_requests_by_request_id(
    canary_server: ServerProcess, versions: dict[str, Path]
) -> None:
    frame, _ = numeric_frame(rows=300, seed=11)
    expected = {"1": predicted(versions["stable"], frame), "2": predicted(versions["bad"], frame)}
    rows = frame[COLUMNS].to_numpy().tolist()
    over_rest: Counter[str] = Counter()
    for index, row in enumerate(rows):
        answer = v2_rest(canary_server, [row], request_id=f"canary-{index}")
        version = answer["model_version"]
        assert labels_of(answer) == [expected[version][index]]
        over_rest[version] += 1
    # the candidate's share is exactly the ids whose share falls below its 30 percent
    assert over_rest["2"] == sum(canary_share(f"canary-{index}") < 30 for index in range(len(rows)))
    assert 0.2 < over_rest["2"] / len(rows) < 0.4, over_rest  # and the hash spreads them as it should
    over_grpc: Counter[str] = Counter()

    # A request id always reaches the same version, over REST and gRPC alike.
    for index in range(20):
        request_id = f"retried-{index}"
        version = "2" if canary_share(request_id) < 30 else "1"
        first = v2_rest(canary_server, [rows[index]], request_id=request_id)
        again = v2_rest(canary_server, [rows[index]], request_id=request_id)
        assert first["model_version"] == again["model_version"] == version, request_id
        assert v2_grpc(canary_server, [rows[index]], request_id=request_id) == (
            version,
            [expected[version][index]],
        )
        over_rest[version] += 2
        over_grpc[version] += 1
    # A request naming a version gets that version.
    named = post_json(
        f"{canary_server.url}/v2/models/iris/versions/2/infer",
        {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [rows[0]]}]},
    )
    assert named.json()["model_version"] == "2"
    over_rest["2"] += 1

    samples = scrape(canary_server)
    iris = {"model": "iris"}
    for version in ("1", "2"):
        requests = "modelyard_requests_total"
        assert total(samples, requests, protocol="v2-rest", **iris, version=version) == over_rest[version]
        assert total(samples, requests, protocol="v2-grpc", **iris, version=version) == over_grpc[version]
        answered = over_rest[version] + over_grpc[version]
        assert total(samples, "modelyard_predictions_total", **iris, version=version) == answered
        stage = "modelyard_request_stage_seconds_count"
        assert total(samples, stage, stage="total", **iris, version=version) == answered
    assert samples["modelyard_shadow_compared"] == []  # no shadow in canary mode: the family has no series


# ---------------------------------------------------------------- candidates the server refuses


def run_server(stable: Path, home: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "modelyard.serving", "--model-dir", str(stable), "--model-version", "1",
        "--host", "127.0.0.1", "--http-port", str(free_ports(1)[0]), "--grpc-port", "0",
        "--metrics-port", "0", "--no-prediction-log",
    ]  # fmt: skip
    environment = server_env(home, **{f"MODELYARD_SERVING__{k.upper()}": v for k, v in variables.items()})
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("candidate", "version", "message"),
    [
        (
            "mixed",
            "2",
            "takes other features than the stable version: it lacks sepal_length, sepal_width, petal_length, "
            "petal_width; it adds age, plan, review",
        ),
        (
            "two-classes",
            "2",
            "predicts the classes ['setosa', 'versicolor'], the stable version ['setosa', 'versicolor', "
            "'virginica']",
        ),
        ("tampered", "2", "model.joblib"),
        ("empty", "2", "metadata.json"),
        ("good", "", "has the stable version's version '1'"),  # in a folder named 1: version 1 too
    ],
)
def test_a_candidate_that_cannot_stand_beside_the_stable_version_is_refused_by_name(
    candidate: str,
    version: str,
    message: str,
    versions: dict[str, Path],
    bundles: dict[str, Path],
    tmp_path: Path,
) -> None:
    if candidate == "tampered":
        path = tmp_path / "tampered"
        path.mkdir()
        for item in versions["good"].iterdir():
            (path / item.name).write_bytes(item.read_bytes())
        with (path / "model.joblib").open("ab") as handle:
            handle.write(b"appended")
    elif candidate == "empty":
        path = tmp_path / "empty"
        path.mkdir()
    elif candidate == "good":
        path = tmp_path / "1"  # a folder named as the stable version: the same version label
        path.mkdir()
        for item in versions["good"].iterdir():
            (path / item.name).write_bytes(item.read_bytes())
    else:
        path = bundles[candidate] if candidate == "mixed" else versions[candidate]
    # as the server builds them: a version not given is the bundle's folder name (or digest)
    stable = ServedModel("iris", versions["stable"], version="1")
    refused = ServedModel("iris", path, version=version or bundle_version(path))
    stable.load()
    refused.load()
    dataplane = DataPlane(max_request_rows=10)
    dataplane.add_model(stable)
    try:
        with pytest.raises(ModelyardError) as caught:
            dataplane.add_candidate(Rollout(refused, "shadow"))
    finally:
        stable.close()
        refused.close()
    assert message in caught.value.message and str(path) in caught.value.message
    assert dataplane.rollouts == {}


def test_a_refused_candidate_stops_the_server_with_status_1_naming_it(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    path = versions["two-classes"]
    finished = run_server(
        versions["stable"], tmp_path / "home", candidate_uri=str(path), candidate_version="2"
    )
    assert finished.returncode == 1, finished.stderr
    assert "error: " in finished.stderr and "predicts the classes ['setosa', 'versicolor']" in finished.stderr
    assert str(path) in finished.stderr


def test_a_candidate_uri_with_no_bundle_is_named(versions: dict[str, Path], tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/store/iris/2"
    finished = run_server(versions["stable"], tmp_path / "home", candidate_uri=uri)
    assert finished.returncode == 1
    assert f"error: cannot serve the candidate {uri}: no published bundle at {uri}" in finished.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"rollout_mode": "canary", "canary_percent": "10"}, "a canary needs a candidate"),
        (
            {"candidate_uri": "/b", "canary_percent": "150"},
            "CANARY_PERCENT: Input should be less than or equal",
        ),
        ({"candidate_uri": "/b", "canary_percent": "10"}, "canary_percent is 10 but rollout_mode is shadow"),
        (
            {"candidate_uri": "/b", "rollout_mode": "blue"},
            "ROLLOUT_MODE: Input should be 'shadow' or 'canary'",
        ),
    ],
)
def test_rollout_settings_that_make_no_sense_are_refused_by_name(
    variables: dict[str, str], message: str, versions: dict[str, Path], tmp_path: Path
) -> None:
    finished = run_server(versions["stable"], tmp_path / "home", **variables)
    assert finished.returncode == 2
    assert message in finished.stderr, finished.stderr


# ---------------------------------------------------------------- the contract with the analysis


ROOT = Path(__file__).resolve().parents[2]
# Sleeps in the middle of the histogram's buckets (10-25 ms and 0.5-1 s): the slow candidate's p95 is
# several times the stable one's even when a loaded machine adds a hundred milliseconds to each call.
STABLE_SECONDS, SLOW_SECONDS = 0.015, 0.7


def sleepy_bundle(source: Path, dest: Path, seconds: float, load_seconds: float = 0.0) -> Path:
    """``source``'s model and metadata, each call ``seconds`` late (served by scikit-learn), loading in
    ``load_seconds``."""
    bundle = load_bundle(source)
    metadata = bundle.metadata.model_copy(update={"onnx": None})
    model = SleepyClassifier(bundle.model, seconds, load_seconds)
    write_bundle(dest, model=model, metadata=metadata, model_card="# sleepy\n", report_html="<p>sleepy</p>")
    return dest


def test_the_operators_analysis_judges_shadowing_predictors_through_a_real_prometheus(
    versions: dict[str, Path], tmp_path: Path, prometheus_binary: str
) -> None:
    # The stable version and the good candidate take as long; the bad one is also slow.
    stable = sleepy_bundle(versions["stable"], tmp_path / "stable", STABLE_SECONDS)
    candidates = {
        "good": sleepy_bundle(versions["good"], tmp_path / "good-bundle", STABLE_SECONDS),
        "bad": sleepy_bundle(versions["bad"], tmp_path / "bad-bundle", SLOW_SECONDS),
    }
    servers = {
        quality: serve_with_candidate(
            stable,
            tmp_path / quality,
            "--no-prediction-log",
            name=quality,
            PYTHONPATH=str(ROOT),  # the bundles' SleepyClassifier
            MODELYARD_SERVING__CANDIDATE_URI=str(candidates[quality]),
            MODELYARD_SERVING__CANDIDATE_VERSION="2",
        )
        for quality in ("good", "bad")
    }
    prometheus = None
    try:
        targets = [f"127.0.0.1:{server.metrics_port}" for server in servers.values()]
        prometheus = start_prometheus(tmp_path / "prometheus", targets, prometheus_binary)
        client = Prometheus(prometheus.url)
        frame, _ = numeric_frame(rows=60, seed=5)
        rows = frame[COLUMNS].to_numpy().tolist()
        # each round shadows the 60 rows, and the first 6 again over gRPC
        alike = np.array(predicted(versions["stable"], frame)) == np.array(predicted(versions["bad"], frame))
        expected_agreement = (alike.sum() + alike[:6].sum()) / 66
        thresholds = Thresholds()  # the CRD's defaults: a p95 ratio of at most 1.5
        measured = ("error_ratio", "latency_p95_ratio", "class_mix_js_distance", "agreement")
        deadline = time.monotonic() + 90
        while True:
            for quality, server in servers.items():
                for start in range(0, 60, 6):
                    v2_rest(server, rows[start : start + 6], model=quality)
                v2_grpc(server, rows[:6], model=quality)
                v2_rest(server, [MISSING_ROW], model=quality)
            verdicts = {
                quality: Analysis(client, quality, "1m").run(stable=1, candidate=2, thresholds=thresholds)
                for quality in servers
            }
            checks = {quality: {c.name: c for c in verdict.checks} for quality, verdict in verdicts.items()}
            measured_all = all(checks[q][name].value is not None for q in servers for name in measured)
            failed = {check.name for check in verdicts["bad"].failed}
            # A series first seen inside the window (the candidate's first 500) counts from its second
            # scrape: the verdict settles once each series has a few.
            if (
                measured_all
                and verdicts["good"].verdict == PASS
                and {"agreement", "error_ratio", "latency_p95_ratio"} <= failed
            ):
                break
            if time.monotonic() > deadline:
                break  # the assertions below say what did not settle
            time.sleep(1.0)
        good, bad = checks["good"], checks["bad"]
        said = {quality: verdict.summary() for quality, verdict in verdicts.items()}
        assert measured_all, said
        assert verdicts["good"].verdict == PASS, said
        assert good["agreement"].value == pytest.approx(1.0), said
        assert good["error_ratio"].value == pytest.approx(1.0), said
        # Like with like: the model's predict stage of both versions, shadow or not.
        assert good["latency_p95_ratio"].passed, said
        assert bad["latency_p95_ratio"].value > 2 * thresholds.max_latency_p95_ratio, said
        assert verdicts["bad"].verdict == FAIL, said
        assert {check.name for check in verdicts["bad"].failed} >= {
            "agreement",
            "error_ratio",
            "latency_p95_ratio",
        }, said
        # increase() extrapolates each counter on its own: a ratio of two is near, not exact
        assert bad["agreement"].value == pytest.approx(expected_agreement, abs=0.1), said
        assert good["live_accuracy_delta"].value is None  # no labels: live accuracy has no data yet
    finally:
        if prometheus is not None:
            prometheus.process.stop()
        for server in servers.values():
            server.stop()


def test_the_canary_split_of_minted_ids_is_as_even_as_of_random_ones() -> None:
    # Minted ids share their leading milliseconds: the split must rest on their random bits alone.
    minted = [new_request_id() for _ in range(20_000)]
    share = sum(canary_share(request_id) < 30 for request_id in minted) / len(minted)
    assert 0.28 < share < 0.32  # 30% within six standard deviations
