from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

from modelyard.errors import DataValidationError, InvalidInput
from modelyard.training.evaluation import evaluate, evaluate_predictions, split_holdout
from modelyard.training.results import Evaluation


def _binary() -> tuple[list[str], list[str], np.ndarray]:
    # the textbook case: scores 0.1, 0.4 for negatives and 0.35, 0.8 for positives -> AUC 3/4
    truth = ["neg", "neg", "pos", "pos"]
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    probabilities = np.column_stack([1 - positive, positive])
    predicted = ["neg", "neg", "neg", "pos"]  # argmax
    return truth, predicted, probabilities


def test_binary_metrics_by_hand() -> None:
    truth, predicted, probabilities = _binary()
    evaluation = evaluate_predictions(truth, predicted, probabilities, ["neg", "pos"])
    m = evaluation.metrics

    assert m["accuracy"] == pytest.approx(0.75)
    assert m["roc_auc"] == pytest.approx(0.75)
    # neg: precision 2/3, recall 1, f1 0.8; pos: precision 1, recall 1/2, f1 2/3
    assert m["precision_macro"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["recall_macro"] == pytest.approx((1 + 0.5) / 2)
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["f1_weighted"] == pytest.approx((0.8 + 2 / 3) / 2)  # equal supports
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    expected_loss = -np.mean(np.log([0.9, 0.6, 0.35, 0.8]))
    assert m["log_loss"] == pytest.approx(expected_loss)
    assert m["neg_log_loss"] == pytest.approx(-expected_loss)

    assert evaluation.confusion_matrix == [[2, 0], [1, 1]]  # rows: actual neg, pos
    assert evaluation.classes == ["neg", "pos"]
    [curve] = evaluation.roc_curves  # binary: one curve, for the positive class
    assert curve.positive_class == "pos"
    assert curve.fpr == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert curve.tpr == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert curve.auc == pytest.approx(0.75)
    assert [(r.label, r.support) for r in evaluation.per_class] == [("neg", 2), ("pos", 2)]
    assert evaluation.per_class[0].precision == pytest.approx(2 / 3)


def test_multiclass_metrics_by_hand() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.5, 0.3, 0.2],
            [0.2, 0.6, 0.2],
            [0.6, 0.3, 0.1],  # a b predicted as a
            [0.1, 0.2, 0.7],
            [0.2, 0.5, 0.3],  # a c predicted as b
        ]
    )
    predicted = ["a", "a", "b", "a", "c", "b"]
    evaluation = evaluate_predictions(truth, predicted, probabilities, ["a", "b", "c"])

    assert evaluation.confusion_matrix == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert evaluation.metrics["accuracy"] == pytest.approx(4 / 6)
    # one-vs-rest AUCs, counting pairs (positive above negative, ties half): a 7/8, b 6.5/8, c 8/8
    by_class = {curve.positive_class: curve.auc for curve in evaluation.roc_curves}
    assert by_class == pytest.approx({"a": 7 / 8, "b": 6.5 / 8, "c": 1.0})
    assert evaluation.metrics["roc_auc"] == pytest.approx((7 / 8 + 6.5 / 8 + 1) / 3)
    assert evaluation.metrics["roc_auc"] == pytest.approx(
        roc_auc_score(truth, probabilities, multi_class="ovr")
    )
    # recall a 1, b 1/2, c 1/2; precision a 2/3, b 1/2, c 1
    assert evaluation.metrics["recall_macro"] == pytest.approx(2 / 3)
    assert evaluation.metrics["precision_macro"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_a_class_missing_from_the_holdout_keeps_roc_auc_over_the_others() -> None:
    probabilities = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    evaluation = evaluate_predictions(["a", "b", "b"], ["a", "b", "a"], probabilities, ["a", "b", "c"])
    assert [curve.positive_class for curve in evaluation.roc_curves] == ["a", "b"]
    assert evaluation.confusion_matrix[2] == [0, 0, 0]
    assert math.isfinite(evaluation.metrics["roc_auc"])


def test_a_single_class_holdout_has_no_roc_auc_and_says_so() -> None:
    evaluation = evaluate_predictions(
        ["pos", "pos"], ["pos", "neg"], np.array([[0.2, 0.8], [0.6, 0.4]]), ["neg", "pos"]
    )
    assert "roc_auc" not in evaluation.metrics and evaluation.roc_curves == []
    assert evaluation.score("accuracy") == pytest.approx(0.5)
    with pytest.raises(InvalidInput, match="metric roc_auc could not be computed on this holdout of 2 rows"):
        evaluation.score("roc_auc")
    with pytest.raises(InvalidInput, match="unknown metric 'auc'"):
        evaluation.score("auc")


def test_to_dict_is_json_even_with_numpy_integer_labels() -> None:
    x = pd.DataFrame({"v": [0.0, 0.1, 1.0, 1.1, 2.0, 2.1]})
    y = np.array([0, 0, 1, 1, 2, 2])
    model = LogisticRegression().fit(x, y)
    evaluation = evaluate(model, x, y)

    restored = json.loads(json.dumps(evaluation.to_dict(), allow_nan=False))
    assert Evaluation.from_dict(restored) == evaluation
    assert restored["classes"] == [0, 1, 2]
    assert restored["rows"] == 6
    assert set(restored["metrics"]) >= {"accuracy", "f1_macro", "roc_auc", "neg_log_loss", "log_loss"}
    assert [curve["positive_class"] for curve in restored["roc_curves"]] == [0, 1, 2]
    assert restored["per_class"][0] == {"label": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}


def test_evaluate_uses_the_models_predictions_and_probabilities() -> None:
    x = pd.DataFrame({"v": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]})
    y = pd.Series(["lo", "lo", "lo", "hi", "hi", "hi"])
    model = LogisticRegression().fit(x, y)
    expected = evaluate_predictions(y, model.predict(x), model.predict_proba(x), list(model.classes_))
    assert evaluate(model, x, y) == expected
    assert expected.classes == ["hi", "lo"]


