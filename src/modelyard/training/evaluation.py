"""Hold out a stratified sample, and measure a fitted model on it.

Everything an :class:`Evaluation` holds is plain Python (``to_dict()`` is JSON-ready) so it can go into
bundle metadata and KFP artifacts as it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    auc,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import train_test_split

from modelyard.errors import DataValidationError, InvalidInput
from modelyard.spec import Metric
from modelyard.training.results import ClassReport, Evaluation, Label, RocCurve


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def split_holdout(
    frame: pd.DataFrame, target: str, holdout: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified (train, holdout) split of ``frame``; every class keeps its share in both parts."""
    if target not in frame.columns:
        raise DataValidationError(
            [f"the target column {target!r} is not in the data"], source="training data"
        )
    if not 0.0 < holdout < 1.0:
        raise InvalidInput(f"holdout must be a fraction between 0 and 1, got {holdout}")
    labels = frame[target]
    problems: list[str] = []
    nulls = int(labels.isna().sum())
    if nulls:
        problems.append(f"the target {target!r} has {nulls} null value(s)")
    counts = labels.value_counts(dropna=True)
    if len(counts) < 2:
        found = ", ".join(repr(_plain(label)) for label in counts.index) or "none"
        problems.append(f"the target {target!r} needs at least two classes (found: {found})")
    else:
        single = [repr(_plain(label)) for label, n in counts.items() if n < 2]
        if single:
            problems.append(
                f"class(es) with a single row cannot be split into train and holdout: {', '.join(single)}"
            )
        holdout_rows = math.ceil(holdout * len(frame))
        if holdout_rows < len(counts) or len(frame) - holdout_rows < len(counts):
            problems.append(
                f"a holdout of {holdout} leaves {holdout_rows} of {len(frame)} rows for evaluation: "
                f"too few to hold each of the {len(counts)} classes in both parts"
            )
    if problems:
        raise DataValidationError(problems, source="training data")
    train, held = train_test_split(frame, test_size=holdout, random_state=seed, stratify=labels)
    return train, held


def _ovr_curves(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[Label]) -> list[RocCurve]:
    """ROC curves of each class (binary: the positive class only) that has positives and negatives."""
    columns = [1] if len(classes) == 2 else list(range(len(classes)))
    curves = []
    for column in columns:
        is_positive = y_true == classes[column]
        if is_positive.all() or not is_positive.any():
            continue  # a curve needs both kinds of rows
        fpr, tpr, thresholds = roc_curve(is_positive, probabilities[:, column])
        curves.append(
            RocCurve(
                positive_class=_plain(classes[column]),
                fpr=[float(v) for v in fpr],
                tpr=[float(v) for v in tpr],
                auc=float(auc(fpr, tpr)),
                thresholds=[min(float(v), 1.0) for v in thresholds],
            )
        )
    return curves


def evaluate_predictions(
    y_true: Sequence[Label] | pd.Series | np.ndarray,
    y_pred: Sequence[Label] | np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[Label],
) -> Evaluation:
    """Measure predictions; ``probabilities[:, i]`` is the probability of ``classes[i]``."""
    truth = np.asarray(y_true)
    predicted = np.asarray(y_pred)
    probabilities = np.asarray(probabilities, dtype=float)
    labels = [_plain(label) for label in classes]
    if len(truth) == 0:
        raise InvalidInput("cannot evaluate on an empty holdout")
    if probabilities.shape != (len(truth), len(labels)):
        raise InvalidInput(
            f"probabilities have shape {probabilities.shape}, expected ({len(truth)}, {len(labels)})"
        )
    unknown = sorted({repr(_plain(v)) for v in truth} - {repr(label) for label in labels})
    if unknown:
        raise InvalidInput(f"the holdout has classes the model was not trained on: {', '.join(unknown)}")

    with warnings.catch_warnings():
        # a small holdout may lack a class the model predicts: balanced accuracy is still defined
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = balanced_accuracy_score(truth, predicted)
    metrics: dict[str, float] = {
        Metric.ACCURACY.value: accuracy_score(truth, predicted),
        Metric.BALANCED_ACCURACY.value: balanced_accuracy,
    }
    for average in ("macro", "weighted"):
        kwargs: dict[str, Any] = {"labels": labels, "average": average, "zero_division": 0}
        metrics[f"precision_{average}"] = precision_score(truth, predicted, **kwargs)
        metrics[f"recall_{average}"] = recall_score(truth, predicted, **kwargs)
        metrics[f"f1_{average}"] = f1_score(truth, predicted, **kwargs)
    loss = log_loss(truth, probabilities, labels=labels)
    metrics["log_loss"] = loss
    metrics[Metric.NEG_LOG_LOSS.value] = -loss

    curves = _ovr_curves(truth, probabilities, labels)
    if len(labels) == 2 and curves:
        metrics[Metric.ROC_AUC.value] = roc_auc_score(truth == labels[1], probabilities[:, 1])
    elif len(labels) > 2 and curves:
        # one-vs-rest macro AUC over the classes present (all of them on a stratified holdout,
        # where this equals scikit-learn's roc_auc_ovr)
        metrics[Metric.ROC_AUC.value] = float(np.mean([curve.auc for curve in curves]))

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    per_class = [
        ClassReport(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]
    matrix = confusion_matrix(truth, predicted, labels=labels)
    return Evaluation(
        classes=labels,
        rows=len(truth),
        metrics={name: float(value) for name, value in metrics.items()},
        confusion_matrix=[[int(v) for v in row] for row in matrix],
        roc_curves=curves,
        per_class=per_class,
    )


def evaluate(
    model: Any,
    X_holdout: pd.DataFrame,  # noqa: N803 (scikit-learn's name for the feature matrix)
    y_holdout: pd.Series | Sequence[Label],
) -> Evaluation:
    """Measure a fitted classifier (anything with ``classes_``, ``predict``, ``predict_proba``)."""
    if not hasattr(model, "predict_proba"):
        raise InvalidInput(
            f"{type(model).__name__} has no predict_proba: probabilities are needed to evaluate"
        )
    return evaluate_predictions(
        y_holdout, model.predict(X_holdout), model.predict_proba(X_holdout), list(model.classes_)
    )
