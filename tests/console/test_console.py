"""The console in Debian's Chromium, against a real registry (SQLite, then PostgreSQL) and a real predictor.

Each test saves a screenshot of its page into its tmp dir (two of them are committed under docs/).
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from modelyard.registry import Stage

from ..serving.conftest import post_json
from .conftest import IRIS_CSV, RUNS, Console, iris_spec

ROW = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def test_models_list_shows_the_trained_model(console: Console, page: Any, tmp_path: Path) -> None:
    page.goto(console.url + "/")
    table = page.locator("#models")
    assert table.locator("th[scope=row]").all_inner_texts() == ["iris"]
    cells = table.locator("tbody tr").first.locator("td").all_inner_texts()
    assert cells[:4] == ["—", "v2", "v2", "2"]  # no production yet; v2 is the latest staging version
    shot(page, tmp_path, "models")
    page.get_by_role("link", name="iris", exact=True).click()
    assert page.locator("#versions tbody tr").count() == 2
    shot(page, tmp_path, "model")


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
    assert len(page.locator("#lineage").inner_text()) > 64  # the fingerprint is shown
    shot(page, tmp_path, "version")
    page.get_by_role("link", name="Full report (report.html)").click()
    page.wait_for_url("**/report.html")
    assert "iris" in page.content()


def test_compare_shows_two_versions(console: Console, page: Any, tmp_path: Path) -> None:
    page.goto(console.url + "/models/iris")
    page.get_by_label("v1").check()
    page.get_by_label("v2").check()
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url("**/compare?v=*")
    assert page.locator("figure.confusion-matrix").count() == 2
    assert page.locator("#roc polyline").count() == 6
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


def test_predict_shows_the_predictors_error(console: Console, page: Any) -> None:
    page.goto(console.url + "/models/iris/versions/1/predict")
    page.get_by_label("sepal_length").fill("")
    page.get_by_label("sepal_length").evaluate("element => element.removeAttribute('required')")
    page.get_by_role("button", name="Predict").click()
    message = page.locator("#message.error")
    message.wait_for()
    assert "missing sepal_length" in message.inner_text()


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
    assert "Scored 10 rows" in page.locator("#progress").inner_text()
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


def test_monitoring_shows_drift_per_feature_and_the_prediction_mix(
    console: Console, page: Any, tmp_path: Path
) -> None:
    rows = np.random.default_rng(0).normal([5.8, 3.0, 3.8, 1.2], 0.4, size=(40, 4)).round(2).tolist()
    request = {"inputs": [{"name": "input-0", "shape": [40, 4], "datatype": "FP64", "data": rows}]}
    answer = post_json(console.predictor.url + "/v2/models/iris/infer", request)
    assert answer.status == 200, answer.body
    deadline = time.monotonic() + 60
    while True:  # the predictor writes its log in batches, about once a second
        page.goto(console.url + "/models/iris/monitoring?hours=24")
        logged = int(page.locator("#logged").inner_text().split()[0])
        if logged >= 40 or time.monotonic() > deadline:
            break
        time.sleep(1)
    captions = page.locator("#drift figcaption").all_inner_texts()  # reference against current
    assert {caption.split(":")[0] for caption in captions} >= set(ROW)  # every feature, then the outputs
    assert all("PSI" in caption for caption in captions)
    mix = page.locator("#mix tbody tr")
    assert sum(int(row.locator("td").inner_text()) for row in mix.all()) >= 40
    assert page.locator("#mix-over-time polyline").count() == mix.count()
    shot(page, tmp_path, "monitoring")
    page.goto(console.url + "/")
    live = page.locator("#models tbody tr").first.locator("td").last.inner_text()
    assert "predictions in 24 h, no labels yet" in live and int(live.split()[0]) >= 40
    page.goto(console.url + "/models/iris/monitoring?hours=abc")
    assert "hours must be a number" in page.locator("#message").inner_text()


def test_promote_changes_the_registry(console: Console, page: Any, tmp_path: Path) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(console.url + "/models/iris/versions/1")
    page.get_by_role("button", name="Promote iris@1 to production").click()
    page.locator("#message.ok").wait_for()
    with console.registry() as registry:
        assert registry.get_version("iris", 1).stage is Stage.PRODUCTION
    page.wait_for_load_state()
    page.goto(console.url + "/")
    assert page.locator("#models tbody tr").first.locator("td").first.inner_text() == "v1"
    shot(page, tmp_path, "promoted")


def test_rollback_from_the_page_and_its_refusal(console: Console, page: Any) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(console.url + "/models/iris")
    page.get_by_role("button", name="Roll back production").click()
    refusal = page.locator("#message.error")
    refusal.wait_for()
    assert "iris" in refusal.inner_text() and "roll" in refusal.inner_text().lower()
    page.get_by_role("button", name="Promote v2").click()
    page.get_by_text("iris@2 is now production").wait_for()
    page.wait_for_load_state()
    page.goto(console.url + "/models/iris")
    page.get_by_role("button", name="Roll back production").click()
    page.get_by_text("iris@1 is now production").wait_for()
    with console.registry() as registry:
        assert registry.get_version("iris", 1).stage is Stage.PRODUCTION
        assert registry.get_version("iris", 2).stage is Stage.ARCHIVED


def _api(console: Console, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(console.url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/api/models/nope/versions/1", None, 404, "nope"),
        ("GET", "/api/models/iris/versions/abc", None, 400, "a version is a positive integer, got 'abc'"),
        ("GET", "/api/models/iris/versions/99", None, 404, "99"),
        ("GET", "/api/models/iris/compare?v=1&v=x", None, 400, "a version is a positive integer, got 'x'"),
        ("GET", "/api/models/iris/compare?v=2", None, 400, "choose at least two different versions"),
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
        ("POST", "/api/train", b"name: [unclosed", 422, "the spec is not valid YAML"),
        ("GET", "/api/train/nope", None, 404, "no training run 'nope'"),
        ("GET", "/api/nothing-here", None, 404, "no such page"),
    ],
)
def test_api_errors_name_the_problem(
    console: Console, method: str, path: str, body: bytes | None, status: int, message: str
) -> None:
    found_status, document = _api(console, method, path, body)
    assert (found_status, message in document["error"]) == (status, True), document


def test_training_started_from_the_page_publishes_a_version(
    console: Console, page: Any, tmp_path: Path
) -> None:
    spec = iris_spec(RUNS[0]).model_dump(mode="json", exclude_none=True)
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
    assert "published iris@3 (staging)" in message.inner_text()
    with console.registry() as registry:
        assert registry.get_version("iris", 3).algorithm == "logistic_regression"
    shot(page, tmp_path, "train")