def test_a_model_without_probabilities_is_refused() -> None:
    x, y = pd.DataFrame({"v": [0.0, 1.0, 2.0, 3.0]}), ["a", "a", "b", "b"]
    with pytest.raises(InvalidInput, match="LinearSVC has no predict_proba"):
        evaluate(LinearSVC().fit(x, y), x, y)


def test_bad_prediction_inputs_are_named() -> None:
    truth, predicted, probabilities = _binary()
    with pytest.raises(InvalidInput, match=r"probabilities have shape \(4, 2\), expected \(4, 3\)"):
        evaluate_predictions(truth, predicted, probabilities, ["neg", "pos", "other"])
    with pytest.raises(InvalidInput, match="the holdout has classes the model was not trained on: 'pos'"):
        evaluate_predictions(truth, predicted, probabilities, ["neg", "maybe"])
    with pytest.raises(InvalidInput, match="cannot evaluate on an empty holdout"):
        evaluate_predictions([], [], np.empty((0, 2)), ["neg", "pos"])


def test_split_holdout_is_stratified_and_seeded(iris_frame: pd.DataFrame) -> None:
    train, held = split_holdout(iris_frame, "species", 0.2, seed=1)

    assert (len(train), len(held)) == (120, 30)
    assert held["species"].value_counts().to_dict() == {"setosa": 10, "versicolor": 10, "virginica": 10}
    assert set(train.index).isdisjoint(held.index)
    again, _ = split_holdout(iris_frame, "species", 0.2, seed=1)
    other, _ = split_holdout(iris_frame, "species", 0.2, seed=2)
    assert list(again.index) == list(train.index)
    assert list(other.index) != list(train.index)


def test_split_holdout_reports_every_problem() -> None:
    frame = pd.DataFrame({"x": range(6), "y": ["a", "a", "a", "b", None, "c"]})
    with pytest.raises(DataValidationError) as caught:
        split_holdout(frame, "y", 0.2, seed=0)
    assert caught.value.problems == [
        "the target 'y' has 1 null value(s)",
        "class(es) with a single row cannot be split into train and holdout: 'b', 'c'",
        "a holdout of 0.2 leaves 2 of 6 rows for evaluation: "
        "too few to hold each of the 3 classes in both parts",
    ]


def test_split_holdout_names_a_missing_target_and_a_single_class() -> None:
    frame = pd.DataFrame({"x": range(4), "y": ["a"] * 4})
    with pytest.raises(DataValidationError, match="the target column 'label' is not in the data"):
        split_holdout(frame, "label", 0.2, seed=0)
    with pytest.raises(
        DataValidationError, match=r"the target 'y' needs at least two classes \(found: 'a'\)"
    ):
        split_holdout(frame, "y", 0.2, seed=0)
    with pytest.raises(InvalidInput, match=r"holdout must be a fraction between 0 and 1, got 1\.5"):
        split_holdout(frame, "y", 1.5, seed=0)
