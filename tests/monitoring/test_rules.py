"""Alert rules as code: the checked-in YAML is fresh, promtool accepts it, and every alert is unit tested."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from modelyard.monitoring.rules import RULES_PATH, Thresholds, alert_names, render_rules, rule_groups

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = Path(__file__).parent / "testdata" / "rules.test.yaml"
needs_promtool = pytest.mark.usefixtures("promtool_binary")


def test_the_checked_in_rules_are_fresh() -> None:
    checked_in = (ROOT / RULES_PATH).read_text()
    assert checked_in == render_rules(), (
        "stale: run `python -m modelyard.monitoring.rules` from the repository root"
    )


def test_every_alert_has_a_runbook_a_summary_and_a_severity() -> None:
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["runbook_url"].startswith("https://"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {
        r["annotations"]["runbook_url"].split("#")[1] for g in rule_groups()["groups"] for r in g["rules"]
    }
    for anchor in anchors:
        assert f"## {anchor}" in runbooks, anchor


def test_thresholds_reach_the_expressions() -> None:
    document = rule_groups(Thresholds(drift_psi=0.3))
    drift = next(r for g in document["groups"] for r in g["rules"] if r["alert"] == "ModelyardFeatureDrift")
    assert drift["expr"].endswith("> 0.3") and drift["for"] == "15m"


def test_the_promtool_tests_cover_every_alert_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            if check["exp_alerts"]:
                fired.add(check["alertname"])
                # each case also holds a series that must not fire: fewer alerts than label sets
                assert len(check["exp_alerts"]) < len(
                    {s["series"].split("{")[1] for s in case["input_series"]}
                )
    assert fired == set(alert_names())


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", str(ROOT / RULES_PATH)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
