"""The training report (standalone HTML) and the model card (Markdown).

The report embeds its plots as base64 PNG and its style inline: it opens from a bundle, a KFP UI or an
e-mail without fetching anything. Every string that came from a user (names, descriptions, class labels,
feature names, parameter values) is HTML-escaped, in the card too, since Markdown renders raw HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from modelyard.bundle import current_library_versions
from modelyard.spec import FeatureSpec, Metric
from modelyard.training.results import CandidateSummary, Evaluation

# Metrics shown in the holdout tables, in this order.
_HOLDOUT_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "precision_weighted",
    "recall_macro",
    "recall_weighted",
    "roc_auc",
    "log_loss",
)


@dataclass(frozen=True)
class ReportContext:
    """What both documents describe: one training run."""

    name: str
    description: str
    target: str
    metric: Metric
    features: Sequence[FeatureSpec]
    classes: Sequence[Any]
    candidates: Sequence[CandidateSummary]
    winner: CandidateSummary
    evaluation: Evaluation
    train_rows: int
    holdout_rows: int
    class_counts: dict[str, int]
    dataset_fingerprint: str | None = None
    gate_min_score: float | None = None


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _params_text(params: dict[str, Any]) -> str:
    """``C=0.9847, kernel="rbf"``: floats to 4 significant digits (exact values are in the model card)."""

    def shown(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)

    return ", ".join(f"{name}={shown(value)}" for name, value in sorted(params.items())) or "defaults"


def _png(figure: Figure) -> str:
    # Agg renders without a display; a Figure made without pyplot keeps no global state (thread-safe)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def confusion_matrix_png(evaluation: Evaluation) -> str:
    """The confusion matrix as a data: URI."""
    labels = [str(label) for label in evaluation.classes]
    size = max(3.5, 0.55 * len(labels) + 2.0)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    matrix = evaluation.confusion_matrix
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = list(range(len(labels)))
    # parse_math=False: a label such as "$x" is text, not a (possibly invalid) TeX formula
    axes.set_xticks(ticks, labels, rotation=45, ha="right", parse_math=False)
    axes.set_yticks(ticks, labels, parse_math=False)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            colour = "white" if peak and count > peak / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=9)
    axes.set_title("Confusion matrix (holdout)")
    return _png(figure)


def roc_png(evaluation: Evaluation) -> str | None:
    """ROC curves (one-vs-rest for multiclass) as a data: URI; None when no curve could be drawn."""
    if not evaluation.roc_curves:
        return None
    figure = Figure(figsize=(5.0, 4.5))
    axes = figure.add_subplot()
    for curve in evaluation.roc_curves:
        axes.plot(curve.fpr, curve.tpr, label=f"{curve.positive_class} (AUC {curve.auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set_xlim(-0.02, 1)  # a curve along the axis stays visible
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC (holdout)" if len(evaluation.roc_curves) == 1 else "ROC, one-vs-rest (holdout)")
    legend = axes.legend(loc="lower right", fontsize=8)
    for text in legend.get_texts():
        text.set_parse_math(False)
    return _png(figure)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.winner td { background: #eaf6ea; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots img { max-width: 32rem; margin-right: 1rem; }
code { font-size: 0.9em; }
"""


def _ranked(context: ReportContext) -> list[CandidateSummary]:
    others = sorted(
        (c for c in context.candidates if c.algorithm is not context.winner.algorithm),
        key=lambda c: -c.cv_score,
    )
    return [context.winner, *others]


def render_report_html(context: ReportContext) -> str:
    """A standalone HTML page: candidates, holdout metrics, confusion matrix and ROC plots."""
    metric = context.metric.value
    rows = []
    for candidate in _ranked(context):
        css = ' class="winner"' if candidate.algorithm is context.winner.algorithm else ""
        rows.append(
            f"<tr{css}><td>{_e(candidate.algorithm.value)}</td>"
            f'<td class="num">{_fmt(candidate.cv_score)} &plusmn; {_fmt(candidate.cv_std)}</td>'
            f'<td class="num">{candidate.n_trials}</td><td>{_e(candidate.strategy.value)}</td>'
            f'<td class="num">{candidate.elapsed_seconds:.1f}</td>'
            f"<td><code>{_e(_params_text(candidate.best_params))}</code></td></tr>"
        )
    metric_rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="num">{_fmt(context.evaluation.metrics[name])}</td></tr>'
        for name in _HOLDOUT_METRICS
        if name in context.evaluation.metrics
    )
    class_rows = "".join(
        f"<tr><td>{_e(r.label)}</td><td class='num'>{_fmt(r.precision)}</td>"
        f"<td class='num'>{_fmt(r.recall)}</td><td class='num'>{_fmt(r.f1)}</td>"
        f"<td class='num'>{r.support}</td></tr>"
        for r in context.evaluation.per_class
    )
    roc = roc_png(context.evaluation)
    plots = [f'<img alt="confusion matrix" src="{confusion_matrix_png(context.evaluation)}">']
    if roc:
        plots.append(f'<img alt="ROC curves" src="{roc}">')
    holdout_score = context.evaluation.metrics.get(metric)
    gate = ""
    if context.gate_min_score is not None and holdout_score is not None:
        verdict = "passes" if holdout_score >= context.gate_min_score else "fails"
        gate = (
            f"<p>Quality gate: holdout {_e(metric)} {_fmt(holdout_score)} {verdict} "
            f"min_score {context.gate_min_score}.</p>"
        )
    versions = ", ".join(f"{_e(name)} {_e(version)}" for name, version in current_library_versions().items())
    title = _e(f"{context.name}: training report")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<p>{_e(context.description)}</p>
