"""The console's refusals: requests another site could have sent, unknown hosts, actions when they are turned
off, training data outside the platform, bundles the registry did not record; and what a failure shows.

Each runs the console's real application through Starlette's TestClient (real HTTP semantics, no socket)
over a real SQLite registry holding one trained iris version, and checks that a refusal changed nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from starlette.testclient import TestClient

from modelyard.console.app import PREDICT_CONCURRENCY, create_app
from modelyard.console.batch import MAX_RUNNING
from modelyard.console.security import training_spec
from modelyard.errors import ModelyardError, SpecError
from modelyard.registry import Registry, Stage
from modelyard.settings import ConsoleSettings, Settings, load_settings
from modelyard.spec import parse_spec
from modelyard.workflow import run_training

from ..serving.conftest import free_ports
from .conftest import FROM_THE_PAGE, IRIS_CSV, RUNS, iris_spec

PROMOTE = "/api/models/iris/versions/1/promote"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("console-security")
    data_root = root / "data"
    data_root.mkdir()
    shutil.copy(IRIS_CSV, data_root / "iris.csv")
    (data_root / "elsewhere.csv").symlink_to(IRIS_CSV)  # a link under the root to a file outside it
    settings = load_settings(home=root / "home", console={"data_root": str(data_root)})
    outcome = run_training(settings, iris_spec(RUNS[0]))
    assert outcome.published is not None, outcome.verdict
    return settings


def with_console(settings: Settings, **changes: Any) -> Settings:
    console = ConsoleSettings.model_validate({**settings.console.model_dump(), **changes})
    return settings.model_copy(update={"console": console})


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1:8088", raise_server_exceptions=False) as test_client:
        yield test_client


def stage(settings: Settings, name: str = "iris", version: int = 1) -> Stage:
    with Registry(settings.database_url, ensure_schema=False) as registry:
        return registry.get_version(name, version).stage


def test_a_post_another_site_could_send_is_refused_and_changes_nothing(
    settings: Settings, client: TestClient
) -> None:
    before = stage(settings)
    needs_header = (
        "refused: a POST to the console needs the header X-Modelyard-Console: 1 (its pages send it) or "
        "Content-Type: application/json"
    )
    refusals = [
        ({}, needs_header),  # a plain cross-site <form method=post>: no body, no header
        ({"Content-Type": "application/x-www-form-urlencoded"}, needs_header),
        ({"Content-Type": "text/plain"}, needs_header),  # the enctype=text/plain trick
        (
            {**FROM_THE_PAGE, "Origin": "http://evil.example"},
            "refused: this POST came from another site (Origin: http://evil.example); use the console",
        ),
        (
            {**FROM_THE_PAGE, "Sec-Fetch-Site": "cross-site"},
            "refused: this POST came from another site (Sec-Fetch-Site: cross-site); use the console",
        ),
        # report.html is sandboxed: a script in it would send Origin: null
        ({**FROM_THE_PAGE, "Origin": "null"}, "refused: this POST came from another site (Origin: null)"),
    ]
    for headers, message in refusals:
        answer = client.post(PROMOTE, headers=headers)
        assert (answer.status_code, answer.json()["error"].startswith(message)) == (403, True), answer.text
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    spec = yaml.safe_dump({"name": "x", "data": {"path": "iris.csv"}, "target": "species"})
    train = client.post("/api/train", content=spec, headers={"Content-Type": "text/plain"})
    assert (train.status_code, train.json()["error"]) == (403, needs_header)
    assert stage(settings) is before
    # the page's own requests pass: the header, or a JSON body, from the console's origin
    predict = client.post(
        "/api/models/iris/versions/1/predict",
        content=b'{"features": []}',
        headers={"Content-Type": "application/json", "Origin": "http://127.0.0.1:8088"},
    )
    assert (predict.status_code, "must be a JSON object" in predict.json()["error"]) == (400, True)
    promoted = client.post(PROMOTE, headers={**FROM_THE_PAGE, "Sec-Fetch-Site": "same-origin"})
    assert (promoted.status_code, promoted.json()["stage"]) == (200, "production")
    assert stage(settings) is Stage.PRODUCTION


def test_a_host_the_console_does_not_answer_to_is_refused(settings: Settings, client: TestClient) -> None:
    before = stage(settings)
    # a DNS-rebinding page is same-origin with its own name: only the Host tells it apart
    rebound = {"Host": "evil.example:8088", "Origin": "http://evil.example:8088", **FROM_THE_PAGE}
    answer = client.post(PROMOTE, headers=rebound)
    assert (answer.status_code, answer.text) == (400, "Invalid host header")
    assert client.get("/api/models", headers={"Host": "evil.example"}).status_code == 400
    assert stage(settings) is before
    assert client.get("/api/models", headers={"Host": "localhost:8088"}).status_code == 200
    named = create_app(with_console(settings, allowed_hosts="models.acme.example, *.svc.cluster.local"))
    with TestClient(named, base_url="http://models.acme.example") as ingress:
        assert ingress.get("/livez").status_code == 200
        in_cluster = {"Host": "modelyard-console.ml.svc.cluster.local"}
        assert ingress.get("/livez", headers=in_cluster).status_code == 200
        assert ingress.get("/livez", headers={"Host": "127.0.0.1"}).status_code == 400


def test_actions_turned_off_are_refused_and_the_pages_still_read(settings: Settings) -> None:
    before = stage(settings)
    message = (
        "refused: promote, roll back and train are turned off in this console "
        "(MODELYARD_CONSOLE__ACTIONS_ENABLED=false); use the modelyard CLI"
    )
    app = create_app(with_console(settings, actions_enabled=False))
    with TestClient(app, base_url="http://127.0.0.1:8088") as read_only:
        for path in (PROMOTE, "/api/models/iris/rollback", "/api/train"):
            answer = read_only.post(path, content=b"name: iris", headers=FROM_THE_PAGE)
            assert (answer.status_code, answer.json()["error"]) == (403, message), path
        assert read_only.get("/models/iris/versions/1").status_code == 200
        assert "iris" in {model["name"] for model in read_only.get("/api/models").json()["models"]}
        # a prediction is not an action: it reaches its own validation
        predict = read_only.post("/api/models/iris/versions/1/predict", json={"features": []})
        assert predict.status_code == 400
    assert stage(settings) is before


def _spec(data: dict[str, Any]) -> str:
    raw = {"name": "stolen", "data": data, "target": "species", "algorithms": ["logistic_regression"]}
    return yaml.safe_dump(raw)


OUTSIDE = "is outside the console's data root"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"query": "SELECT * FROM model_versions"}, "data.query: the console does not run SQL from a pasted"),
        ({"table": "model_versions"}, "data.table: the console does not run SQL from a pasted spec"),
        (
            {"table": "users", "database_url": "postgresql://other-host/db"},
            "data.table: the console does not run SQL",
        ),
        (
            {"path": "iris.csv", "database_url": "postgresql://other-host/db"},
            "data.database_url: the console does not run SQL",
        ),
        ({"path": "/etc/passwd"}, f"data.path '/etc/passwd' {OUTSIDE}"),
        ({"path": "../../../../etc/hosts.csv"}, OUTSIDE),
        ({"path": "file:///etc/hosts.csv"}, f"data.path 'file:///etc/hosts.csv' {OUTSIDE}"),
        ({"path": "elsewhere.csv"}, OUTSIDE),
        ({"path": "s3://other-bucket/data.csv"}, f"data.path 's3://other-bucket/data.csv' {OUTSIDE}"),
    ],
)
def test_training_refuses_data_outside_the_platform(
    settings: Settings, client: TestClient, data: dict[str, Any], message: str
) -> None:
    with Registry(settings.database_url, ensure_schema=False) as registry:
        before = [(r.name, r.version) for r in registry.list_versions()]
    answer = client.post("/api/train", content=_spec(data), headers=FROM_THE_PAGE)
    assert (answer.status_code, message in answer.json()["error"]) == (422, True), answer.json()
    with Registry(settings.database_url, ensure_schema=False) as registry:
        assert [(r.name, r.version) for r in registry.list_versions()] == before  # nothing was trained


def test_the_data_root_decides_which_paths_a_spec_may_read(settings: Settings, tmp_path: Path) -> None:
    data_root = Path(settings.console.data_root)
    spec = training_spec(_spec({"path": "iris.csv"}), settings.console)
    assert spec.data.path == str(data_root / "iris.csv")  # relative paths resolve against the root
    assert training_spec(_spec({"dataset": "iris@2"}), settings.console).data.dataset == "iris@2"
    no_files = ConsoleSettings(data_root="")
    with pytest.raises(
        SpecError, match=r"this console reads no files \(MODELYARD_CONSOLE__DATA_ROOT is empty\)"
    ):
        training_spec(_spec({"path": str(data_root / "iris.csv")}), no_files)
    bucket = ConsoleSettings(data_root="s3://acme/training")
    assert training_spec(_spec({"path": "s3://acme/training/iris.csv"}), bucket).data.path
    for path in ("s3://acme/training-other/x.csv", "s3://acme/training/../models/x.csv", "/tmp/x.csv"):
        with pytest.raises(SpecError, match=f"data.path '{path}' is outside the console's data root"):
            training_spec(_spec({"path": path}), bucket)


def _register_copy(
    settings: Settings, name: str, change: dict[str, bytes | None], *, keep_digest: bool
) -> None:
    """Register iris@1's bundle, copied with some files changed and metadata.json's hashes updated to
    match; ``keep_digest`` records iris@1's sha256 (a bundle changed in the store) instead of the copy's."""
    with Registry(settings.database_url, ensure_schema=False) as registry:
        original = registry.get_version("iris", 1)
        copy = Path(settings.home) / "copies" / name
        shutil.copytree(urlparse(original.storage_uri).path, copy)
        metadata = json.loads((copy / "metadata.json").read_text())
        for file, content in change.items():
            if content is None:  # a bundle without this file
                (copy / file).unlink()
                del metadata["files"][file]
                continue
            (copy / file).write_bytes(content)
            metadata["files"][file] = hashlib.sha256(content).hexdigest()
        manifest = json.dumps(metadata).encode()
        (copy / "metadata.json").write_bytes(manifest)
        with registry.reserve_version(name) as reservation:
            reservation.record(
                storage_uri=copy.as_uri(),
                sha256=original.sha256 if keep_digest else hashlib.sha256(manifest).hexdigest(),
                metrics=original.metrics,
                params=original.params,
                algorithm=original.algorithm,
            )


def test_a_bundle_changed_in_the_store_is_not_served(settings: Settings, client: TestClient) -> None:
    forged = b"<script>fetch('/api/models/iris/rollback', {method: 'POST'})</script>"
    _register_copy(settings, "changed", {"report.html": forged}, keep_digest=True)
    for path in ("/models/changed/versions/1/report.html", "/api/models/changed/versions/1"):
        answer = client.get(path)
        assert answer.status_code == 500
        assert b"<script>" not in answer.content
        assert "is not the one the registry recorded for changed@1: its metadata.json has" in answer.text
    report = client.get("/models/iris/versions/1/report.html")
    assert report.status_code == 200
    assert report.headers["content-security-policy"].startswith("sandbox;")


def test_a_failure_names_its_type_and_request_id_and_logs_the_rest(
    settings: Settings, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    _register_copy(settings, "broken", {"evaluation.json": b"{not json"}, keep_digest=False)
    with caplog.at_level(logging.ERROR, logger="modelyard.console.app"):
        answer = client.get("/api/models/broken/versions/1")
    identity = answer.headers["x-request-id"]
    assert answer.status_code == 500
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert answer.json()["error"] == (
        "the console failed on this request (JSONDecodeError); the details are in its log under request "
        f"id {identity}"
    )
    logged = [r for r in caplog.records if identity in r.getMessage()]
    assert logged and "Expecting property name" in str(logged[0].exc_info[1])  # type: ignore[index]


def test_a_version_that_is_no_ascii_number_is_a_400_naming_it(client: TestClient) -> None:
    answer = client.get("/api/models/iris/versions/²")
    assert (answer.status_code, answer.json()["error"]) == (400, "a version is a positive integer, got '²'")
    compare = client.get("/api/models/iris/compare?v=1,²")
    assert (compare.status_code, compare.json()["error"]) == (
        400,
        "compare iris: a version is a positive integer, got '²'",
    )


def test_liveness_answers_without_the_database_and_readiness_asks_it(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    nowhere = f"postgresql+psycopg://modelyard@127.0.0.1:{port}/registry?connect_timeout=2"
    unreachable = load_settings(home=tmp_path, database_url=nowhere)
    app = create_app(unreachable)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        live = client.get("/livez")
        assert (live.status_code, live.json()) == (200, {"status": "alive"})
        assert client.get("/healthz").status_code == 500


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "MODELYARD_CONSOLE__PREDICTOR_URL",
            "file:///etc/passwd",
            "must be an http:// or https:// URL, got 'file:///etc/passwd'",
        ),
        ("MODELYARD_CONSOLE__PREDICTOR_URL", "predictor:8080", "must be an http:// or https:// URL"),
        ("MODELYARD_CONSOLE__PREDICTOR_URL", "file:///etc/{name}", "must be an http:// or https:// URL"),
        ("MODELYARD_CONSOLE__PREDICTOR_URL", "http://{model}-predictor", "may hold only the placeholder"),
        ("MODELYARD_CONSOLE__ALLOWED_HOSTS", " , ", "must name at least one host"),
        ("MODELYARD_CONSOLE__DATA_ROOT", "ftp://files/data", "must be a folder or s3://bucket/prefix"),
    ],
)
def test_bad_console_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ModelyardError, match=f"{variable}: Value error, {message}"):
        load_settings()


def test_predictions_and_scoring_beyond_their_slots_are_busy_and_a_hung_predictor_times_out(
    settings: Settings,
) -> None:
    hung = socket.socket()  # accepts connections and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    base = f"http://127.0.0.1:{hung.getsockname()[1]}"
    predict = "/api/models/iris/versions/1/predict"
    row = {"features": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}
    app = create_app(with_console(settings, predictor_url=base))
    accepted = []
    with (
        hung,
        TestClient(app, base_url="http://127.0.0.1:8088") as client,
        ThreadPoolExecutor(PREDICT_CONCURRENCY) as threads,
    ):
        waiting = [threads.submit(client.post, predict, json=row) for _ in range(PREDICT_CONCURRENCY)]
        hung.settimeout(30)
        accepted = [hung.accept()[0] for _ in range(PREDICT_CONCURRENCY)]  # every slot waits on it now
        refused = client.post(predict, json=row)
        assert (refused.status_code, refused.json()["error"]) == (
            503,
            f"the console is busy: {PREDICT_CONCURRENCY} predictions are running already; try again shortly",
        )
        assert client.get("/api/models").status_code == 200  # the pages' threads are free meanwhile
        for answer in (future.result() for future in waiting):
            assert (answer.status_code, answer.json()["error"]) == (
                503,
                f"cannot reach the predictor at {base}/v2/models/iris/versions/1/infer: timed out",
            )
        for connection in accepted:
            connection.close()

        lines = IRIS_CSV.read_text().splitlines()
        body = ("\n".join([lines[0], *(lines[1:] * 100)]) + "\n").encode()  # 15,000 rows
        score = "/api/models/iris/versions/1/score"
        started = [client.post(score, content=body, headers=FROM_THE_PAGE) for _ in range(MAX_RUNNING)]
        assert [answer.status_code for answer in started] == [202] * MAX_RUNNING
        busy = client.post(score, content=body, headers=FROM_THE_PAGE)
        assert (busy.status_code, busy.json()["error"]) == (
            503,
            "the console is busy: 2 files are being scored already (iris@1, iris@1); try again when one "
            "has finished",
        )


def test_bundles_without_a_report_or_an_evaluation_say_so(settings: Settings, client: TestClient) -> None:
    _register_copy(settings, "no-report", {"report.html": None}, keep_digest=False)
    answer = client.get("/models/no-report/versions/1/report.html")
    assert answer.status_code == 404
    assert "no-report@1 has no report.html" in answer.text
    _register_copy(settings, "no-evaluation", {"evaluation.json": None}, keep_digest=False)
    page = client.get("/models/no-evaluation/versions/1")
    assert page.status_code == 200
    assert "This bundle has no evaluation data (it predates evaluation.json); see its report." in page.text
    assert client.get("/api/models/no-evaluation/versions/1").json()["evaluation"] is None


def test_a_second_training_start_while_one_runs_is_a_conflict(settings: Settings, client: TestClient) -> None:
    spec = yaml.safe_dump(
        {
            "name": "twice",
            "data": {"path": "iris.csv"},
            "target": "species",
            "algorithms": ["logistic_regression"],
            "search": {"strategy": "random", "trials": 2},
            "cv_folds": 2,
        }
    )
    first = client.post("/api/train", content=spec, headers=FROM_THE_PAGE)
    assert first.status_code == 202, first.text
    run = first.json()["id"]
    second = client.post("/api/train", content=spec, headers=FROM_THE_PAGE)
    assert (second.status_code, second.json()["error"]) == (
        409,
        f"training run {run} of twice is still running: wait for it",
    )
    deadline = time.monotonic() + 300  # let it finish inside this test: it publishes twice@1
    while client.get(f"/api/train/{run}").json()["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)


HOSTILE_FEATURE = "<script>alert('feature')</script>"
HOSTILE_CLASS = "<img src=x onerror=alert(1)>"


def test_hostile_feature_and_class_names_are_shown_as_text(
    settings: Settings, client: TestClient, tmp_path: Path
) -> None:
    rows = ["x,<b>y</b>,label".replace("x", json.dumps(HOSTILE_FEATURE)).replace("<b>y</b>", "other")]
    rows += [f"{i % 7},{i % 3},{HOSTILE_CLASS if i % 2 else 'plain'}" for i in range(60)]
    data = tmp_path / "hostile.csv"
    data.write_text("\n".join(rows) + "\n")
    raw = {
        "name": "hostile",
        "data": {"path": str(data)},
        "target": "label",
        "features": [{"name": HOSTILE_FEATURE, "type": "numeric"}, {"name": "other", "type": "numeric"}],
        "algorithms": ["logistic_regression"],
        "search": {"strategy": "random", "trials": 1},
        "cv_folds": 2,
        "gate": {"min_score": 0.0, "compare_to_production": False},
    }
    outcome = run_training(settings, parse_spec(raw, base_dir=tmp_path))
    assert outcome.published is not None, outcome.verdict
    version = outcome.published.version
    for path in (
        "/",
        f"/models/hostile/versions/{version}",
        f"/models/hostile/versions/{version}/predict",
        f"/models/hostile/versions/{version}/batch",
        "/models/hostile/monitoring",
    ):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    detail = client.get(f"/models/hostile/versions/{version}").text
    assert "&lt;script&gt;alert(&#x27;feature&#x27;)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail


def test_a_metric_that_is_not_a_number_is_null_in_the_api(settings: Settings, client: TestClient) -> None:
    with Registry(settings.database_url, ensure_schema=False) as registry:
        source = registry.get_version("iris", 1)
        with registry.reserve_version("not-a-number") as reservation:
            reservation.record(
                storage_uri=source.storage_uri,
                sha256=source.sha256,
                metrics={"accuracy": float("nan"), "f1_macro": float("inf"), "roc_auc": 0.9},
                params=source.params,
                algorithm=source.algorithm,
            )
    answer = client.get("/api/models/not-a-number/versions/1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["metrics"] == {"accuracy": None, "f1_macro": None, "roc_auc": 0.9}
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert models["not-a-number"]["latest_metrics"]["accuracy"] is None
    assert client.get("/models/not-a-number").status_code == 200
