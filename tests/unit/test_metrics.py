"""classification_metrics and compare on hand-made cases whose answers are known."""
import json

import numpy as np
import pytest

from marketsearch.metrics import classification_metrics, compare, top_k_accuracy

LABELS = ["Appliances", "Baby & Kids Stuff", "Home & Garden", "Other Goods"]


def one_hot(pred, n_classes=4):
    probs = np.full((len(pred), n_classes), 0.01)
    probs[np.arange(len(pred)), pred] = 0.97
    return probs


def test_perfect_predictions_score_one():
    y = np.array([0, 1, 2, 3, 0, 1])
    m = classification_metrics(y, one_hot(y), LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == 1.0
    assert m["top3_accuracy"] == 1.0
    assert m["macro_f1"] == 1.0
    assert m["confusion_matrix"] == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    for name in LABELS:
        assert m["per_class"][name]["f1"] == 1.0
    assert m["labels"] == LABELS
    json.dumps(m)  # plain Python throughout: loggable to MLflow / KFP as is


def test_known_confusion():
    # 4 true class-0 examples: 3 right, 1 taken for class 1; 2 true class-1: both right.
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1])
    m = classification_metrics(y, one_hot(pred, 2), ["a", "b"])
    assert m["confusion_matrix"] == [[3, 1], [0, 2]]  # rows = true, cols = predicted
    assert m["accuracy"] == pytest.approx(5 / 6)
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.75, 4)
    assert a["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["support"] == 2
    assert b["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 * 0.75 / 1.75 + 0.8) / 2)


def test_top3_differs_from_top1():
    y = np.array([0, 1, 2, 3])
    probs = np.array([
        [0.40, 0.30, 0.20, 0.10],   # top-1 right
        [0.50, 0.05, 0.30, 0.15],   # true class last: wrong at top-1 and top-3
        [0.40, 0.35, 0.25, 0.00],   # true class third: right at top-3 only
        [0.10, 0.50, 0.00, 0.40],   # true class second: right at top-3 only
    ])
    m = classification_metrics(y, probs, LABELS)
    assert m["accuracy"] == 0.25
    assert m["top3_accuracy"] == 0.75
    assert top_k_accuracy(y, probs, 1) == 0.25
    assert top_k_accuracy(y, probs, 10) == 1.0  # k capped at the number of classes


def test_absent_class_still_reported_and_macro_f1():
    # Class 2 ("Home & Garden") never occurs and is never predicted; class 3 never occurs
    # but is predicted once.
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 3])
    m = classification_metrics(y, one_hot(pred), LABELS)
    assert set(m["per_class"]) == set(LABELS)
    absent = m["per_class"]["Home & Garden"]
    assert absent == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["Other Goods"]["support"] == 0
    assert len(m["confusion_matrix"]) == 4 and all(len(r) == 4 for r in m["confusion_matrix"])
    # F1: class 0 = 1.0, class 1 = 2/3 (P=1, R=0.5), class 3 = 0 (predicted, never true);
    # class 2 is neither true nor predicted and is left out of the mean.
    assert m["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], one_hot([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="rows"):
        classification_metrics([0, 1, 2], one_hot([0, 1]), LABELS)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 7], one_hot([0, 1]), LABELS)


# --------------------------------------------------------------------------- compare
def test_no_champion_promotes():
    out = compare({"accuracy": 0.61}, None, "accuracy", 0.0)
    assert out["promote"] is True
    assert out["champion_score"] is None and out["challenger_score"] == 0.61
    assert "no champion" in out["reason"] and "0.6100" in out["reason"]


def test_better_challenger_promotes_and_reason_names_both_scores():
    out = compare({"macro_f1": 0.70}, {"macro_f1": 0.65}, "macro_f1", 0.01)
    assert out["promote"] is True
    assert "0.7000" in out["reason"] and "0.6500" in out["reason"]
    assert (out["challenger_score"], out["champion_score"]) == (0.70, 0.65)


def test_worse_or_marginal_challenger_does_not_promote():
    assert compare({"accuracy": 0.60}, {"accuracy": 0.65}, "accuracy", 0.0)["promote"] is False
    # Better, but not by more than min_improvement.
    out = compare({"accuracy": 0.655}, {"accuracy": 0.65}, "accuracy", 0.01)
    assert out["promote"] is False
    assert "0.6550" in out["reason"] and "0.6500" in out["reason"]


def test_tie_does_not_promote():
    assert compare({"accuracy": 0.65}, {"accuracy": 0.65}, "accuracy", 0.0)["promote"] is False
    # Exactly at champion + min_improvement is still not "more than".
    assert compare({"accuracy": 0.75}, {"accuracy": 0.5}, "accuracy", 0.25)["promote"] is False


def test_champion_without_metric_counts_as_none_and_challenger_must_have_it():
    assert compare({"accuracy": 0.5}, {"macro_f1": 0.9}, "accuracy", 0.0)["promote"] is True
    with pytest.raises(KeyError, match="top3_accuracy"):
        compare({"accuracy": 0.5}, None, "top3_accuracy", 0.0)
