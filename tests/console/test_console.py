"""The console in Debian's Chromium, against a real registry (SQLite; PostgreSQL too for the tests that read
or change it, ON_BOTH_REGISTRIES) and a real predictor.

Each test saves a screenshot of its page into its tmp dir. The README shows two of them, copied by hand
from a run: docs/console-compare.png is compare.png, docs/console-version.png is version.png cut above
its Lineage table (which names the run's temporary store).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from modelyard.registry import Stage
from modelyard.workflow import run_training

from ..serving.conftest import free_ports, post_json, send
from .conftest import (
    FROM_THE_PAGE,
    IRIS_CSV,
    ON_BOTH_REGISTRIES,
    RUNS,
    UPLOAD_LIMIT_MB,
    Console,
    iris_spec,
    start_console,
    stop_console,
)

ROW = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


# Each test sets the stage state it needs (or registers a model of its own), so none depends on which ran
# before it on the module's shared registry.
def no_production(console: Console) -> None:
    """Every iris version back in staging, as training left them."""
    with console.registry() as registry:
        for record in registry.list_versions("iris"):
            if record.stage is not Stage.STAGING:
                registry.set_stage("iris", record.version, Stage.STAGING)


def own_model(console: Console, name: str) -> str:
    """A model ``name`` of its own, with no stage history: iris@1 and iris@2's bundles registered again under
    a fresh name (``name`` and a random suffix), both in staging; returns the name."""
    model = f"{name}-{uuid.uuid4().hex[:6]}"
    with console.registry() as registry:
        for version in (1, 2):
            source = registry.get_version("iris", version)
            with registry.reserve_version(model) as reservation:
                reservation.record(
                    storage_uri=source.storage_uri,
                    sha256=source.sha256,
                    metrics=source.metrics,
                    params=source.params,
                    algorithm=source.algorithm,
                    dataset_fingerprint=source.dataset_fingerprint,
                )
    return model


def model_row(page: Any, name: str) -> Any:
    return page.locator("#models tbody tr").filter(has=page.get_by_role("rowheader", name=name, exact=True))


@ON_BOTH_REGISTRIES
def test_models_list_shows_the_trained_model(console: Console, page: Any, tmp_path: Path) -> None:
    no_production(console)
    page.goto(console.url + "/")
    table = page.locator("#models")
    assert "iris" in table.locator("th[scope=row]").all_inner_texts()
    row = model_row(page, "iris")
    cells = row.locator("td").all_inner_texts()
    assert cells[:4] == ["—", "v2", "v2", "2"]  # no production yet; v2 is the latest staging version
    assert row.locator("td.drift").inner_text() == "no predictions"
    assert row.locator("td.accuracy").inner_text() == "no predictions"
    # Kubernetes is off by default: the page says so instead of a phase column
    assert "Model phase" not in table.locator("thead").inner_text()
    note = page.locator("#operator-note").inner_text()
    assert "Operator not connected: the console does not ask Kubernetes" in note
    shot(page, tmp_path, "models")
    page.get_by_role("link", name="iris", exact=True).click()
    assert page.locator("#versions tbody tr").count() == 2
    shot(page, tmp_path, "model")


@ON_BOTH_REGISTRIES
def test_version_page_shows_its_confusion_matrix_and_roc(console: Console, page: Any, tmp_path: Path) -> None:
    page.goto(console.url + "/models/iris/versions/1")
    matrix = page.locator("figure.confusion-matrix svg")
    assert matrix.count() == 1
    assert "Confusion matrix of iris@1" in matrix.get_attribute("aria-label")
    counts = [int(text) for text in matrix.locator("text").all_text_contents() if text.isdigit()]
    assert sum(counts) == 30  # the 20 % holdout of 150 rows, every row counted once
    assert page.locator("#roc polyline").count() == 3  # one-vs-rest, three classes
    assert page.locator("#candidates tbody tr").count() == 1
    assert "logistic_regression" in page.locator("#candidates").inner_text()
    with console.registry() as registry:
        fingerprint = registry.get_version("iris", 1).dataset_fingerprint
    assert fingerprint and fingerprint in page.locator("#lineage").inner_text()
    card = page.locator("#model-card").inner_text()
    assert "logistic_regression" in card and "&quot;" not in card and "&amp;" not in card  # escaped once
    shot(page, tmp_path, "version")
    with page.expect_response("**/report.html") as caught:
        page.get_by_role("link", name="Full report (report.html)").click()
    assert caught.value.status == 200
    page.locator('img[alt="confusion matrix"]').wait_for()  # the bundle's report, not an error page


@ON_BOTH_REGISTRIES
def test_compare_shows_two_versions(console: Console, page: Any, tmp_path: Path) -> None:
    page.goto(console.url + "/models/iris")
    page.get_by_label("v1").check()
    page.get_by_label("v2").check()
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url("**/compare?v=*")
    assert page.locator("figure.confusion-matrix").count() == 2
    lines = page.locator("#roc polyline")
    assert lines.count() == 6
    looks = [
        (lines.nth(i).get_attribute("stroke"), lines.nth(i).get_attribute("stroke-dasharray"))
        for i in range(6)
    ]
    assert [dash for _, dash in looks] == [None] * 3 + ["8 4"] * 3  # a line style per version
    assert [colour for colour, _ in looks[:3]] == [colour for colour, _ in looks[3:]]  # a colour per class
    header = page.locator("#compare-metrics thead").inner_text()
    assert "v1" in header and "v2" in header
    algorithms = page.locator("#compare-metrics tr", has_text="algorithm").inner_text()
    assert "logistic_regression" in algorithms and "random_forest" in algorithms
    assert page.locator("#changed-params tbody tr").count() >= 1
    assert "same data" in page.locator("main").inner_text()
    shot(page, tmp_path, "compare")


def test_compare_needs_two_versions(console: Console, page: Any) -> None:
    page.goto(console.url + "/models/iris/compare?v=1")
    assert "choose at least two different versions" in page.locator("#message").inner_text()


def test_predict_form_returns_the_label_tritonclient_gets(
    console: Console, page: Any, tmp_path: Path
) -> None:
    client = httpclient.InferenceServerClient(console.predictor.http_address)
    inputs = []
    for name, value in ROW.items():
        tensor = httpclient.InferInput(name, [1], "FP64")
        tensor.set_data_from_numpy(np.array([value]), binary_data=False)
        inputs.append(tensor)
    expected = client.infer("iris", inputs).as_numpy("label")[0]
    client.close()
    expected = expected.decode() if isinstance(expected, bytes) else str(expected)

    page.goto(console.url + "/models/iris/versions/1/predict")
    for name, value in ROW.items():
        page.get_by_label(name).fill(str(value))
    page.get_by_role("button", name="Predict").click()
    label = page.locator("#label")
    label.wait_for()
    assert label.inner_text() == expected
    assert page.locator("#result svg rect").count() == 3  # a bar per class
    shot(page, tmp_path, "predict")


def _predict_message(page: Any, url: str) -> str:
    page.goto(url)
    page.get_by_role("button", name="Predict").click()  # the form starts at the training medians
    message = page.locator("#message.error")
    message.wait_for()
    return str(message.inner_text())


def test_predict_shows_the_consoles_and_the_predictors_errors(console: Console, page: Any) -> None:
    page.goto(console.url + "/models/iris/versions/1/predict")
    page.get_by_label("sepal_length").fill("")
    page.get_by_label("sepal_length").evaluate("element => element.removeAttribute('required')")
    page.get_by_role("button", name="Predict").click()
    message = page.locator("#message.error")
    message.wait_for()
    assert "missing sepal_length" in message.inner_text()
    # the fixture's predictor serves v1: asked for v2 by its version's route, it says so
    infer = f"{console.predictor.url}/v2/models/iris/versions/2/infer"
    assert _predict_message(page, console.url + "/models/iris/versions/2/predict") == (
        f"the predictor at {infer} answered 404: model 'iris' has no version '2' here: this server "
        "serves version '1'"
    )


def test_predict_against_a_stopped_predictor_says_it_cannot_reach_it(
    console: Console, page: Any, tmp_path: Path
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    variables = {
        "MODELYARD_DATABASE_URL": console.settings.database_url,
        "MODELYARD_CONSOLE__PREDICTOR_URL": f"http://127.0.0.1:{port}",
    }
    url, process, _ = start_console(tmp_path, variables)
    try:
        message = _predict_message(page, url + "/models/iris/versions/1/predict")
    finally:
        stop_console(process)
    assert message.startswith(
        f"cannot reach the predictor at http://127.0.0.1:{port}/v2/models/iris/versions/1/infer: "
    )
    assert "Connection refused" in message


def test_csv_upload_downloads_a_scored_file(console: Console, page: Any, tmp_path: Path) -> None:
    upload = tmp_path / "rows.csv"
    upload.write_text(
        IRIS_CSV.read_text().splitlines()[0]
        + "\n"
        + "\n".join(IRIS_CSV.read_text().splitlines()[1:11])
        + "\n"
    )
    page.goto(console.url + "/models/iris/versions/2/batch")
    page.get_by_label("CSV file").set_input_files(str(upload))
    with page.expect_download() as caught:
        page.get_by_role("button", name="Score").click()
    saved = tmp_path / "scored.csv"
    caught.value.save_as(str(saved))
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert len(rows) == 10
    assert list(rows[0]) == [
        "sepal_length", "sepal_width", "petal_length", "petal_width", "species",
        "label", "proba_setosa", "proba_versicolor", "proba_virginica", "model", "model_version",
    ]  # fmt: skip
    assert {row["model_version"] for row in rows} == {"2"}
    assert "Scored 10 of 10 rows" in page.locator("#progress").inner_text()
    bar = page.locator("#batch-progress")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("10", "10")
    assert caught.value.suggested_filename == "iris-v2-scored.csv"
    shot(page, tmp_path, "batch")


def test_malformed_csv_shows_its_error(console: Console, page: Any, tmp_path: Path) -> None:
    page.goto(console.url + "/models/iris/versions/2/batch")
    missing = tmp_path / "missing-column.csv"
    missing.write_text("sepal_length,sepal_width,petal_length\n5.1,3.5,1.4\n")
    page.get_by_label("CSV file").set_input_files(str(missing))
    page.get_by_role("button", name="Score").click()
    message = page.locator("#message.error")
    message.wait_for()
    assert "the uploaded CSV failed validation" in message.inner_text()
    assert "missing column(s) the model iris@2 needs: petal_width" in message.inner_text()
    shot(page, tmp_path, "batch-error")
    header = "sepal_length,sepal_width,petal_length,petal_width\n"
    for content, error in [
        (header + "5.1,3.5,1.4,0.2\n1,2,3,4,5,6\n", "Expected 4 fields in line 3, saw 6"),
        (
            header + "abc,3.5,1.4,0.2\n",
            "column 'sepal_length' is numeric for the model but holds 1 non-numeric",
        ),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(content)
        page.get_by_label("CSV file").set_input_files(str(bad))
        page.get_by_role("button", name="Score").click()
        page.get_by_text(error).wait_for()
        assert "/tmp/" not in page.locator("#message").inner_text()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    page.get_by_label("CSV file").set_input_files(str(empty))
    page.get_by_role("button", name="Score").click()
    page.get_by_text("the uploaded file is empty").wait_for()


def _send_labelled_traffic(console: Console, rows: int, labelled: int) -> None:
    """``rows`` rows with petal_length shifted far out of its training range, then the predicted label as
    feedback for the first ``labelled`` of them (so live accuracy is 1.0)."""
    values = np.random.default_rng(0).normal([5.8, 3.0, 3.8, 1.2], 0.4, size=(rows, 4))
    values[:, 2] += 4.0
    tensor = {"name": "input-0", "shape": [rows, 4], "datatype": "FP64", "data": values.round(2).tolist()}
    request = {"id": "console-monitoring", "inputs": [tensor]}
    answer = post_json(console.predictor.url + "/v2/models/iris/infer", request)
    assert answer.status == 200, answer.body
    labels = next(o for o in json.loads(answer.body)["outputs"] if o["name"] == "label")["data"]
    for row in range(labelled):
        deadline = time.monotonic() + 60
        while True:  # the predictor writes its log in batches, about once a second: 404 until then
            sent = post_json(
                console.predictor.url + "/v1/models/iris/feedback",
                {"request_id": "console-monitoring", "row": row, "label": labels[row]},
            )
            if sent.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sent.status == 200, sent.body


@ON_BOTH_REGISTRIES
def test_monitoring_shows_drift_live_accuracy_over_time_and_the_prediction_mix(
    console: Console, page: Any, tmp_path: Path
) -> None:
    no_production(console)
    _send_labelled_traffic(console, rows=300, labelled=40)
    page.goto(console.url + "/models/iris/monitoring?hours=24")
    logged = int(page.locator("#logged").inner_text().split()[0])
    assert logged >= 300
    assert "against v2's training data" in page.locator("#logged").inner_text()  # no production: the latest
    captions = page.locator("#drift figcaption").all_inner_texts()  # reference against current
    assert {caption.split(":")[0] for caption in captions} >= set(ROW)  # every feature, then the outputs
    assert all("PSI" in caption for caption in captions)
    psi = {c.split(":")[0]: float(c.split("PSI ")[1].split(",")[0]) for c in captions}
    assert psi["petal_length"] > 1.0 and psi["sepal_width"] < 1.0  # the shifted feature, and one that is not
    mix = page.locator("#mix tbody tr")
    assert sum(int(row.locator("td").inner_text()) for row in mix.all()) >= 300
    assert page.locator("#mix-over-time polyline").count() == mix.count()
    status = page.locator("#status")
    assert status.locator("[data-state]").first.get_attribute("data-state") == "drift"
    assert "drift: " in status.inner_text() and " > 0.2" in status.inner_text()
    accuracy_state = status.locator("[data-state]").last
    assert accuracy_state.get_attribute("data-state") == "ok"
    assert "ok: 1.000 ≥ gate" in accuracy_state.inner_text() and "on 40 labelled rows" in status.inner_text()
    # live accuracy over time: a real plot, with its axes, units and legend
    plot = page.locator("#accuracy-over-time svg")
    texts = plot.locator("text").all_text_contents()
    assert "accuracy (0 to 1)" in texts and "bucket start (UTC)" in texts
    assert {"0.00", "0.50", "1.00"} <= set(texts)
    assert "live accuracy (labelled rows)" in texts
    assert "alert gate (holdout accuracy minus tolerance)" in texts
    assert plot.locator("circle").count() >= 1  # the bucket with the labelled rows
    assert "Operator not connected" in page.locator("#operator-note").inner_text()
    shot(page, tmp_path, "monitoring")
    page.goto(console.url + "/")
    row = model_row(page, "iris")
    assert row.locator("td.drift [data-state]").get_attribute("data-state") == "drift"
    assert row.locator("td.accuracy [data-state]").get_attribute("data-state") == "ok"
    page.goto(console.url + "/models/iris/monitoring?hours=abc")
    assert "hours must be a number" in page.locator("#message").inner_text()


@ON_BOTH_REGISTRIES
def test_promote_changes_the_registry(console: Console, page: Any, tmp_path: Path) -> None:
    model = own_model(console, "promoted")
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{console.url}/models/{model}/versions/1")
    with page.expect_event("load", timeout=10_000):  # the page reloads to show the new stage
        page.get_by_role("button", name=f"Promote {model}@1 to production").click()
        page.locator("#message.ok").wait_for()
    # the message is shown again after the reload, so a screen reader still gets to read it
    assert page.locator("#message.ok").inner_text() == f"{model}@1 is now production."
    with console.registry() as registry:
        assert registry.get_version(model, 1).stage is Stage.PRODUCTION
    page.goto(console.url + "/")
    assert model_row(page, model).locator("td").first.inner_text() == "v1"
    shot(page, tmp_path, "promoted")


def test_rollback_from_the_page_and_its_refusal(console: Console, page: Any) -> None:
    model = own_model(console, "rolled-back")
    with console.registry() as registry:
        registry.promote(model, 1)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{console.url}/models/{model}")
    page.get_by_role("button", name="Roll back production").click()
    refusal = page.locator("#message.error")
    refusal.wait_for()
    assert refusal.inner_text() == (
        f"cannot roll back model '{model}': no version was in production before {model}@1"
    )
    page.get_by_role("button", name="Promote v2").click()
    page.get_by_text(f"{model}@2 is now production").wait_for()
    page.wait_for_load_state()
    page.goto(f"{console.url}/models/{model}")
    page.get_by_role("button", name="Roll back production").click()
    page.get_by_text(f"{model}@1 is now production").wait_for()
    with console.registry() as registry:
        assert registry.get_version(model, 1).stage is Stage.PRODUCTION
        assert registry.get_version(model, 2).stage is Stage.ARCHIVED


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/api/models/nope/versions/1", None, 404, "nope"),
        ("GET", "/api/models/iris/versions/abc", None, 400, "a version is a positive integer, got 'abc'"),
        ("GET", "/api/models/iris/versions/99", None, 404, "99"),
        ("GET", "/api/models/iris/compare?v=1&v=x", None, 400, "a version is a positive integer, got 'x'"),
        ("GET", "/api/models/iris/compare?v=2", None, 400, "choose at least two different versions"),
        ("GET", "/api/models/iris/compare?v=1,2,3,4,5,6,7,8,9", None, 400, "at most 8 versions at once"),
        ("GET", "/api/models/iris/monitoring?hours=0", None, 400, "hours must be between 0 and"),
        ("GET", "/api/models/nope/monitoring", None, 404, "model 'nope' is not in the registry"),
        ("POST", "/api/models/iris/versions/1/predict", b"not json", 400, "must be a JSON object"),
        ("POST", "/api/models/iris/versions/1/predict", b'{"features": []}', 400, "must be a JSON object"),
        (
            "POST",
            "/api/models/iris/versions/1/predict",
            b'{"features": {"sepal_length": "x", "sepal_width": 1, "petal_length": 1, "petal_width": 1}}',
            400,
            "feature 'sepal_length' is numeric, got 'x'",
        ),
        ("POST", "/api/models/iris/versions/1/score", b"\xff\xfe\x00", 400, "not UTF-8 text"),
        ("POST", "/api/models/iris/versions/1/score", b" \n", 400, "the uploaded file is empty"),
        ("POST", "/api/models/iris/versions/99/score", b"a\n1\n", 404, "99"),
        ("POST", "/api/models/nope/versions/1/score", b"a\n1\n", 404, "nope"),
        ("GET", "/api/score/nope", None, 404, "no scoring job 'nope'"),
        ("GET", "/api/score/../result", None, 404, "no scoring job '..'"),
        ("GET", "/api/score/..%2F..%2Fetc%2Fpasswd/result", None, 404, "no such page"),
        ("POST", "/api/train", b"name: [unclosed", 422, "the spec is not valid YAML"),
        ("GET", "/api/train/nope", None, 404, "no training run 'nope'"),
        ("GET", "/api/nothing-here", None, 404, "no such page"),
    ],
)
def test_api_errors_name_the_problem(
    console: Console, method: str, path: str, body: bytes | None, status: int, message: str
) -> None:
    answer = send(method, console.url + path, body, FROM_THE_PAGE, timeout=60)
    found_status, document = answer.status, answer.json()
    assert (found_status, message in document["error"]) == (status, True), document


def test_training_started_from_the_page_publishes_a_version(
    console: Console, page: Any, tmp_path: Path
) -> None:
    model = f"trained-{uuid.uuid4().hex[:6]}"  # its own name: the run publishes its version 1
    spec = iris_spec(RUNS[0]).model_dump(mode="json", exclude_none=True) | {"name": model}
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(console.url + "/train")
    page.get_by_label("Model spec (YAML)").fill("")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("the spec is empty").wait_for()
    page.get_by_label("Model spec (YAML)").fill("name: iris\ntarget: species\n")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("the spec is invalid").wait_for()
    assert "data: Field required" in page.locator("#message.error").inner_text()
    page.get_by_label("Model spec (YAML)").fill(yaml.safe_dump(spec))
    page.get_by_role("button", name="Start training").click()
    message = page.locator("#message.ok")
    message.wait_for(timeout=300_000)
    assert f"published {model}@1 (staging)" in message.inner_text()
    with console.registry() as registry:
        assert registry.get_version(model, 1).algorithm == "logistic_regression"
    shot(page, tmp_path, "train")


def _wait_for_job(console: Console, job: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    seen = []
    deadline = time.monotonic() + 120
    while job["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = send("GET", f"{console.url}/api/score/{job['id']}").json()
        seen.append((job["rows_done"], job["rows_total"]))
    return job, seen


def test_a_scoring_job_reports_rows_done_of_total_then_serves_its_result(console: Console) -> None:
    lines = IRIS_CSV.read_text().splitlines()
    body = ("\n".join([lines[0], *(lines[1:] * 34)]) + "\n").encode()  # 5100 rows, three progress chunks
    url = console.url + "/api/models/iris/versions/1/score"
    answer = send("POST", url, body, {"Content-Type": "text/csv", **FROM_THE_PAGE})
    assert answer.status == 202, answer.body
    started = answer.json()
    assert (started["status"], started["download"], started["model"]) == ("running", None, "iris@1")
    job, seen = _wait_for_job(console, started)
    assert job["status"] == "done", job
    assert job["rows_done"] == job["rows_total"] == 5100
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # progress only moves forward
    assert {total for _, total in seen} <= {None, 5100}
    result = send("GET", console.url + job["download"])
    assert result.status == 200
    assert result.headers["content-disposition"] == 'attachment; filename="iris-v1-scored.csv"'
    assert result.headers["x-modelyard-rows"] == "5100"
    assert len(result.body.decode().splitlines()) == 5101

    bad = send("POST", url, b"sepal_length,sepal_width\n1,2\n", {"Content-Type": "text/csv", **FROM_THE_PAGE})
    bad = bad.json()
    failed, _ = _wait_for_job(console, bad)
    assert failed["status"] == "failed"
    assert "missing column(s) the model iris@1 needs: petal_length, petal_width" in failed["message"]
    refused = send("GET", f"{console.url}/api/score/{failed['id']}/result")
    assert refused.status == 409
    assert f"scoring job {failed['id']} failed, it has no result" in refused.json()["error"]


def test_a_file_over_the_upload_limit_is_refused_and_not_read_whole(console: Console) -> None:
    url = console.url + "/api/models/iris/versions/1/score"
    big = b"sepal_length,sepal_width,petal_length,petal_width\n" + b"5.1,3.5,1.4,0.2\n" * 80_000  # 1.3 MB
    message = f"the file is larger than {UPLOAD_LIMIT_MB} MB (MODELYARD_CONSOLE__MAX_UPLOAD_MB)"
    declared = send("POST", url, big, {"Content-Type": "text/csv", **FROM_THE_PAGE})
    assert (declared.status, declared.json()["error"]) == (413, message)
    # chunked, with no length declared: counted as it arrives
    parts = [big[i : i + 65_536] for i in range(0, len(big), 65_536)]
    chunked = send("POST", url, iter(parts), {"Content-Type": "text/csv", **FROM_THE_PAGE})
    assert (chunked.status, chunked.json()["error"]) == (413, message)
    spec = send("POST", console.url + "/api/train", iter([b"#" * 65_536] * 20), FROM_THE_PAGE)
    assert (spec.status, spec.json()["error"]) == (413, "the spec is larger than 1 MB")


def test_actions_sent_from_another_site_are_refused(console: Console) -> None:
    promote = console.url + "/api/models/iris/versions/2/promote"
    with console.registry() as registry:
        before = registry.get_version("iris", 2).stage
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = send("POST", promote, b"", headers)
        assert answer.status == 403, answer.body
        assert "came from another site" in answer.json()["error"]
    with console.registry() as registry:
        assert registry.get_version("iris", 2).stage is before
    # the console's own page (same origin, with the header its script sends) and scripts that send it
    predict = console.url + "/api/models/iris/versions/1/predict"
    host = console.url.removeprefix("http://")
    for headers in ({"Origin": console.url, "Host": host}, {"Sec-Fetch-Site": "same-origin"}, {}):
        answer = send("POST", predict, b"not json", {**headers, **FROM_THE_PAGE})
        assert answer.status == 400 and "must be a JSON object" in answer.json()["error"], headers


def test_a_console_on_loopback_answers_only_requests_addressed_to_loopback(console: Console) -> None:
    port = console.url.rsplit(":", 1)[1]
    rebound = send("GET", console.url + "/api/models", headers={"Host": f"evil.example:{port}"})
    assert (rebound.status, rebound.body) == (400, b"Invalid host header")
    assert send("GET", console.url + "/healthz", headers={"Host": f"localhost:{port}"}).status == 200


def test_pages_run_only_the_consoles_script_and_report_html_is_sandboxed(console: Console) -> None:
    page = send("GET", console.url + "/models/iris")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    report = send("GET", console.url + "/models/iris/versions/1/report.html")
    assert report.status == 200
    assert report.headers["content-security-policy"].startswith("sandbox;")


def test_names_from_the_address_are_shown_as_text_never_as_markup(console: Console, page: Any) -> None:
    page.goto(console.url + "/models/%3Cimg%20src%3Dx%20id%3Dinjected%3E/monitoring")
    message = page.locator("#message").inner_text()
    assert "model '<img src=x id=injected>' is not in the registry" in message
    assert page.locator("#injected").count() == 0
    page.goto(console.url + "/models/iris/versions/%3Cb%3E1")
    assert "a version is a positive integer, got '<b>1'" in page.locator("#message").inner_text()
    assert page.locator("main b").count() == 0


def test_the_predict_form_works_from_the_keyboard_alone(console: Console, page: Any) -> None:
    predict = console.url + "/api/models/iris/versions/1/predict"
    expected = post_json(predict, {"features": ROW}, FROM_THE_PAGE).json()
    page.goto(console.url + "/models/iris/versions/1/predict")
    focused = "document.activeElement.id || document.activeElement.textContent"
    page.keyboard.press("Tab")
    assert page.evaluate(focused) == "Skip to the content"
    for _ in range(8):  # past the header's links to the form's first field
        if page.evaluate(focused) == "feature-sepal_length":
            break
        page.keyboard.press("Tab")
    for name, value in ROW.items():
        assert page.evaluate(focused) == f"feature-{name}"
        page.keyboard.press("Control+A")
        page.keyboard.type(str(value))
        page.keyboard.press("Tab")
    assert page.evaluate(focused) == "Predict"
    page.keyboard.press("Enter")
    page.locator("#label").wait_for()
    assert page.locator("#label").inner_text() == expected["label"]


# Every text node's colour against the first opaque background behind it, as WCAG 2 computes contrast.
CONTRAST = """() => {
  const parse = (text) => {
    const parts = (text.match(/rgba?\\(([^)]+)\\)/) || [null, "0,0,0,0"])[1].split(/[ ,\\/]+/).map(Number);
    return {r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1};
  };
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const luminance = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const backdrop = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const colour = parse(getComputedStyle(e).backgroundColor);
      if (colour.a > 0) return colour;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const low = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const element = node.parentElement;
    if (!node.textContent.trim() || element.closest("svg, script")) continue;
    if (!element.getClientRects().length) continue;
    const [light, dark] = [luminance(parse(getComputedStyle(element).color)), luminance(backdrop(element))]
      .sort((a, b) => b - a);
    const ratio = (light + 0.05) / (dark + 0.05);
    if (ratio < 4.5) low.push(node.textContent.trim().slice(0, 40) + ": " + ratio.toFixed(2));
  }
  return low;
}"""

PAGES = [
    "/",
    "/models/iris",
    "/models/iris/versions/1",
    "/models/iris/compare?v=1&v=2",
    "/models/iris/versions/1/predict",
    "/models/iris/versions/1/batch",
    "/models/iris/monitoring",
    "/train",
    "/models/nope",
]


def test_every_field_and_button_has_an_accessible_name_and_text_has_contrast(
    console: Console, page: Any
) -> None:
    from playwright.sync_api import expect

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    for path in PAGES:
        page.goto(console.url + path)
        controls = page.locator(
            "input:visible, select:visible, textarea:visible, button:visible, progress:visible"
        )
        for index in range(controls.count()):
            expect(controls.nth(index)).to_have_accessible_name(re.compile(r"\S"))
        assert page.evaluate(CONTRAST) == [], path
        assert page.locator("main h1").count() == 1, path
    # nothing is fetched from anywhere but the console: no CDN, no font, no tracker
    assert requested and [url for url in requested if not url.startswith(console.url + "/")] == []


def test_compare_says_what_changed_in_the_data(console: Console, page: Any, tmp_path: Path) -> None:
    # iris@1's bundle as v1 and v2 of a model of its own, then a v3 trained on the first 100 rows (two of
    # the three classes) and without petal_width
    model = own_model(console, "subset")
    subset = tmp_path / "iris-subset.csv"
    subset.write_text("".join(IRIS_CSV.read_text().splitlines(keepends=True)[:101]))
    features = [{"name": name, "type": "numeric"} for name in ("sepal_length", "sepal_width", "petal_length")]
    overrides = {"name": model, "data": {"path": str(subset)}, "features": features}
    outcome = run_training(console.settings, iris_spec({**RUNS[0], **overrides}))
    assert outcome.published is not None, outcome.verdict
    assert outcome.published.version == 3

    page.goto(f"{console.url}/models/{model}/compare?v=1&v=3")
    verdict = page.locator("main p", has_text="The training data differ").inner_text()
    assert verdict == (
        "The training data differ: dataset fingerprint, rows profiled at training, features, class shares."
    )
    rows = {
        row.locator("th").inner_text(): row.locator("td").all_inner_texts()
        for row in page.locator("#changed-data tbody tr").all()
    }
    assert rows["dataset"] == ["not a registry dataset"] * 2
    assert rows["rows profiled at training (differs)"] == ["150", "100"]
    assert rows["class shares (differs)"] == [
        "setosa 33%, versicolor 33%, virginica 33%",
        "setosa 50%, versicolor 50%",
    ]
    assert "petal_width (numeric)" in rows["features (differs)"][0]
    assert "petal_width" not in rows["features (differs)"][1]
    with console.registry() as registry:
        fingerprints = [registry.get_version(model, v).dataset_fingerprint for v in (1, 3)]
    assert rows["dataset fingerprint (differs)"] == fingerprints
