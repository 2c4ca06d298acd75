"""Grafana dashboards as code (grafana-foundation-sdk, Grafana 11.6 schema): the service and the model.

:func:`service_dashboard` shows the model server: request rate and errors, p50/p95/p99 by protocol,
stage times, requests in flight, batch sizes, replicas, CPU and memory. :func:`model_dashboard` shows one
model (a ``$model`` variable): class mix, confidence, drift per feature and of the predictions, live and
estimated accuracy, label coverage, and the prediction log's backlog and spool. :func:`write_dashboards`
renders both into ``charts/modelyard/dashboards/`` where the Helm chart reads them; a test fails when the
checked-in JSON is stale, and another runs every panel's query against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from modelyard.monitoring.rules import SERVER_ERROR_STATUS

DASHBOARDS_DIR = Path("charts/modelyard/dashboards")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
JOB = 'job=~"$job"'
MODEL = 'model=~"$model"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def _queries(*queries: Query) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery()
        .expr(q.expr)
        .legend_format(q.legend)
        .ref_id(chr(ord("A") + i))
        .datasource(DATASOURCE)
        for i, q in enumerate(queries)
    ]


def _series(
    title: str, unit: str, *queries: Query, description: str = "", width: int = 12
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(width)
    if description:
        panel = panel.description(description)
    for query in _queries(*queries):
        panel = panel.with_target(query)
    return panel


def _stat(title: str, unit: str, *queries: Query, description: str = "", width: int = 6) -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(width)
    if description:
        panel = panel.description(description)
    for query in _queries(*queries):
        panel = panel.with_target(query)
    return panel


def _variables(board: dashboard.Dashboard, *, with_model: bool) -> dashboard.Dashboard:
    board = board.with_variable(
        dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    )
    board = board.with_variable(
        dashboard.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(modelyard_model_info, job)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    if with_model:
        board = board.with_variable(
            dashboard.QueryVariable("model")
            .label("Model")
            .datasource(DATASOURCE)
            .query('label_values(modelyard_model_info{job=~"$job"}, model)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
    return board


def _quantile(q: float, selector: str, by: str) -> str:
    buckets = f"modelyard_request_stage_seconds_bucket{{{selector}}}"
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({buckets}[{RATE}])))"


def _confidence(q: float, selector: str) -> str:
    buckets = f"modelyard_prediction_confidence_bucket{{{selector}}}"
    return f"histogram_quantile({q}, sum by (le) (rate({buckets}[{RATE}])))"


def service_dashboard() -> dict[str, Any]:
    total = f'{JOB},stage="total"'
    errors = (
        f'sum by (model) (rate(modelyard_requests_total{{{JOB},status=~"{SERVER_ERROR_STATUS}"}}[{RATE}]))'
    )
    board = (
        dashboard.Dashboard("modelyard: model server")
        .uid("modelyard-service")
        .tags(["modelyard"])
        .time("now-1h", "now")
        .refresh("30s")
    )
    board = _variables(board, with_model=False)
    board = board.with_row(dashboard.Row("Traffic"))
    board = board.with_panel(
        _series(
            "Request rate by protocol",
            "reqps",
            Query(f"sum by (protocol) (rate(modelyard_requests_total{{{JOB}}}[{RATE}]))", "{{protocol}}"),
        )
    ).with_panel(
        _series(
            "Server error ratio",
            "percentunit",
            Query(
                f"({errors} or sum by (model) (rate(modelyard_requests_total{{{JOB}}}[{RATE}])) * 0)"
                f" / sum by (model) (rate(modelyard_requests_total{{{JOB}}}[{RATE}]))",
                "{{model}}",
            ),
            description="5xx answers and the gRPC codes of server faults, over all answers.",
        )
    )
    board = board.with_panel(
        _series(
            "Answers by status",
            "reqps",
            Query(f"sum by (status) (rate(modelyard_requests_total{{{JOB}}}[{RATE}]))", "{{status}}"),
        )
    ).with_panel(
        _series(
            "Latency p50 / p95 / p99 by protocol",
            "s",
            Query(_quantile(0.5, total, "protocol"), "p50 {{protocol}}"),
            Query(_quantile(0.95, total, "protocol"), "p95 {{protocol}}"),
            Query(_quantile(0.99, total, "protocol"), "p99 {{protocol}}"),
        )
    )
    board = board.with_panel(
        _series(
            "p99 by stage",
            "s",
            Query(_quantile(0.99, JOB, "stage"), "{{stage}}"),
            description="decode, queue (waiting for a micro-batch), predict, encode, total.",
        )
    ).with_panel(
        _series(
            "Requests in flight",
            "short",
            Query(f"sum by (job) (rate(modelyard_request_stage_seconds_sum{{{total}}}[{RATE}]))", "{{job}}"),
            description="Average concurrency by Little's law: request-seconds spent per second.",
        )
    )
    board = board.with_row(dashboard.Row("Capacity"))
    board = board.with_panel(
        _series(
            "Rows per model call",
            "short",
            Query(
                f"histogram_quantile(0.5, sum by (le) (rate(modelyard_batch_rows_bucket{{{JOB}}}[{RATE}])))",
                "p50",
            ),
            Query(
                f"histogram_quantile(0.99, sum by (le) (rate(modelyard_batch_rows_bucket{{{JOB}}}[{RATE}])))",
                "p99",
            ),
            Query(
                f"sum(rate(modelyard_batch_rows_sum{{{JOB}}}[{RATE}]))"
                f" / sum(rate(modelyard_batch_rows_count{{{JOB}}}[{RATE}]))",
                "mean",
            ),
        )
    ).with_panel(
        _series(
            "Replicas",
            "short",
            Query(f"count by (model) (modelyard_model_ready{{{JOB}}} == 1)", "ready {{model}}"),
            Query(f"count by (job) (up{{{JOB}}})", "scraped {{job}}"),
        )
    )
    board = board.with_panel(
        _series(
            "CPU",
            "percentunit",
            Query(f"rate(modelyard_process_cpu_seconds_total{{{JOB}}}[{RATE}])", "{{instance}}"),
            description="CPU seconds per second of each replica (1 = one core).",
        )
    ).with_panel(
        _series(
            "Memory (resident)",
            "bytes",
            Query(f"modelyard_process_resident_memory_bytes{{{JOB}}}", "{{instance}}"),
        )
    )
    return _document(board)


def model_dashboard() -> dict[str, Any]:
    selector = f"{JOB},{MODEL}"
    board = (
        dashboard.Dashboard("modelyard: model")
        .uid("modelyard-model")
        .tags(["modelyard"])
        .time("now-6h", "now")
        .refresh("1m")
    )
    board = _variables(board, with_model=True)
    board = board.with_row(dashboard.Row("Predictions"))
    board = board.with_panel(
        _series(
            "Class mix",
            "percentunit",
            Query(
                f"sum by (class) (rate(modelyard_predictions_total{{{selector}}}[{RATE}]))"
                f" / ignoring(class) group_left sum(rate(modelyard_predictions_total{{{selector}}}[{RATE}]))",
                "{{class}}",
            ),
        )
    ).with_panel(
        _series(
            "Confidence",
            "percentunit",
            Query(_confidence(0.1, selector), "p10"),
            Query(_confidence(0.5, selector), "median"),
            description="The probability of the predicted class.",
        )
    )
    board = board.with_row(dashboard.Row("Drift"))
    board = board.with_panel(
        _series(
            "Feature drift (PSI)",
            "short",
            Query(f"max by (feature) (modelyard_drift_psi{{{selector}}})", "{{feature}}"),
            description="Population stability index of the last window against the training data; "
            "above 0.2 for 15 minutes alerts.",
        )
    ).with_panel(
        _series(
            "Feature drift (Jensen-Shannon distance)",
            "short",
            Query(f"max by (feature) (modelyard_drift_js_distance{{{selector}}})", "{{feature}}"),
        )
    )
    board = board.with_panel(
        _series(
            "Prediction drift (PSI)",
            "short",
            Query(f"max by (output) (modelyard_output_drift_psi{{{selector}}})", "{{output}}"),
            description="The predicted class mix and the confidence against the holdout's.",
        )
    ).with_panel(
        _series(
            "Feature bins, all replicas (share of the last hour)",
            "percentunit",
            Query(
                f"sum by (feature, bin) (increase(modelyard_drift_bin_rows_total{{{selector}}}[1h]))"
                " / ignoring(bin) group_left"
                f" sum by (feature) (increase(modelyard_drift_bin_rows_total{{{selector}}}[1h]))",
                "{{feature}} {{bin}}",
            ),
            description="Compare with the reference share of each bin (modelyard_drift_reference_share).",
        )
    )
    board = board.with_panel(
        _stat(
            "Drift detection",
            "short",
            Query(f"min(modelyard_drift_enabled{{{selector}}})", "enabled"),
            description="0: the served bundle has no drift reference (made before drift detection).",
        )
    ).with_panel(
        _stat(
            "Rows in the drift window",
            "short",
            Query(f"sum(modelyard_drift_window_rows{{{selector}}})", "rows"),
        )
    )
    board = board.with_row(dashboard.Row("Accuracy"))
    board = board.with_panel(
        _series(
            "Live and estimated accuracy",
            "percentunit",
            Query(f"max by (window) (modelyard_live_accuracy{{{selector}}})", "live accuracy {{window}}"),
            Query(f"max by (window) (modelyard_live_macro_f1{{{selector}}})", "live macro-F1 {{window}}"),
            Query(f"avg(modelyard_estimated_accuracy{{{selector}}})", "ESTIMATE (CBPE), drift window"),
            Query(
                f"max by (window) (modelyard_live_estimated_accuracy{{{selector}}})",
                "ESTIMATE (CBPE), unlabelled rows",
            ),
            Query(f"max(modelyard_accuracy_gate{{{selector}}})", "gate"),
        )
    ).with_panel(
        _series(
            "Label coverage",
            "percentunit",
            Query(f"max by (window) (modelyard_live_label_coverage{{{selector}}})", "coverage {{window}}"),
        )
    )
    board = board.with_panel(
        _series(
            "Labelled rows by class",
            "short",
            Query(f"max by (class) (modelyard_live_label_rows{{{selector}}})", "{{class}}"),
            Query(f"max(modelyard_live_predicted_rows{{{selector}}})", "predicted rows"),
        )
    )
    board = board.with_row(dashboard.Row("Prediction log"))
    board = board.with_panel(
        _series(
            "Prediction-log backlog",
            "short",
            Query(
                f"sum by (instance) (modelyard_prediction_log_queue_depth{{{JOB}}})", "queued {{instance}}"
            ),
            Query(
                f"sum by (reason) (rate(modelyard_prediction_log_dropped_total{{{JOB}}}[{RATE}]))",
                "dropped {{reason}}",
            ),
            Query(f"sum(rate(modelyard_prediction_log_written_total{{{JOB}}}[{RATE}]))", "written/s"),
        )
    ).with_panel(
        _series(
            "Prediction-log spool",
            "bytes",
            Query(f"sum by (instance) (modelyard_prediction_log_spool_bytes{{{JOB}}})", "{{instance}}"),
        )
    )
    return _document(board)


def _document(board: dashboard.Dashboard) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return document


def panel_queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of a dashboard."""
    found = []
    for panel in document.get("panels", []):
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def render_dashboards() -> dict[str, str]:
    """File name -> JSON text, as checked in."""
    return {
        "modelyard-service.json": json.dumps(service_dashboard(), indent=2, sort_keys=True) + "\n",
        "modelyard-model.json": json.dumps(model_dashboard(), indent=2, sort_keys=True) + "\n",
    }


def write_dashboards(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_dashboards().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in write_dashboards():
        print(f"wrote {path}")
