"""Dashboards as code: the checked-in JSON is fresh, on the Grafana 11.6 schema, every panel queried."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.monitoring.dashboards import (
    DASHBOARDS_DIR,
    model_dashboard,
    panel_queries,
    render_dashboards,
    service_dashboard,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_dashboards_are_fresh() -> None:
    for name, text in render_dashboards().items():
        path = ROOT / DASHBOARDS_DIR / name
        assert path.read_text() == text, f"{path} is stale: run `python -m modelyard.monitoring.dashboards`"
    assert sorted(p.name for p in (ROOT / DASHBOARDS_DIR).glob("*.json")) == sorted(render_dashboards())


def test_dashboards_use_the_grafana_11_6_schema_and_a_datasource_variable() -> None:
    for document in (service_dashboard(), model_dashboard()):
        assert document["schemaVersion"] == 41  # Grafana 11.6; the SDK's 10.1 build writes 36
        variables = {v["name"]: v for v in document["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"
        for panel in document["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}"
                assert panel["targets"], panel["title"]


def test_the_service_and_model_dashboards_show_what_the_issue_lists() -> None:
    service = " ".join(title for title, _ in panel_queries(service_dashboard()))
    for wanted in (
        "Request rate",
        "error",
        "p99",
        "in flight",
        "Rows per model call",
        "Replicas",
        "CPU",
        "Memory",
    ):
        assert wanted in service
    model = " ".join(title for title, _ in panel_queries(model_dashboard()))
    for wanted in ("Class mix", "Confidence", "Feature drift", "Prediction drift", "accuracy", "coverage",
                   "backlog", "spool"):  # fmt: skip
        assert wanted in model
    estimate = [q for _, q in panel_queries(model_dashboard()) if "estimated_accuracy" in q]
    assert estimate and all("ESTIMATE" in json.dumps(model_dashboard()) for _ in estimate)
