"""Real Prometheus, real model server: injected drift crosses the threshold for the shifted feature only,
and every dashboard panel's query returns data."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelyard.monitoring.dashboards import model_dashboard, panel_queries, service_dashboard
from modelyard.monitoring.rules import Thresholds

from .conftest import (
    MODEL,
    Predictor,
    Prometheus,
    frame,
    http_json,
    send_traffic,
    start_prometheus,
    wait_until,
)

pytestmark = pytest.mark.slow
SHIFTED = "f2"


@pytest.fixture(scope="module")
def prometheus(
    predictor: Predictor, tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str
) -> Iterator[Prometheus]:
    server = start_prometheus(
        tmp_path_factory.mktemp("prometheus"), [predictor.url.removeprefix("http://")], prometheus_binary
    )
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def loaded(predictor: Predictor, prometheus: Prometheus) -> Predictor:
    """Traffic with one feature shifted by three standard deviations, from four clients at once."""
    # Prometheus' first scrape comes seconds after it is ready: rates need samples from before the traffic
    wait_until(lambda: prometheus.query('up{job="modelyard"} == 1'), "the first scrape", 60)
    live, _ = frame(4000, 7)
    live[SHIFTED] = live[SHIFTED] + 3.0
    parts = [live.iloc[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        request_ids = [ids for ids in pool.map(lambda part: send_traffic(predictor.url, part), parts)]
    # a client's mistake, so the status panels have a 400 too
    status, _ = http_json(f"{predictor.url}/v1/models/{MODEL}:predict", {"instances": [{"f0": "x"}]})
    assert status == 400
    first = request_ids[0][0]
    for row in range(40):
        status, answer = http_json(
            f"{predictor.url}/v1/models/{MODEL}/feedback",
            {"request_id": first, "row": row, "label": "yes" if row % 3 else "no"},
        )
        assert status == 200, answer
    wait_until(
        lambda: (
            len(prometheus.query(f'modelyard_drift_psi{{model="{MODEL}"}}')) == 4
            and prometheus.query(f'modelyard_live_accuracy{{model="{MODEL}"}}')
        ),
        "drift and live accuracy scraped",
        60,
    )
    wait_until(
        lambda: prometheus.query("count_over_time(modelyard_drift_window_rows[2m]) > 3"), "later scrapes", 60
    )
    return predictor


def test_only_the_shifted_feature_crosses_the_drift_threshold(
    loaded: Predictor, prometheus: Prometheus
) -> None:
    threshold = Thresholds().drift_psi
    psi = {r["metric"]["feature"]: float(r["value"][1]) for r in
           prometheus.query(f'max by (feature) (modelyard_drift_psi{{model="{MODEL}"}})')}  # fmt: skip
    js = {r["metric"]["feature"]: float(r["value"][1]) for r in
          prometheus.query(f'max by (feature) (modelyard_drift_js_distance{{model="{MODEL}"}})')}  # fmt: skip
    assert set(psi) == {"f0", "f1", "f2", "f3"}
    assert psi[SHIFTED] > threshold, psi
    assert all(value < threshold / 2 for name, value in psi.items() if name != SHIFTED), psi
    assert js[SHIFTED] > 0.5 and all(value < 0.1 for name, value in js.items() if name != SHIFTED), js
    # the same verdict from the raw counters, summed over replicas the way a recording rule would
    shares = prometheus.query(
        f'sum by (feature, bin) (modelyard_drift_bin_rows_total{{model="{MODEL}"}})'
        f' / ignoring(bin) group_left sum by (feature) (modelyard_drift_bin_rows_total{{model="{MODEL}"}})'
    )
    reference = prometheus.query(f'modelyard_drift_reference_share{{model="{MODEL}",feature="{SHIFTED}"}}')
    above = {r["metric"]["bin"]: float(r["value"][1]) for r in shares if r["metric"]["feature"] == SHIFTED}
    expected = {r["metric"]["bin"]: float(r["value"][1]) for r in reference}
    assert set(above) == set(expected)
    high_tail = next(b for b in expected if b.startswith(">"))
    assert (
        expected[high_tail] == 0.0 and above[high_tail] > 0.3
    )  # most shifted values left the training range


def _concrete(expr: str) -> str:
    # the traffic ended moments ago: a range like a dashboard of the last hour would use
    return expr.replace("$__rate_interval", "2m").replace('"$job"', '".*"').replace('"$model"', f'"{MODEL}"')


@pytest.mark.parametrize("board", [service_dashboard, model_dashboard], ids=["service", "model"])
def test_every_dashboard_panel_returns_data(board: object, loaded: Predictor, prometheus: Prometheus) -> None:
    empty = []
    for title, expr in panel_queries(board()):  # type: ignore[operator]
        if not prometheus.query(_concrete(expr)):
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_feedback_for_an_unknown_request_id_is_a_clear_404_and_loses_nothing(loaded: Predictor) -> None:
    from sqlalchemy import func, select

    from modelyard.registry.db import create_engine_for
    from modelyard.registry.tables import Feedback, Prediction

    engine = create_engine_for(loaded.database_url)
    try:
        with engine.connect() as connection:
            before = connection.execute(select(func.count()).select_from(Feedback)).scalar_one()
        status, answer = http_json(
            f"{loaded.url}/v1/models/{MODEL}/feedback", {"request_id": "never-sent", "label": "yes"}
        )
        assert status == 404
        assert "no logged prediction of model 'drifty' has request id 'never-sent'" in answer["error"]
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(Feedback)).scalar_one() == before == 40
            assert connection.execute(select(func.sum(Prediction.rows))).scalar_one() == 4000
    finally:
        engine.dispose()
