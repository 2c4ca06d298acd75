from __future__ import annotations

import base64
import dataclasses
import re

import numpy as np
import pytest
import sklearn

from modelyard.spec import Algorithm, FeatureSpec, Metric, SearchStrategy
from modelyard.training.evaluation import evaluate_predictions
from modelyard.training.report import ReportContext, render_model_card, render_report_html
from modelyard.training.results import CandidateSummary

HOSTILE = "<script>alert(1)</script>"
MATH = "$x^$ | 50%"  # a matplotlib mathtext trap and a Markdown table breaker


def _context(classes: list[str], *, description: str = "Sorts things.") -> ReportContext:
    classes = sorted(classes)  # as a fitted model orders them
    truth = [classes[i % len(classes)] for i in range(12)]
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(len(classes)), size=12)
    for row, label in enumerate(truth):
        probabilities[row, classes.index(label)] += 1.0  # mostly right
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    evaluation = evaluate_predictions(truth, predicted, probabilities, classes)
    winner = CandidateSummary(
        Algorithm.SVM,
        SearchStrategy.RANDOM,
        Metric.F1_MACRO,
        0.91,
        0.02,
        20,
        {"C": 1.5, "kernel": HOSTILE},
        2.5,
    )
    loser = CandidateSummary(
        Algorithm.KNN, SearchStrategy.RANDOM, Metric.F1_MACRO, 0.88, 0.03, 20, {"p": 2}, 0.4
    )
    return ReportContext(
        name="things",
        description=description,
        target="kind",
        metric=Metric.F1_MACRO,
        features=[FeatureSpec(name=HOSTILE, type="numeric"), FeatureSpec(name="notes", type="text")],
        classes=classes,
        candidates=[loser, winner],
        winner=winner,
        evaluation=evaluation,
        train_rows=48,
        holdout_rows=12,
        class_counts={label: 20 for label in classes},
        dataset_fingerprint="ab" * 32,
        gate_min_score=0.9,
    )


def _pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_report_embeds_confusion_matrix_and_roc_as_png() -> None:
    page = render_report_html(_context(["cat", "dog", "owl"]))

    pngs = _pngs(page)
    assert len(pngs) == 2
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    assert 'alt="confusion matrix"' in page and 'alt="ROC curves"' in page


def test_report_is_standalone() -> None:
    page = render_report_html(_context(["cat", "dog"]))
    assert page.startswith("<!DOCTYPE html>")
    assert "<link" not in page and "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from anywhere


def test_report_lists_candidates_winner_first_with_scores_and_metrics() -> None:
    page = render_report_html(_context(["cat", "dog", "owl"]))

    rows = re.findall(
        r"<tr( class=\"winner\")?><td>(\w+)</td><td class=\"num\">([^<]+&plusmn;[^<]+)</td>", page
    )
    assert [(bool(css), algorithm) for css, algorithm, _ in rows] == [(True, "svm"), (False, "knn")]
    assert rows[0][2] == "0.9100 &plusmn; 0.0200"
    assert "<td>f1_macro</td>" in page and "<td>roc_auc</td>" in page and "<td>log_loss</td>" in page
    assert "min_score 0.9" in page
    assert "ab" * 32 in page
    assert f"scikit-learn {sklearn.__version__}" in page


def test_report_escapes_user_strings_and_survives_mathtext_labels() -> None:
    page = render_report_html(_context([HOSTILE, MATH], description=f"<b>{HOSTILE}</b>"))

    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;" in page
    assert "$x^$ | 50%" in page
    assert len(_pngs(page)) == 2  # the labels were drawn as text, not parsed as TeX


def test_report_without_roc_curves_still_renders() -> None:
    context = _context(["cat", "dog"])
    flat = evaluate_predictions(
        ["cat", "cat"], ["cat", "dog"], np.array([[0.9, 0.1], [0.4, 0.6]]), ["cat", "dog"]
    )
    page = render_report_html(dataclasses.replace(context, evaluation=flat, holdout_rows=2))
    assert len(_pngs(page)) == 1
    assert "<td>roc_auc</td>" not in page


def test_model_card_sections_and_content() -> None:
    card = render_model_card(_context(["cat", "dog", "owl"]))

    headings = re.findall(r"^## (.+)$", card, flags=re.MULTILINE)
    assert headings == [
        "Intended use",
        "Data",
        "Features",
        "Algorithm",
        "Metrics (holdout)",
        "Limitations",
        "Library versions",
    ]
    assert card.startswith("# Model card: things\n")
    assert "Sorts things." in card
    assert f"Dataset fingerprint (sha256): `{'ab' * 32}`" in card
    assert "Rows: 60 (48 for training and cross-validation, 12 held out)" in card
    assert "| cat | 20 |" in card
    assert "| notes | text |" in card
    assert "`svm`, chosen among 2 candidates" in card
    assert "CV f1_macro 0.9100 ± 0.0200" in card
    assert "| C | `1.5` |" in card
    assert re.search(r"^\| f1_macro \| \d\.\d{4} \|$", card, flags=re.MULTILINE)
    assert "must reach 0.9" in card
    assert f"- scikit-learn: {sklearn.__version__}" in card


def test_model_card_escapes_html_and_table_breakers() -> None:
    card = render_model_card(_context([HOSTILE, MATH], description=HOSTILE))

    assert "<script>" not in card
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card
    assert "| $x^$ \\| 50% | 20 |" in card  # the pipe no longer splits the cell
    # every table row still has the right number of (unescaped) cell separators
    for line in card.splitlines():
        if line.startswith("| "):
            assert len(re.findall(r"(?<!\\)\|", line)) == 3, line


def test_no_description_says_so() -> None:
    assert "_No description was given in the spec._" in render_model_card(
        _context(["a", "b"], description="")
    )


@pytest.mark.parametrize("classes", [["no", "yes"], [str(d) for d in range(10)]])
def test_plots_scale_with_the_number_of_classes(classes: list[str]) -> None:
    assert len(_pngs(render_report_html(_context(classes)))) == 2


def test_report_rounds_parameters_and_card_keeps_them_exact() -> None:
    context = _context(["cat", "dog"])
    winner = CandidateSummary(
        Algorithm.SVM,
        SearchStrategy.RANDOM,
        Metric.F1_MACRO,
        0.9,
        0.0,
        3,
        {"C": 0.98467388736, "kernel": "rbf"},
        1.0,
    )
    context = dataclasses.replace(context, winner=winner, candidates=[winner])

    assert "<code>C=0.9847, kernel=&quot;rbf&quot;</code>" in render_report_html(context)
    assert "| C | `0.98467388736` |" in render_model_card(context)