<p>Target <code>{_e(context.target)}</code>, {len(context.classes)} classes, {len(context.features)} features;
{context.train_rows} training rows, {context.holdout_rows} holdout rows.
Selection metric: <code>{_e(metric)}</code> (mean over stratified cross-validation folds).
Dataset fingerprint: <code>{_e(context.dataset_fingerprint or "not recorded")}</code>.</p>
<h2>Candidates</h2>
<table>
<tr><th>algorithm</th><th>CV {_e(metric)} (mean &plusmn; std)</th><th>trials</th><th>search</th>
<th>seconds</th><th>best parameters</th></tr>
{"".join(rows)}
</table>
<h2>Holdout evaluation of the winner, {_e(context.winner.algorithm.value)}</h2>
{gate}
<table><tr><th>metric</th><th>holdout</th></tr>{metric_rows}</table>
<div class="plots">{"".join(plots)}</div>
<h3>Per class</h3>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>{class_rows}</table>
<footer><p><small>{versions}</small></p></footer>
</body>
</html>
"""


def _cell(value: object) -> str:
    """A Markdown table cell: escaped HTML, no pipe or line break to break the table."""
    return _e(value).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def render_model_card(context: ReportContext) -> str:
    """A Markdown model card: intended use, data, features, algorithm, metrics, limitations, versions."""
    winner = context.winner
    metric = context.metric.value
    lines = [
        f"# Model card: {_e(context.name)}",
        "",
        "## Intended use",
        "",
        _e(context.description) or "_No description was given in the spec._",
        "",
        f"Classifies a row into one of {len(context.classes)} classes of `{_cell(context.target)}` "
        f"from the {len(context.features)} features below, returning the class and its probabilities. "
        "It is meant for data drawn like the training data; it is not a substitute for human review "
        "where a wrong prediction is costly.",
        "",
        "## Data",
        "",
        f"- Dataset fingerprint (sha256): `{_e(context.dataset_fingerprint or 'not recorded')}`",
        f"- Rows: {context.train_rows + context.holdout_rows} "
        f"({context.train_rows} for training and cross-validation, {context.holdout_rows} held out)",
        "",
        "| class | rows |",
        "| --- | ---: |",
        *(f"| {_cell(label)} | {count} |" for label, count in context.class_counts.items()),
        "",
        "## Features",
        "",
        "| feature | type |",
        "| --- | --- |",
        *(f"| {_cell(feature.name)} | {feature.type.value} |" for feature in context.features),
        "",
        "## Algorithm",
        "",
        f"`{winner.algorithm.value}`, chosen among {len(context.candidates)} candidates by mean "
        f"{metric} over stratified cross-validation ({winner.strategy.value} search, {winner.n_trials} "
        f"settings tried): CV {metric} {_fmt(winner.cv_score)} ± {_fmt(winner.cv_std)}.",
        "",
        "| parameter | value |",
        "| --- | --- |",
        *(
            f"| {_cell(name)} | `{_cell(json.dumps(value))}` |"
            for name, value in sorted(winner.best_params.items())
        ),
        "",
        "## Metrics (holdout)",
        "",
        "| metric | value |",
        "| --- | ---: |",
        *(
            f"| {name} | {_fmt(context.evaluation.metrics[name])} |"
            for name in _HOLDOUT_METRICS
            if name in context.evaluation.metrics
        ),
        "",
    ]
    if context.gate_min_score is not None:
        lines += [f"Quality gate: {metric} on the holdout must reach {context.gate_min_score}.", ""]
    lines += [
        "## Limitations",
        "",
        f"- Measured on {context.holdout_rows} held-out rows; small holdouts give noisy estimates.",
        "- Categories unseen in training are ignored (encoded as all zeros); missing values are imputed "
        "(numeric: median, categorical: most frequent, text: empty).",
        "- Text features use a TF-IDF vocabulary learned from the training data: new words carry no weight.",
        "- Probabilities are calibrated only as far as the algorithm makes them; no fairness or robustness "
        "audit was run. Retrain and re-evaluate when the input data drifts.",
        "",
        "## Library versions",
        "",
        *(f"- {name}: {_e(version)}" for name, version in current_library_versions().items()),
        "",
    ]
    return "\n".join(lines)
