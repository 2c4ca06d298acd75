"""Prometheus alert rules as code: the rule groups the Helm chart installs, each alert with its runbook.

:func:`rule_groups` builds them from :class:`Thresholds`; :func:`render_rules` writes the YAML checked in
at ``charts/modelyard/rules/modelyard.rules.yaml`` (a test fails when that file is stale, and
``promtool test rules`` proves every alert fires and stays quiet when it should). Alerts about a model
carry a ``model`` label, which the retrain webhook reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES_PATH = Path("charts/modelyard/rules/modelyard.rules.yaml")
# the runbooks: one section of docs/runbooks.md per alert
RUNBOOK_URL = "https://github.com/modelyard/modelyard/blob/main/docs/runbooks.md"
# The status values that are the server's fault: HTTP 5xx, and the gRPC codes a server error maps to.
SERVER_ERROR_STATUS = "5..|INTERNAL|UNKNOWN|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED"
# Drops the series of a version some predictor serves as a rollout's candidate (shadow or canary).
NOT_A_CANDIDATE = 'unless on (model, version) modelyard_model_info{role="candidate"}'


@dataclass(frozen=True)
class Thresholds:
    """Where each alert fires. The defaults suit the chart's default settings."""

    p99_seconds: float = 0.5
    error_ratio: float = 0.05
    drift_psi: float = 0.2
    # the prediction log's defaults: log_queue_size 100000 records, spool_max_bytes 256 MiB
    log_backlog_records: int = 80_000
    spool_bytes: int = 200 * 1024 * 1024


def _alert(
    name: str, expr: str, duration: str, severity: str, summary: str, description: str, runbook: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOK_URL}#{runbook}",
        },
    }


def rule_groups(thresholds: Thresholds | None = None) -> dict[str, Any]:
    """The rules file's document: {"groups": [...]}."""
    t = thresholds or Thresholds()
    service = [
        _alert(
            "ModelyardHighLatencyP99",
            # the stable versions' answers: a candidate's time is the rollout analysis's to judge (a shadow
            # candidate's is not even stage total)
            "histogram_quantile(0.99, sum by (job, le) "
            '(rate(modelyard_request_stage_seconds_bucket{stage="total"}[5m]) '
            f"{NOT_A_CANDIDATE})) > " + f"{t.p99_seconds:g}",
            "10m",
            "warning",
            "p99 latency of {{ $labels.job }} is {{ $value | humanizeDuration }}",
            f"The 99th percentile of request time has been above {t.p99_seconds:g}s for 10 minutes.",
            "high-p99",
        ),
        _alert(
            "ModelyardHighErrorRatio",
            # what clients were answered: a shadow candidate's copies (protocol="shadow") are the rollout
            # analysis's to judge, and answer no client
            "sum by (job, model) (rate(modelyard_requests_total"
            f'{{protocol!="shadow",status=~"{SERVER_ERROR_STATUS}"}}[5m])) '
            '/ sum by (job, model) (rate(modelyard_requests_total{protocol!="shadow"}[5m])) > '
            + f"{t.error_ratio:g}",
            "5m",
            "critical",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests fail on the server",
            f"More than {t.error_ratio:.0%} of requests answered a server error (5xx or its gRPC codes).",
            "error-ratio",
        ),
        _alert(
            "ModelyardModelNotReady",
            "modelyard_model_ready == 0",
            "5m",
            "critical",
            "{{ $labels.model }}@{{ $labels.version }} is not ready on {{ $labels.instance }}",
            "The model server is up but its model did not load; its metadata endpoint says why.",
            "not-ready",
        ),
        _alert(
            "ModelyardPredictionLogDropping",
            "sum by (job, reason) (rate(modelyard_prediction_log_dropped_total[5m])) > 0",
            "5m",
            "warning",
            "{{ $labels.job }} drops prediction-log records ({{ $labels.reason }})",
            "Records given up are lost for live accuracy and reports.",
            "log-drops",
        ),
        _alert(
            "ModelyardPredictionLogBacklog",
            f"max by (job, instance) (modelyard_prediction_log_queue_depth) > {t.log_backlog_records}",
            "10m",
            "warning",
            "{{ $labels.instance }} holds {{ $value }} unwritten prediction-log records",
            "The database does not keep up with the prediction log; records will spool and then drop.",
            "log-backlog",
        ),
        _alert(
            "ModelyardSpoolNearlyFull",
            f"max by (job, instance) (modelyard_prediction_log_spool_bytes) > {t.spool_bytes}",
            "5m",
            "warning",
            "the prediction-log spool of {{ $labels.instance }} is {{ $value | humanize1024 }}B",
            "The database has been unreachable long enough to nearly fill the spool; then records drop.",
            "spool-full",
        ),
    ]
    model = [
        _alert(
            "ModelyardFeatureDrift",
            f"max by (model, version, feature) (modelyard_drift_psi) > {t.drift_psi:g}",
            "15m",
            "warning",
            "{{ $labels.model }}@{{ $labels.version }}: feature {{ $labels.feature }} drifted "
            '(PSI {{ $value | printf "%.2f" }})',
            f"The population stability index of the feature against the training data has been above "
            f"{t.drift_psi:g} for 15 minutes.",
            "drift",
        ),
        _alert(
            "ModelyardPredictionDrift",
            f"max by (model, version, output) (modelyard_output_drift_psi) > {t.drift_psi:g}",
            "15m",
            "warning",
            "{{ $labels.model }}@{{ $labels.version }}: the predicted {{ $labels.output }} drifted "
            '(PSI {{ $value | printf "%.2f" }})',
            "The predictions no longer look like the holdout's: the class mix or the confidence moved.",
            "drift",
        ),
        _alert(
            "ModelyardAccuracyBelowGate",
            # a candidate's accuracy is the rollout analysis's to judge: its alert would retrain the model
            f"(min by (model, version) (modelyard_live_accuracy) {NOT_A_CANDIDATE}) "
            "< on (model, version) min by (model, version) (modelyard_accuracy_gate)",
            "15m",
            "critical",
            "{{ $labels.model }}@{{ $labels.version }}: live accuracy {{ $value | humanizePercentage }} "
            "is below its gate",
            "Accuracy on the labelled predictions of the matured window is below the model's gate.",
            "accuracy",
        ),
    ]
    return {
        "groups": [
            {"name": "modelyard-service", "rules": service},
            {"name": "modelyard-model", "rules": model},
        ]
    }


def render_rules(thresholds: Thresholds | None = None) -> str:
    header = (
        "# Generated by `python -m modelyard.monitoring.rules`: edit src/modelyard/monitoring/rules.py.\n"
    )
    return header + yaml.safe_dump(rule_groups(thresholds), sort_keys=False, width=120)


def alert_names() -> list[str]:
    return [rule["alert"] for group in rule_groups()["groups"] for rule in group["rules"]]


if __name__ == "__main__":
    RULES_PATH.parent.mkdir(parents=True, exist_ok=True)
    RULES_PATH.write_text(render_rules())
    print(f"wrote {RULES_PATH}")
