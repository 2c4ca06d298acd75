"""The candidate analysis against a real Prometheus that scrapes, once a second, the series two versions of
three models export (tests/operator/conftest.py): a good candidate passes, a bad one fails naming each
failed check, and a candidate without traffic is inconclusive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelyard.operator.analysis import FAIL, INCONCLUSIVE, PASS, Analysis, Prometheus, PrometheusError
from modelyard.operator.resource import Thresholds

from ..monitoring.conftest import free_ports


def checks_of(verdict: Any) -> dict[str, Any]:
    return {check.name: check for check in verdict.checks}


def test_a_good_candidate_passes_every_check_with_data(prometheus: Prometheus) -> None:
    verdict = Analysis(prometheus, "good", "1m").run(stable=1, candidate=2, thresholds=Thresholds())
    assert verdict.verdict == PASS, verdict.summary()
    checks = checks_of(verdict)
    assert checks["error_ratio"].value == pytest.approx(1.0)
    assert checks["class_mix_js_distance"].value == pytest.approx(0.0, abs=0.01)
    assert checks["agreement"].value == pytest.approx(1.0, rel=0.01)
    assert checks["live_accuracy_delta"].value == pytest.approx(0.01)
    assert checks["latency_p95_ratio"].value == pytest.approx(1.0, rel=0.05)
    assert checks["latency_p95_ratio"].passed is True
    assert all(check.passed for check in verdict.checks)


def test_a_bad_candidate_fails_and_names_each_failed_check(prometheus: Prometheus) -> None:
    verdict = Analysis(prometheus, "bad", "1m").run(stable=1, candidate=2, thresholds=Thresholds())
    assert verdict.verdict == FAIL
    failed = {check.name for check in verdict.failed}
    assert failed == {
        "error_ratio",
        "latency_p95_ratio",
        "class_mix_js_distance",
        "agreement",
        "live_accuracy_delta",
    }
    checks = checks_of(verdict)
    assert checks["error_ratio"].value == pytest.approx(300.0, rel=0.02)  # 30% against the 0.1% floor
    assert checks["agreement"].value == pytest.approx(0.4, rel=0.02)
    assert checks["live_accuracy_delta"].value == pytest.approx(-0.54)
    summary = verdict.summary()
    assert "error_ratio 300" in summary
    assert "(candidate 30.0" in summary
    assert "% of requests failed, stable 0.00%; limit 1.5)" in summary
    assert "agreement 40" in summary


def test_thresholds_decide_the_verdict(prometheus: Prometheus) -> None:
    lenient = Thresholds(
        max_error_ratio=1000,
        max_latency_p95_ratio=1000,
        max_class_mix_js_distance=1,
        min_agreement=0.3,
        accuracy_margin=1,
    )
    verdict = Analysis(prometheus, "bad", "1m").run(stable=1, candidate=2, thresholds=lenient)
    assert verdict.verdict == PASS


def test_a_candidate_without_traffic_is_inconclusive(prometheus: Prometheus) -> None:
    verdict = Analysis(prometheus, "quiet", "1m").run(stable=1, candidate=2, thresholds=Thresholds())
    assert verdict.verdict == INCONCLUSIVE
    assert all(check.passed is None for check in verdict.checks)
    assert checks_of(verdict)["error_ratio"].detail == "error_ratio: no requests of both versions yet"
    assert verdict.summary() == "no check had data yet"


def test_a_candidate_is_served_only_while_its_predictor_reports_it_ready(prometheus: Prometheus) -> None:
    assert Analysis(prometheus, "good", "1m").candidate_served(2)
    assert not Analysis(prometheus, "broken", "1m").candidate_served(2)  # modelyard_model_ready 0
    assert not Analysis(prometheus, "good", "1m").candidate_served(7)  # no such series


def test_a_query_prometheus_refuses_names_the_query(prometheus: Prometheus) -> None:
    with pytest.raises(
        PrometheusError, match=r"Prometheus refused 'sum\(\(': 400 .*unclosed left parenthesis"
    ):
        prometheus.query("sum((")


def test_an_unreachable_prometheus_names_its_address(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with pytest.raises(
        PrometheusError, match=rf"cannot query Prometheus at http://127.0.0.1:{port} \('up'\)"
    ):
        Prometheus(f"http://127.0.0.1:{port}", timeout_s=2).query("up")
