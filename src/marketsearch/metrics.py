"""Classification metrics and the champion/challenger decision (the evaluate stage's logic).

Everything returned is plain JSON-serialisable Python (floats, ints, lists, dicts), so the
result can be logged to MLflow, written as a KFP artifact or compared across runs as is.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score

METRIC_NAMES = ("accuracy", "top3_accuracy", "macro_f1")


def _check_inputs(y_true, probs, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-d [N, C] array, got shape {p.shape}")
    if y.ndim != 1:
        raise ValueError(f"y_true must be a 1-d array of class indices, got shape {y.shape}")
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} rows but probs has {len(p)}")
    n_classes = p.shape[1]
    if len(labels) != n_classes:
        raise ValueError(f"labels has {len(labels)} names but probs has {n_classes} columns")
    if len(y) == 0:
        raise ValueError("y_true is empty: no examples to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true holds class indices outside 0..{n_classes - 1}")
    return y.astype(np.int64), p


def top_k_accuracy(y_true, probs, k: int) -> float:
    """Fraction of rows whose true class is among the k highest probabilities."""
    y = np.asarray(y_true)
    p = np.asarray(probs)
    k = min(k, p.shape[1])
    # argpartition gives the k largest in any order; membership is all that matters.
    top = np.argpartition(-p, kth=k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def classification_metrics(y_true, probs, labels: Sequence[str]) -> dict:
    """Metrics of a classifier on labelled examples.

    Args:
        y_true: [N] integer class indices (0..C-1).
        probs: [N, C] class scores (probabilities or logits: only their order is used).
        labels: the C class names, in column order.

    Returns a dict with
        ``n``, ``accuracy`` (top-1), ``top3_accuracy``, ``macro_f1`` (mean per-class F1 over
        the classes present in the truth or the predictions; a class absent from both is
        left out, one that is predicted but absent from the truth counts with F1 0),
        ``per_class``: {label: {precision, recall, f1, support}} for every label,
        ``confusion_matrix``: C x C list of lists of counts, rows = true, cols = predicted,
        ``labels``: the label names in matrix order.
    """
    labels = [str(label) for label in labels]
    y, p = _check_inputs(y_true, probs, labels)
    n_classes = p.shape[1]
    class_ids = list(range(n_classes))
    pred = np.argmax(p, axis=1)

    report = classification_report(
        y, pred, labels=class_ids, target_names=labels, output_dict=True, zero_division=0)
    per_class = {
        name: {
            "precision": float(report[name]["precision"]),
            "recall": float(report[name]["recall"]),
            "f1": float(report[name]["f1-score"]),
            "support": int(report[name]["support"]),
        }
        for name in labels
    }
    matrix = confusion_matrix(y, pred, labels=class_ids)
    # Macro-F1 averages over the classes that occur in the truth or in the predictions: a
    # class that is absent from the test set and never predicted has no errors to count, so
    # it neither helps nor hurts (sklearn's own default). Predicting an absent class still
    # counts, as an F1 of 0 for that class.
    seen = sorted(set(y.tolist()) | set(pred.tolist()))
    return {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)),
        "top3_accuracy": top_k_accuracy(y, p, 3),
        "macro_f1": float(f1_score(y, pred, labels=seen, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": matrix.astype(int).tolist(),
        "labels": labels,
    }


def compare(challenger: dict, champion: dict | None, metric: str,
            min_improvement: float = 0.0) -> dict:
    """Champion/challenger decision on one metric.

    Promote when there is no champion (``champion`` is None or lacks the metric), or when
    ``challenger[metric] > champion[metric] + min_improvement``. A tie never promotes.

    Returns {"promote": bool, "reason": str, "challenger_score": float,
    "champion_score": float | None, "metric": str, "min_improvement": float}.
    """
    if metric not in challenger:
        raise KeyError(f"challenger metrics have no {metric!r} (have: {sorted(challenger)})")
    challenger_score = float(challenger[metric])
    champion_score = None
    if champion is not None and champion.get(metric) is not None:
        champion_score = float(champion[metric])

    if champion_score is None:
        promote = True
        reason = (f"no champion to compare with: promoting challenger "
                  f"({metric}={challenger_score:.4f})")
    else:
        threshold = champion_score + min_improvement
        promote = challenger_score > threshold
        verdict = "beats" if promote else "does not beat"
        reason = (f"challenger {metric}={challenger_score:.4f} {verdict} champion "
                  f"{metric}={champion_score:.4f} + min_improvement {min_improvement:g} "
                  f"(threshold {threshold:.4f})")
    return {
        "promote": bool(promote),
        "reason": reason,
        "challenger_score": challenger_score,
        "champion_score": champion_score,
        "metric": metric,
        "min_improvement": float(min_improvement),
    }
