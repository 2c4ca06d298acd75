"""The Predict form for a model with a category and a text feature (examples/sentiment.yaml's kind), in
Debian's Chromium against a registry, predictor and console of this module's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from modelyard.bundle import fetch_bundle
from modelyard.registry import Registry
from modelyard.settings import load_settings
from modelyard.spec import parse_spec
from modelyard.workflow import run_training

from ..serving.conftest import post_json, server_env, start_server
from .conftest import FROM_THE_PAGE, ROOT, start_console, stop_console

SENTIMENT_CSV = ROOT / "examples" / "data" / "sentiment.csv"
ROW = {"review": "Lovely kettle, works great and arrived early.", "channel": "store"}


@pytest.fixture(scope="module")
def sentiment_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The console's URL and the predictor's HTTP address; the predictor serves sentiment@1 (naive Bayes,
    two trials)."""
    root = tmp_path_factory.mktemp("console-sentiment")
    settings = load_settings(home=root / "home")
    spec = parse_spec(
        {
            "name": "sentiment",
            "data": {"path": str(SENTIMENT_CSV)},
            "target": "sentiment",
            "features": [{"name": "review", "type": "text"}, {"name": "channel", "type": "categorical"}],
            "algorithms": ["naive_bayes"],
            "search": {"strategy": "random", "trials": 2},
            "cv_folds": 3,
            "metric": "f1_macro",
            "gate": {"min_score": 0.5, "compare_to_production": False},
            "holdout": 0.25,
            "seed": 42,
        },
        base_dir=ROOT,
    )
    outcome = run_training(settings, spec)
    assert outcome.published is not None, outcome.verdict
    with Registry(settings.database_url) as registry:
        record = registry.get_version("sentiment", 1)
    bundle = fetch_bundle(record.storage_uri, root / "predictor-bundle", s3=settings.s3)
    predictor_home = root / "predictor-home"
    predictor = start_server(bundle, predictor_home, "--model-version", "1", env=server_env(predictor_home))
    try:
        url, process, _ = start_console(
            root,
            {
                "MODELYARD_HOME": str(root / "home"),
                "MODELYARD_DATABASE_URL": settings.database_url,
                "MODELYARD_CONSOLE__PREDICTOR_URL": predictor.url,
            },
        )
    except BaseException:
        predictor.stop()
        raise
    yield url, predictor.http_address
    stop_console(process)
    predictor.stop()


def tritonclient_label(http_address: str, row: dict[str, str]) -> str:
    client = httpclient.InferenceServerClient(http_address)
    inputs = []
    for name, value in row.items():
        tensor = httpclient.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=False)
        inputs.append(tensor)
    label = client.infer("sentiment", inputs).as_numpy("label")[0]
    client.close()
    return label.decode() if isinstance(label, bytes) else str(label)


def test_predict_form_offers_the_categories_and_a_text_field(
    sentiment_console: tuple[str, str], page: Any, tmp_path: Path
) -> None:
    url, http_address = sentiment_console
    expected = tritonclient_label(http_address, ROW)

    page.goto(url + "/models/sentiment/versions/1/predict")
    channel = page.get_by_label("channel")
    assert channel.evaluate("element => element.tagName") == "SELECT"
    choices = channel.locator("option").all_inner_texts()
    assert choices == ["mobile_app", "store", "web"]  # the training data's channels
    review = page.get_by_label("review")
    assert review.evaluate("element => element.tagName") == "TEXTAREA"
    channel.select_option(ROW["channel"])
    review.fill(ROW["review"])
    page.get_by_role("button", name="Predict").click()
    label = page.locator("#label")
    label.wait_for()
    assert label.inner_text() == expected
    assert page.locator("#result svg rect").count() == 2  # a bar per class: negative, positive
    page.screenshot(path=str(tmp_path / "predict-text.png"), full_page=True)


def test_an_unseen_category_is_scored_as_the_model_card_says(sentiment_console: tuple[str, str]) -> None:
    url, http_address = sentiment_console
    row = {**ROW, "channel": "fax"}  # not in the training data: the encoder ignores it
    answer = post_json(url + "/api/models/sentiment/versions/1/predict", {"features": row}, FROM_THE_PAGE)
    assert answer.status == 200, answer.body
    assert answer.json()["label"] == tritonclient_label(http_address, row)
    assert set(answer.json()["probabilities"]) == {"negative", "positive"}
