"""The console's HTML, rendered on the server from what ``service`` returns.

Pages are plain HTML with one small script (``static/console.js``) that sends the forms to the JSON API
and shows its answers and errors in place. Markup is escaped in one place, ``_e``.
"""

from __future__ import annotations

import json
from html import escape, unescape
from typing import Any
from urllib.parse import quote

from modelyard.console import plots

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#111;background:#fff;line-height:1.45}
header{background:#12355b;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#fff;font-weight:600;margin-right:1rem}
main{padding:1rem 1.2rem;max-width:1200px}
.skip{position:absolute;left:-10000px}
.skip:focus{position:static;display:inline-block;padding:.4rem;background:#fff}
a{color:#0b4f9c}
a:focus,button:focus,input:focus,select:focus,textarea:focus,summary:focus{
  outline:3px solid #a34f00;outline-offset:2px}
header a:focus{outline-color:#ffd27a}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #bbb;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#eef2f7}
.message{padding:.6rem .8rem;margin:.6rem 0;border-radius:4px;white-space:pre-line}
.message.error{background:#fdecea;border:1px solid #a3153a;color:#6b0d26}
.message.ok{background:#e8f5e9;border:1px solid #2d7a2d;color:#1b4d1b}
.message:empty{display:none}
button{background:#12355b;color:#fff;border:0;padding:.45rem .9rem;border-radius:4px;cursor:pointer;
  font-size:1rem}
button.danger{background:#a3153a}
label{display:block;font-weight:600;margin-top:.5rem}
input,select,textarea{font-size:1rem;padding:.3rem;border:1px solid #555;border-radius:3px}
.plots{display:flex;flex-wrap:wrap;gap:1.5rem}
figure{margin:0}
figcaption{font-weight:600;margin-bottom:.3rem}
pre{background:#f5f5f5;padding:.6rem;overflow:auto;white-space:pre-wrap}
.stage-production{font-weight:700;color:#1b4d1b}
.badge{display:inline-block;padding:0 .3rem;border-radius:3px;border:1px solid}
.badge-ok{color:#1b4d1b;background:#e8f5e9}
.badge-bad{color:#6b0d26;background:#fdecea;font-weight:700}
.badge-none{color:#333;background:#f2f2f2}
.stage-staging{font-weight:700;color:#6b3a00}
code{font-size:.9em}
#changed-data td{overflow-wrap:anywhere}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "—"
    return _e(value)


def _link(href: str, text: str) -> str:
    return f'<a href="{_e(href)}">{_e(text)}</a>'


def model_path(name: str) -> str:
    return f"/models/{quote(name)}"


def version_path(name: str, version: int) -> str:
    return f"{model_path(name)}/versions/{version}"


def layout(title: str, body: str, *, error: str | None = None, status: str = "") -> str:
    message = (
        f'<div id="message" class="message error" role="alert">{_e(error)}</div>'
        if error
        else ('<div id="message" class="message" role="status" aria-live="polite"></div>')
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · modelyard</title><style>{STYLE}</style></head><body>"
        '<a class="skip" href="#main">Skip to the content</a>'
        '<header><a href="/">modelyard console</a>'
        '<nav aria-label="main"><a href="/">Models</a> <a href="/train">Train</a></nav>'
        f"<span>{_e(status)}</span></header>"
        f'<main id="main" tabindex="-1"><h1>{_e(title)}</h1>{message}{body}</main>'
        '<script src="/static/console.js" defer></script></body></html>'
    )


def error_page(message: str, status_code: int) -> str:
    return layout(f"Error {status_code}", f"<p>{_link('/', 'Back to the models')}</p>", error=message)


def _metrics_cells(metrics: dict[str, Any], names: list[str]) -> str:
    return "".join(f"<td>{_fmt(metrics.get(name))}</td>" for name in names)


def models_page(models: list[dict[str, Any]], operator: dict[str, Any]) -> str:
    if not models:
        return layout(
            "Models", "<p>No model is registered yet: train one with <code>modelyard train</code>.</p>"
        )
    metric_names = sorted({key for model in models for key in model["latest_metrics"]})
    header = "".join(f'<th scope="col">{_e(name)}</th>' for name in metric_names)
    connected = operator["connected"]
    resources = operator["models"]
    rows = []
    for model in models:
        name = model["name"]
        production = model["production"]
        staging = model["staging"]
        latest = model["latest"]
        health = model["health"] or {}
        resource_cells = ""
        if connected:
            resource = resources.get(name)
            resource_cells = (
                f'<td class="phase">{_e(resource["phase"])}</td>'
                f'<td class="ready">{_status_badge(_ready_state(resource["ready"]), resource["ready"])}</td>'
                if resource
                else '<td class="phase" colspan="2">no Model resource</td>'
            )
        rows.append(
            "<tr>"
            f'<th scope="row">{_link(model_path(name), name)}</th>'
            f"<td>{_link(version_path(name, production), f'v{production}') if production else '—'}</td>"
            f"<td>{_link(version_path(name, staging), f'v{staging}') if staging else '—'}</td>"
            f"<td>{_link(version_path(name, latest), f'v{latest}')}</td>"
            f"<td>{len(model['versions'])}</td>"
            f"{_metrics_cells(model['latest_metrics'], metric_names)}"
            f'<td class="drift">{_drift_cell(health)}</td>'
            f'<td class="accuracy">{_accuracy_cell(health)}</td>'
            f"{resource_cells}"
            f"<td>{_link(model_path(name) + '/monitoring', 'monitoring')}</td>"
            "</tr>"
        )
    hours = next((m["health"]["hours"] for m in models if m["health"]), None)
    window = f" over the last {hours:g} h" if hours is not None else ""
    resource_header = '<th scope="col">Model phase</th><th scope="col">Ready</th>' if connected else ""
    body = (
        '<table id="models"><caption>Registered models (metrics: the latest version\'s holdout; drift and '
        f"live accuracy: every version's logged predictions{_e(window)})</caption>"
        '<thead><tr><th scope="col">model</th><th scope="col">production</th><th scope="col">staging</th>'
        f'<th scope="col">latest</th><th scope="col">versions</th>{header}'
        '<th scope="col">drift</th><th scope="col">live accuracy</th>'
        f'{resource_header}<th scope="col">details</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{'' if connected else _operator_note(operator)}"
    )
    return layout("Models", body)


def _status_badge(state: str, text: str) -> str:
    """A status as words, in a colour that only repeats them (the words carry the meaning)."""
    kind = {"ok": "ok", "drift": "bad", "below-gate": "bad", "False": "bad"}.get(state, "none")
    return f'<span class="badge badge-{kind}" data-state="{_e(state)}">{_e(text)}</span>'


def _ready_state(ready: str) -> str:
    return {"True": "ok", "False": "False"}.get(ready, "none")


def _drift_cell(health: dict[str, Any]) -> str:
    if "error" in health:
        return _status_badge("error", f"unknown: {health['error']}")
    drift = health.get("drift")
    if drift is None:
        return "—"
    state = drift["state"]
    worst = f"{drift['feature']} PSI {drift['psi']:.3f}" if drift["psi"] is not None else ""
    text = {
        "off": "off: the bundle has no drift reference",
        "no-data": "no predictions",
        "too-few-rows": f"too few rows to judge ({drift['rows']}); highest {worst}",
        "drift": f"drift: {worst} > {drift['threshold']:g}",
        "ok": f"ok: highest {worst} ≤ {drift['threshold']:g}",
    }[state]
    return _status_badge(state, text)


def _accuracy_cell(health: dict[str, Any]) -> str:
    if "error" in health:
        return _status_badge("error", "unknown")
    accuracy = health.get("accuracy")
    if accuracy is None:
        return "—"
    state = accuracy["state"]
    predicted, labelled = accuracy["predicted_rows"], accuracy["labelled_rows"]
    value = f"{accuracy['accuracy']:.3f}" if accuracy["accuracy"] is not None else ""
    estimate = (
        f"; estimated {accuracy['estimated_accuracy']:.3f}"
        if accuracy["estimated_accuracy"] is not None
        else ""
    )
    text = {
        "no-data": "no predictions",
        "no-labels": f"{predicted} predictions, no labels yet{estimate}",
        "too-few-labels": f"{value} on {labelled} labelled rows: too few to judge",
        "below-gate": f"below gate: {value} < {accuracy['gate']:.3f} on {labelled} labelled rows",
        "ok": f"ok: {value} ≥ gate {accuracy['gate']:.3f} on {labelled} labelled rows",
    }[state]
    return _status_badge(state, text)


def _operator_note(operator: dict[str, Any]) -> str:
    return f'<p class="operator-note" id="operator-note">Operator not connected: {_e(operator["note"])}</p>'


def _action_button(label: str, url: str, confirm: str, *, danger: bool = False) -> str:
    kind = ' class="danger"' if danger else ""
    return (
        f'<button type="button"{kind} data-action="{_e(url)}" data-confirm="{_e(confirm)}">'
        f"{_e(label)}</button>"
    )


def model_page(name: str, model: dict[str, Any]) -> str:
    # every metric, by name: a JSON column's key order differs between SQLite and PostgreSQL
    metric_names = sorted({key for version in model["versions"] for key in version["metrics"]})
    metric_header = "".join(f'<th scope="col">{_e(metric)}</th>' for metric in metric_names)
    rows = []
    for version in reversed(model["versions"]):
        number = version["version"]
        stage = version["stage"]
        promote = (
            _action_button(
                f"Promote v{number}",
                f"/api/models/{quote(name)}/versions/{number}/promote",
                f"Put {name}@{number} in production? The current production version is archived.",
            )
            if stage != "production"
            else ""
        )
        rows.append(
            "<tr>"
            f'<td><input type="checkbox" name="v" value="{number}" id="compare-{number}" form="compare">'
            f'<label for="compare-{number}" style="display:inline">v{number}</label></td>'
            f"<td>{_link(version_path(name, number), f'{name}@{number}')}</td>"
            f'<td class="stage-{_e(stage)}">{_e(stage)}</td><td>{_e(version["algorithm"])}</td>'
            f"{_metrics_cells(version['metrics'], metric_names)}<td>{_e(version['created_at'][:19])}</td>"
            f"<td>{promote}</td></tr>"
        )
    rollback = _action_button(
        "Roll back production",
        f"/api/models/{quote(name)}/rollback",
        f"Archive {name}'s production version and put back the one before it?",
        danger=True,
    )
    body = (
        f'<form id="compare" method="get" action="{_e(model_path(name))}/compare">'
        '<p>Tick two or more versions, then <button type="submit">Compare</button></p></form>'
        f'<table id="versions"><caption>Versions of {_e(name)}, newest first (holdout metrics)</caption>'
        '<thead><tr><th scope="col">compare</th><th scope="col">version</th>'
        f'<th scope="col">stage</th><th scope="col">algorithm</th>{metric_header}'
        f'<th scope="col">created (UTC)</th><th scope="col">actions</th></tr></thead><tbody>{"".join(rows)}'
        f"</tbody></table><p>{rollback} {_link(model_path(name) + '/monitoring', 'Monitoring')}</p>"
    )
    return layout(f"Model {name}", body)


def _table(rows: list[tuple[str, str]], caption: str, element_id: str) -> str:
    cells = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{v}</td></tr>' for k, v in rows)
    return f'<table id="{element_id}"><caption>{_e(caption)}</caption><tbody>{cells}</tbody></table>'


def _evaluation_plots(
    detail: dict[str, Any], label: str
) -> tuple[str, list[tuple[str, list[float], list[float]]]]:
    evaluation = detail.get("evaluation")
    if not evaluation:
        return "<p>This bundle has no evaluation data (it predates evaluation.json); see its report.</p>", []
    classes = [str(c) for c in evaluation["classes"]]
    matrix = plots.confusion_matrix(
        classes,
        evaluation["confusion_matrix"],
        title=f"Confusion matrix of {label} ({evaluation['rows']} holdout rows)",
    )
    curves = [
        (f"{label}: {curve['positive_class']} (AUC {curve['auc']:.3f})", curve["fpr"], curve["tpr"])
        for curve in evaluation["roc_curves"]
    ]
    figure = (
        f'<figure class="confusion-matrix" data-version="{detail["version"]}"><figcaption>Confusion matrix, '
        f"{_e(label)}</figcaption>{matrix}</figure>"
    )
    return figure, curves


def version_page(detail: dict[str, Any]) -> str:
    name, number = detail["name"], detail["version"]
    label = f"{name}@{number}"
    matrix, curves = _evaluation_plots(detail, label)
    roc = (
        f'<figure id="roc"><figcaption>ROC curves (one-vs-rest)</figcaption>'
        f"{plots.roc_curves(curves, title=f'ROC curves of {label}')}</figure>"
        if curves
        else ""
    )
    metrics = _table(
        [(k, _fmt(v)) for k, v in sorted(detail["metrics"].items())], "Holdout metrics", "metrics"
    )
    params = _table(
        [(k, f"<code>{_e(json.dumps(v))}</code>") for k, v in sorted(detail["params"].items())],
        "Chosen hyper-parameters",
        "params",
    )
    candidate_rows = "".join(
        f"<tr><td>{_e(c['algorithm'])}</td><td>{_e(c['metric'])}</td><td>{_fmt(c['cv_score'])}</td>"
        f"<td>{_fmt(c['cv_std'])}</td><td>{_e(c['n_trials'])}</td><td>{_fmt(c['elapsed_seconds'])}</td></tr>"
        for c in sorted(detail["candidates"], key=lambda c: -float(c["cv_score"]))
    )
    candidates = (
        '<table id="candidates"><caption>Candidates of this run (cross-validated)</caption><thead><tr>'
        '<th scope="col">algorithm</th><th scope="col">metric</th><th scope="col">CV mean</th>'
        '<th scope="col">CV std</th><th scope="col">trials</th><th scope="col">seconds</th></tr></thead>'
        f"<tbody>{candidate_rows}</tbody></table>"
        if candidate_rows
        else ""
    )
    lineage = _table(
        [
            ("stage", f'<span class="stage-{_e(detail["stage"])}">{_e(detail["stage"])}</span>'),
            ("algorithm", _e(detail["algorithm"])),
            ("target", _e(detail["target"])),
            ("classes", _e(", ".join(str(c) for c in detail["classes"]))),
            ("features", _e(", ".join(f"{f['name']} ({f['type']})" for f in detail["features"]))),
            ("dataset", _e(detail["dataset"] or "not a registry dataset")),
            ("dataset fingerprint", f"<code>{_e(detail['dataset_fingerprint'])}</code>"),
            ("bundle", f"<code>{_e(detail['storage_uri'])}</code>"),
            ("bundle sha256", f"<code>{_e(detail['sha256'])}</code>"),
            ("created (UTC)", _e(detail["created_at"])),
            ("libraries", _e(", ".join(f"{k} {v}" for k, v in sorted(detail["library_versions"].items())))),
        ],
        "Lineage",
        "lineage",
    )
    base = version_path(name, number)
    actions = (
        f"<p>{_link(base + '/report.html', 'Full report (report.html)')} · "
        f"{_link(base + '/predict', 'Predict')}"
        f" · {_link(base + '/batch', 'Batch scoring')} · {_link(model_path(name), 'All versions')}</p>"
    )
    if detail["stage"] != "production":
        actions += (
            "<p>"
            + _action_button(
                f"Promote {label} to production",
                f"/api/models/{quote(name)}/versions/{number}/promote",
                f"Put {label} in production? The current production version is archived.",
            )
            + "</p>"
        )
    body = (
        f'{actions}<div class="plots">{matrix}{roc}</div><h2>Metrics and parameters</h2>{metrics}{params}'
        f"{candidates}<h2>Lineage</h2>{lineage}<h2>Model card</h2>"
        # the card's Markdown has its HTML escaped already (it renders elsewhere): shown as text, once
        f'<pre id="model-card">{_e(unescape(detail["model_card"]))}</pre>'
    )
    return layout(f"{label}", body)


def compare_page(comparison: dict[str, Any]) -> str:
    name = comparison["name"]
    details = comparison["versions"]
    labels = [f"v{d['version']}" for d in details]
    header = "".join(
        f'<th scope="col">{_link(version_path(name, d["version"]), text)}</th>'
        for d, text in zip(details, labels, strict=True)
    )
    metric_rows = "".join(
        f'<tr><th scope="row">{_e(k)}</th>{"".join(f"<td>{_fmt(v)}</td>" for v in values)}</tr>'
        for k, values in comparison["metrics"].items()
    )
    summary = {
        "stage": [_e(d["stage"]) for d in details],
        "algorithm": [_e(d["algorithm"]) for d in details],
    }
    summary_rows = "".join(
        f'<tr><th scope="row">{_e(title)}</th>{"".join(f"<td>{cell}</td>" for cell in cells)}</tr>'
        for title, cells in summary.items()
    )
    table = (
        '<table id="compare-metrics"><caption>Holdout metrics side by side</caption>'
        '<thead><tr><th scope="col">'
        f"</th>{header}</tr></thead><tbody>{summary_rows}{metric_rows}</tbody></table>"
    )
    changed = comparison["changed_params"]
    param_rows = "".join(
        f'<tr><th scope="row">{_e(k)}</th>'
        f"{''.join(f'<td><code>{_e(json.dumps(v))}</code></td>' for v in values)}</tr>"
        for k, values in changed.items()
    )
    params = (
        '<table id="changed-params"><caption>Parameters that differ</caption>'
        f'<thead><tr><th scope="col"></th>{header}'
        f"</tr></thead><tbody>{param_rows}</tbody></table>"
        if param_rows
        else "<p>The versions have the same parameters.</p>"
    )
    data = _data_changes(comparison, header)
    matrices = []
    all_curves: list[tuple[str, list[float], list[float]]] = []
    styles: list[plots.Style] = []
    for index, detail in enumerate(details):
        figure, curves = _evaluation_plots(detail, f"{name}@{detail['version']}")
        matrices.append(figure)
        all_curves.extend(curves)
        # one colour per class, one line style per version: no two curves differ by colour alone
        dash = plots.DASHES[index % len(plots.DASHES)]
        styles.extend(plots.Style(plots.PALETTE[c % len(plots.PALETTE)], dash) for c in range(len(curves)))
    roc_title = f"ROC curves of {name} versions {', '.join(labels)}"
    roc = (
        f'<figure id="roc"><figcaption>ROC curves of every version: a colour per class, a line style per '
        f"version</figcaption>{plots.roc_curves(all_curves, title=roc_title, styles=styles)}</figure>"
        if all_curves
        else ""
    )
    body = (
        f"{table}<h2>What changed</h2>{data}{params}<h2>Confusion matrices</h2>"
        f'<div class="plots">{"".join(matrices)}</div><h2>ROC</h2>{roc}'
    )
    return layout(f"Compare {name} {', '.join(labels)}", body)


def _data_changes(comparison: dict[str, Any], header: str) -> str:
    """What each version was trained on, the rows that differ marked in words."""
    differing = [row["name"] for row in comparison["data"] if row["differs"]]
    if comparison["same_data"]:
        verdict = "<p>All versions were trained on the same data (same fingerprint).</p>"
    else:
        verdict = f"<p><strong>The training data differ</strong>: {_e(', '.join(differing))}.</p>"
    rows = []
    for row in comparison["data"]:
        marker = " <strong>(differs)</strong>" if row["differs"] else ""
        cells = "".join(f"<td>{_e(value)}</td>" for value in row["values"])
        rows.append(f'<tr><th scope="row">{_e(row["name"])}{marker}</th>{cells}</tr>')
    return (
        f'{verdict}<table id="changed-data"><caption>The data each version was trained on</caption>'
        f'<thead><tr><th scope="col"></th>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _field(field: dict[str, Any]) -> str:
    name = field["name"]
    ident = f"feature-{_e(name)}"
    label = f'<label for="{ident}">{_e(name)} <small>({_e(field["type"])})</small></label>'
    if field["choices"]:
        options = "".join(f'<option value="{_e(c)}">{_e(c)}</option>' for c in field["choices"])
        return f'{label}<select id="{ident}" name="{_e(name)}" required>{options}</select>'
    if field["type"] == "text":
        return f'{label}<textarea id="{ident}" name="{_e(name)}" rows="3" cols="50" required></textarea>'
    if field["type"] == "numeric":
        default = "" if field["default"] is None else f' value="{_e(field["default"])}"'
        return f'{label}<input id="{ident}" name="{_e(name)}" type="number" step="any" required{default}>'
    return f'{label}<input id="{ident}" name="{_e(name)}" type="text" required>'


def predict_page(detail: dict[str, Any], infer_url: str) -> str:
    name, number = detail["name"], detail["version"]
    api = f"/api/models/{quote(name)}/versions/{number}/predict"
    fields = "".join(_field(field) for field in detail["form"])
    body = (
        f"<p>Posts one row to the V2 endpoint <code>{_e(infer_url)}/versions/{number}/infer</code> "
        f"through <code>POST {_e(api)}</code>.</p>"
        f'<form id="predict" data-api="{_e(api)}">{fields}'
        '<p><button type="submit">Predict</button></p></form>'
        '<section id="result" aria-live="polite"></section>'
    )
    return layout(f"Predict with {name}@{number}", body)


def prediction_html(prediction: dict[str, Any]) -> str:
    """The predict API's ``html`` field: the label and the probability chart, inserted by the page."""
    chart = (
        plots.probability_bars(prediction["probabilities"], title="Probability of each class for this row")
        if prediction["probabilities"]
        else ""
    )
    served = prediction["served_version"]
    note = (
        f"<p>The predictor serves version {_e(served)}, not {prediction['version']}: this is its answer.</p>"
        if served is not None and str(served) != str(prediction["version"])
        else ""
    )
    return f'<p>Predicted label: <strong id="label">{_e(prediction["label"])}</strong></p>{note}{chart}'


def batch_page(detail: dict[str, Any], max_upload_mb: float) -> str:
    name, number = detail["name"], detail["version"]
    api = f"/api/models/{quote(name)}/versions/{number}/score"
    columns = ", ".join(f["name"] for f in detail["features"])
    body = (
        f"<p>Upload a CSV with a header row and the columns <code>{_e(columns)}</code> (at most "
        f"{max_upload_mb:g} MB). It is scored by the batch scoring path (<code>POST {_e(api)}</code>, "
        "the body is the CSV, starts a job; <code>GET /api/score/JOB</code> reports its rows scored and "
        "<code>GET /api/score/JOB/result</code> downloads it); the result adds <code>label</code>, "
        "<code>proba_&lt;class&gt;</code>, <code>model</code> and <code>model_version</code>.</p>"
        f'<form id="batch" data-api="{_e(api)}"><label for="csv-file">CSV file</label>'
        '<input id="csv-file" name="file" type="file" accept=".csv,text/csv" required>'
        '<p><button type="submit">Score</button></p></form>'
        '<div id="batch-status" hidden><label for="batch-progress">Rows scored</label>'
        '<progress id="batch-progress"></progress></div>'
        '<p id="progress" role="status" aria-live="polite"></p><section id="result"></section>'
    )
    return layout(f"Batch scoring with {name}@{number}", body)


def monitoring_page(name: str, report: dict[str, Any], hours: float, operator: dict[str, Any]) -> str:
    parts = [
        '<form method="get"><label for="hours">Window (hours)</label>'
        '<input id="hours" name="hours" type="number"'
        f' min="1" step="any" value="{hours:g}"> <button type="submit">Show</button></form>',
        f'<p id="logged">{report["rows"]} predictions logged between {_e(report["since"][:16])} and '
        f"{_e(report['until'][:16])}"
        f" UTC; drift is measured against v{report['reference_version']}'s training data.</p>",
        '<table id="status"><caption>Status over this window</caption><tbody>'
        f'<tr><th scope="row">drift</th><td>{_drift_cell({"drift": report["drift_status"]})}</td></tr>'
        '<tr><th scope="row">live accuracy</th>'
        f"<td>{_accuracy_cell({'accuracy': report['accuracy_status']})}</td></tr></tbody></table>",
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        parts.append(
            _table(
                [
                    ("predicted rows", _fmt(accuracy.get("predicted_rows"))),
                    ("labelled rows", _fmt(accuracy.get("labelled_rows"))),
                    ("live accuracy", _fmt(accuracy.get("accuracy"))),
                    ("live macro F1", _fmt(accuracy.get("macro_f1"))),
                    ("estimated accuracy (unlabelled)", _fmt(accuracy.get("estimated_accuracy"))),
                ],
                "Live accuracy",
                "accuracy",
            )
        )
    parts.append(_accuracy_over_time(report["accuracy_over_time"]))
    mix = report["prediction_mix"]
    if mix["classes"]:
        rows = "".join(
            f'<tr><th scope="row">{_e(label)}</th><td>{sum(counts)}</td></tr>'
            for label, counts in mix["classes"].items()
        )
        parts.append(
            '<table id="mix"><caption>Prediction mix (rows per predicted label)</caption>'
            f"<tbody>{rows}</tbody></table>"
        )
        over_time = plots.counts_over_time(
            mix["buckets"], mix["classes"], title="Predictions per label over time", y_label="predictions"
        )
        parts.append(
            '<figure id="mix-over-time"><figcaption>Prediction mix over time</figcaption>'
            f"{over_time}</figure>"
        )
    if not report["drift_enabled"]:
        parts.append("<p>This version's bundle has no drift reference.</p>")
    elif not report["drift"]:
        parts.append("<p>No predictions in this window: nothing to compare with the reference yet.</p>")
    figures = []
    for drift in report["drift"]:
        title = f"{drift['name']}: PSI {drift['psi']:.3f}, JS distance {drift['js_distance']:.3f}"
        figures.append(
            f"<figure><figcaption>{_e(title)}</figcaption>"
            f"{plots.paired_histogram(drift['bins'], drift['reference'], drift['current'], title=title)}"
            "</figure>"
        )
    if figures:
        parts.append(f'<h2>Drift per feature</h2><div class="plots" id="drift">{"".join(figures)}</div>')
    parts.append(_operator_section(name, operator))
    return layout(f"Monitoring {name}", "".join(parts))


def _accuracy_over_time(over_time: dict[str, Any]) -> str:
    if not any(value is not None for value in over_time["accuracy"] + over_time["estimated_accuracy"]):
        return (
            '<p id="accuracy-over-time">Live accuracy over time: no labelled or estimable predictions in '
            "this window (labels arrive through the predictor's feedback endpoint).</p>"
        )
    chart = plots.rates_over_time(
        over_time["buckets"],
        {
            "live accuracy (labelled rows)": over_time["accuracy"],
            "ESTIMATED accuracy (unlabelled rows, CBPE)": over_time["estimated_accuracy"],
        },
        title="Live accuracy per time bucket",
        y_label="accuracy (0 to 1)",
        line=("alert gate (holdout accuracy minus tolerance)", over_time["gate"]),
    )
    return f'<figure id="accuracy-over-time"><figcaption>Live accuracy over time</figcaption>{chart}</figure>'


def _operator_section(name: str, operator: dict[str, Any]) -> str:
    heading = "<h2>Operator: the Model resource</h2>"
    if not operator["connected"]:
        return heading + _operator_note(operator)
    resource = operator["model"]
    if resource is None:
        return (
            f'{heading}<p id="operator-note">No Model resource {_e(name)} in namespace '
            f"{_e(operator['namespace'])}: the operator does not manage this model.</p>"
        )
    run = resource["latest_run"] or {}
    summary = _table(
        [
            ("phase", f'<span id="phase">{_e(resource["phase"])}</span>'),
            (
                "Ready",
                _status_badge(_ready_state(resource["ready"]), resource["ready"])
                + (f" {_e(resource['ready_message'])}" if resource["ready_message"] else ""),
            ),
            ("serving version", _fmt(resource["serving_version"])),
            ("URL", _e(resource["url"] or "—")),
            (
                "latest run",
                _e(f"{run.get('kind')} {run.get('name')} ({run.get('trigger')}, {run.get('startedAt')})")
                if run
                else "—",
            ),
        ],
        f"Model {resource['namespace']}/{resource['name']}",
        "model-resource",
    )
    condition_rows = "".join(
        f'<tr><th scope="row">{_e(c.get("type"))}</th><td>{_e(c.get("status"))}</td>'
        f"<td>{_e(c.get('reason'))}</td><td>{_e(c.get('message'))}</td>"
        f"<td>{_e(c.get('lastTransitionTime'))}</td></tr>"
        for c in resource["conditions"]
    )
    conditions = (
        '<table id="conditions"><caption>Conditions (each with the time its status last changed)</caption>'
        '<thead><tr><th scope="col">type</th><th scope="col">status</th><th scope="col">reason</th>'
        '<th scope="col">message</th><th scope="col">since (UTC)</th></tr></thead>'
        f"<tbody>{condition_rows}</tbody></table>"
    )
    version_rows = "".join(
        f"<tr><td>v{_e(v.get('version'))}</td><td>{_e(v.get('stage'))}</td><td>{_fmt(v.get('score'))}</td>"
        f"<td>{_e(v.get('createdAt'))}</td></tr>"
        for v in resource["versions"]
    )
    history = (
        '<table id="rollout-history"><caption>Rollout history: the versions the operator records, newest '
        'first</caption><thead><tr><th scope="col">version</th><th scope="col">stage</th>'
        '<th scope="col">score</th><th scope="col">created (UTC)</th></tr></thead>'
        f"<tbody>{version_rows}</tbody></table>"
        if version_rows
        else '<p id="rollout-history">No version recorded by the operator yet.</p>'
    )
    rollout = _rollout(resource["rollout"])
    return heading + summary + conditions + rollout + history + _analysis(resource["last_analysis"])


def _rollout(rollout: dict[str, Any] | None) -> str:
    """The operator's status.rollout: the candidate's rollout now, or how the last one ended."""
    if not rollout:
        return '<p id="current-rollout">No rollout yet: the operator has rolled out no candidate.</p>'
    steps = rollout.get("steps")
    step = int(rollout.get("step") or 0) + 1
    progressing = rollout.get("state") == "Progressing"
    if not rollout.get("paused"):
        paused = "no"
    elif rollout.get("reason") == "DeploymentModeFixed":
        paused = (
            "yes: KServe keeps the InferenceService's deployment mode, so the operator cannot write it; "
            "the candidate waits, neither judged nor promoted, until the mode is set back or the "
            "InferenceService deleted"
        )
    else:
        paused = "yes: the spec changed, so the candidate waits, unserved, for the new run's version"
    rows = [
        ("state", f'<span id="rollout-state">{_e(rollout.get("state"))}</span>'),
        ("candidate", f"v{_e(rollout.get('candidate'))} (stable v{_e(rollout.get('stable'))})"),
        ("mode", _e(f"{rollout.get('mode')}, {rollout.get('percent')}% of requests to the candidate")),
        ("step", _e(f"{step} of {len(steps)}" if steps else step)),
        ("paused", _e(paused)),
        ("analyses", _e(f"{rollout.get('passes')} passed in this step, {rollout.get('failures')} failed")),
        ("failed checks", _e(", ".join(rollout.get("failedChecks") or []) or "none")),
        ("reason it ended", _e("still in progress" if progressing else rollout.get("reason") or "—")),
        ("message", _e(rollout.get("message"))),
        ("started (UTC)", _e(rollout.get("startedAt"))),
    ]
    return _table(rows, "Current rollout (the operator's status.rollout)", "current-rollout")


def _analysis(analysis: dict[str, Any] | None) -> str:
    if not analysis:
        return '<p id="last-analysis">No analysis yet: no candidate has been rolled out.</p>'
    verdicts = {True: ("ok", "passed"), False: ("bad", "failed"), None: ("none", "no data")}
    rows = []
    for check in analysis.get("checks") or []:
        state, text = verdicts[check.get("passed")]
        rows.append(
            f'<tr><th scope="row">{_e(check.get("name"))}</th><td>{_fmt(check.get("value"))}</td>'
            f"<td>{_fmt(check.get('threshold'))}</td>"
            f'<td><span class="badge badge-{state}">{_e(text)}</span></td></tr>'
        )
    return (
        f'<section id="last-analysis"><h3>Last analysis: {_e(analysis.get("verdict"))}</h3>'
        f"<p>Candidate v{_e(analysis.get('candidate'))}, at {_e(analysis.get('at'))}.</p>"
        '<table id="checks"><caption>Checks of the candidate against the stable version</caption>'
        '<thead><tr><th scope="col">check</th><th scope="col">value</th><th scope="col">threshold</th>'
        f'<th scope="col">result</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


EXAMPLE_SPEC = """name: iris
data: {path: examples/data/iris.csv}
target: species
features:
  - {name: sepal_length, type: numeric}
  - {name: sepal_width, type: numeric}
  - {name: petal_length, type: numeric}
  - {name: petal_width, type: numeric}
algorithms: [logistic_regression, random_forest]
search: {strategy: random, trials: 5}
metric: f1_macro
gate: {min_score: 0.9}
"""


def retrain_page(resources: dict[str, Any]) -> str:
    """The Train page beside the operator: a run is the operator's Job, asked of a Model resource."""
    if not resources["connected"]:
        listing = _operator_note(resources)
    elif not resources["models"]:
        listing = f"<p>No Model resources in namespace {_e(resources['namespace'])}.</p>"
    else:
        buttons = "".join(
            f'<li><button type="button" data-action="/api/models/{quote(name)}/retrain" '
            f'data-confirm="Ask the operator to retrain {_e(name)}? A version that passes the gate is '
            f'published to the registry.">Retrain {_e(name)}</button></li>'
            for name in sorted(resources["models"])
        )
        listing = f'<ul id="retrain">{buttons}</ul>'
    body = (
        "<p>On the cluster a run trains as the operator's Job, not in the console's pod: each button sets "
        "the Model's <code>modelyard.io/retrain-requested</code> annotation (<code>POST "
        "/api/models/NAME/retrain</code>), as the retrain webhook does; the run shows as the Model's latest "
        "run on its Monitoring page. To change what a Model trains, change its spec with kubectl.</p>"
        f"{listing}"
    )
    return layout("Retrain a model on the cluster", body)


def train_page() -> str:
    body = (
        "<p>Paste a model spec (YAML, as for <code>modelyard train --spec</code>; a relative data path is "
        "read from the console's working folder). The run trains, gates and publishes in the console's "
        "process (<code>POST /api/train</code>, then <code>GET /api/train/RUN</code> for its progress).</p>"
        '<form id="train" data-api="/api/train"><label for="spec">Model spec (YAML)</label>'
        f'<textarea id="spec" name="spec" rows="16" cols="80">{_e(EXAMPLE_SPEC)}</textarea>'
        '<p><button type="submit" data-confirm="Start a training run of this spec? A version that passes '
        'the gate is published to the registry.">Start training</button></p></form>'
        '<p id="progress" role="status" aria-live="polite"></p>'
    )
    return layout("Start a training run", body)
