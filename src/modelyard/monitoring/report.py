"""The monitoring report of one model over a recent window, built from the prediction log.

:func:`build_report` reads the window's logged requests (newest first, ``max_rows`` rows at most), bins
their features like the bundle's drift reference, and gathers: a drift table per feature (PSI, Jensen-Shannon
distance, the reference and current share of every bin), the prediction mix per time bucket, and the
live accuracy of the window with its counts (plus the confidence-based estimate for unlabelled rows).
:func:`render_html` turns it into one self-contained HTML page; :meth:`Report.to_dict` is the JSON form.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from modelyard.monitoring.accuracy import AccuracyWindow, live_accuracy
from modelyard.monitoring.drift import drift_reference_of, js_distance, psi
from modelyard.monitoring.reference import Binning
from modelyard.registry.packed import logged_columns
from modelyard.registry.tables import Prediction

DEFAULT_MAX_ROWS = 200_000
TIME_BUCKETS = 24


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str  # a feature's type, or "output"
    rows: int
    psi: float
    js_distance: float
    bins: list[str]
    reference: list[float]
    current: list[float]


@dataclass
class Report:
    model: str
    version: str | None
    since: datetime
    until: datetime
    rows: int
    drift_enabled: bool
    drift: list[FeatureDrift] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    mix: dict[str, list[int]] = field(default_factory=dict)
    accuracy: AccuracyWindow | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "rows": self.rows,
            "drift_enabled": self.drift_enabled,
            "drift": [d.__dict__ for d in self.drift],
            "prediction_mix": {"buckets": self.buckets, "classes": self.mix},
            "accuracy": self.accuracy.to_dict() if self.accuracy is not None else None,
        }


def build_report(
    engine: Engine,
    model: str,
    *,
    since: timedelta,
    version: str | None = None,
    reference_stats: Mapping[str, Any] | None = None,
    numeric_columns: list[str] | None = None,
    now: datetime | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Report:
    """The report of ``model`` (one ``version`` or all) over the last ``since``.

    ``reference_stats`` is the bundle's; without a drift reference in it the report has no drift table.
    ``numeric_columns`` names the numeric features in schema order (default: the reference's order).
    """
    if since <= timedelta(0):
        raise ValueError(f"--since must be a positive duration, got {since}")
    until = now or datetime.now(UTC)
    start = until - since
    conditions = [Prediction.model == model, Prediction.created_at >= start, Prediction.created_at < until]
    if version is not None:
        conditions.append(Prediction.version == version)  # a shadow candidate's rows included
    else:
        conditions.append(Prediction.answered.is_(True))  # what clients got: a shadowed request once
    with engine.connect() as connection:
        logged = _logged(
            connection.execute(
                select(
                    Prediction.rows,
                    Prediction.features,
                    Prediction.labels,
                    Prediction.probabilities,
                    Prediction.packed_features,
                    Prediction.packed_probabilities,
                    Prediction.created_at,
                )
                .where(*conditions)
                .order_by(Prediction.created_at.desc())
                .execution_options(yield_per=500)
            ),
            max_rows,
        )
    reference = drift_reference_of(reference_stats)
    report = Report(model, version, start, until, logged.rows, drift_enabled=reference is not None)
    report.buckets, report.mix = _prediction_mix(logged, start, since)
    if reference is not None and logged.rows:
        report.drift = _drift_table(reference, logged, numeric_columns)
    report.accuracy = live_accuracy(
        engine, model, since=start, until=until, version=version, reference_stats=reference_stats
    )
    return report


@dataclass
class _Logged:
    """The window's logged rows, column by column (newest request first), as the report needs them."""

    rows: int = 0
    features: dict[str, list[Any]] = field(default_factory=dict)
    labels: list[Any] = field(default_factory=list)
    probabilities: dict[str, list[Any]] = field(default_factory=dict)
    created_at: list[datetime] = field(default_factory=list)


def _logged(requests: Iterable[Any], max_rows: int) -> _Logged:
    """The rows of ``requests`` (logged requests, newest first), at most ``max_rows`` of them."""
    logged = _Logged()
    for request in requests:
        take = min(request.rows, max_rows - logged.rows)
        for into, columns in (
            (logged.features, logged_columns(request.features, request.packed_features)),
            (logged.probabilities, logged_columns(request.probabilities, request.packed_probabilities)),
        ):
            for name, values in columns.items():
                into.setdefault(name, [None] * logged.rows).extend(values[:take])
        for into in (logged.features, logged.probabilities):
            for values in into.values():
                values.extend([None] * (logged.rows + take - len(values)))  # absent from this request
        logged.labels.extend((request.labels or [])[:take])
        logged.labels.extend([None] * (logged.rows + take - len(logged.labels)))
        created = request.created_at if request.created_at.tzinfo else request.created_at.replace(tzinfo=UTC)
        logged.created_at.extend([created] * take)
        logged.rows += take
        if logged.rows >= max_rows:
            break
    return logged


def _prediction_mix(
    logged: _Logged, start: datetime, since: timedelta
) -> tuple[list[str], dict[str, list[int]]]:
    width = since / TIME_BUCKETS
    buckets = [(start + width * i).isoformat(timespec="minutes") for i in range(TIME_BUCKETS)]
    mix: dict[str, list[int]] = {}
    for label, created in zip(logged.labels, logged.created_at, strict=True):
        if label is None:
            continue  # a row the log never held (only in a log migrated from per-row predictions)
        index = min(TIME_BUCKETS - 1, max(0, int((created - start) / width)))
        mix.setdefault(str(label), [0] * TIME_BUCKETS)[index] += 1
    return buckets, dict(sorted(mix.items()))


def _drift_table(
    reference: dict[str, Any], logged: _Logged, numeric_columns: list[str] | None
) -> list[FeatureDrift]:
    features: dict[str, Any] = reference.get("features", {})
    numeric = numeric_columns or [name for name, d in features.items() if d.get("type") == "numeric"]
    binning = Binning(reference, numeric)
    absent = [None] * logged.rows
    matrix = (
        np.array(
            [[_number(value) for value in logged.features.get(name, absent)] for name in numeric],
            dtype="float64",
        )
        .reshape(len(numeric), logged.rows)
        .T
    )
    other = {
        name: np.array([_text(value) for value in logged.features.get(name, absent)], dtype=object)
        for name, described in features.items()
        if described.get("type") != "numeric"
    }
    classes = [str(c) for c in reference.get("outputs", {}).get("class", {}).get("values", [])]
    probabilities = None
    if classes:
        probabilities = (
            np.array(
                [[_number(value) for value in logged.probabilities.get(c, absent)] for c in classes],
                dtype="float64",
            )
            .reshape(len(classes), logged.rows)
            .T
        )
        probabilities = probabilities[~np.isnan(probabilities).any(axis=1)]
    counts = binning.count(matrix, other, probabilities)
    table = []
    for name, place in binning.slices.items():
        described = features.get(name) or reference["outputs"][name]
        current = counts[place]
        total = int(current.sum())
        shares = [float(c) / total if total else 0.0 for c in current]
        table.append(
            FeatureDrift(
                name=name,
                kind=described["type"] if name in features else "output",
                rows=total,
                psi=psi(current, np.asarray(described["shares"])) if total else 0.0,
                js_distance=js_distance(current, np.asarray(described["shares"])) if total else 0.0,
                bins=list(described["bins"]),
                reference=[float(s) for s in described["shares"]],
                current=shares,
            )
        )
    return sorted(table, key=lambda d: -d.psi)


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}
td,th{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.bar{display:inline-block;height:.7rem;background:#4c78a8}.ref{background:#bbb}.warn{color:#b00;font-weight:bold}
.hist td{border:none;padding:0 .3rem;font-size:.8rem}
"""


def render_html(report: Report, *, threshold: float = 0.2) -> str:
    """One self-contained page: the drift table with histograms, the prediction mix, live accuracy."""
    title = f"{report.model}{'@' + report.version if report.version else ''}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Monitoring report: {html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Monitoring report: {html.escape(title)}</h1>",
        f"<p>{report.rows} logged prediction rows from {report.since:%Y-%m-%d %H:%M} "
        f"to {report.until:%Y-%m-%d %H:%M} UTC.</p>",
        "<h2>Drift per feature</h2>",
    ]
    if not report.drift_enabled:
        parts.append("<p>Drift is off for this model: its bundle has no drift reference.</p>")
    elif not report.drift:
        parts.append("<p>No logged rows in this window.</p>")
    else:
        parts.append(
            f"<p>PSI above {threshold:g} is flagged.</p><table><tr><th>feature</th><th>rows</th>"
            "<th>PSI</th><th>JS distance</th><th>reference (grey) and current (blue) shares</th></tr>"
        )
        for drift in report.drift:
            flag = " class='warn'" if drift.psi > threshold else ""
            parts.append(
                f"<tr><td>{html.escape(drift.name)} <small>({drift.kind})</small></td><td>{drift.rows}</td>"
                f"<td{flag}>{drift.psi:.3f}</td><td>{drift.js_distance:.3f}</td><td>{_histogram(drift)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Prediction mix over time</h2>")
    if report.mix:
        parts.append(
            "<table><tr><th>from (UTC)</th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in report.mix)
            + "</tr>"
        )
        for index, bucket in enumerate(report.buckets):
            cells = "".join(f"<td>{counts[index]}</td>" for counts in report.mix.values())
            parts.append(f"<tr><td>{bucket}</td>{cells}</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No predictions in this window.</p>")
    parts.append("<h2>Live accuracy</h2>")
    accuracy = report.accuracy
    if accuracy is not None:
        parts.append("<table>")
        rows = [
            ("predicted rows", accuracy.predicted_rows),
            ("labelled rows", accuracy.labelled_rows),
            ("label coverage", f"{accuracy.coverage:.1%}"),
            ("accuracy (labelled rows)", "n/a" if accuracy.accuracy is None else f"{accuracy.accuracy:.3f}"),
            ("macro-F1 (labelled rows)", "n/a" if accuracy.macro_f1 is None else f"{accuracy.macro_f1:.3f}"),
            (
                "ESTIMATED accuracy of unlabelled rows (CBPE)",
                "n/a" if accuracy.estimated_accuracy is None else f"{accuracy.estimated_accuracy:.3f}",
            ),
        ]
        rows += [(f"labels: {label}", count) for label, count in accuracy.label_counts.items()]
        parts += [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _histogram(drift: FeatureDrift) -> str:
    rows = []
    for label, reference, current in zip(drift.bins, drift.reference, drift.current, strict=True):
        rows.append(
            f"<tr><td>{html.escape(label)}</td>"
            f"<td><span class='bar ref' style='width:{reference * 200:.0f}px'></span> {reference:.1%}</td>"
            f"<td><span class='bar' style='width:{current * 200:.0f}px'></span> {current:.1%}</td></tr>"
        )
    return "<table class='hist'>" + "".join(rows) + "</table>"


__all__ = ["FeatureDrift", "Report", "build_report", "render_html"]
