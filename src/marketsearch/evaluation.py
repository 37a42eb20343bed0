"""Evaluate a bundle per photo–listing pair: image-only, text-only and fused models."""
from __future__ import annotations

import numpy as np
import pandas as pd

from marketsearch.bundle import Bundle, pair_arrays
from marketsearch.metrics import classification_metrics

MODALITIES = ("image", "text", "fusion")


def evaluate_pairs(bundle: Bundle, products: pd.DataFrame, images: pd.DataFrame,
                   pixels: np.ndarray) -> dict:
    """Metrics on every (photo, its listing's text) pair in ``images``.

    Pairs whose category the bundle was not trained on cannot be predicted right: they count
    as errors (their true class index lies outside the model's columns) and are reported."""
    texts, px, cats, _ = pair_arrays(products, images, pixels)
    known = {c: i for i, c in enumerate(bundle.labels)}
    unknown = sorted({c for c in cats if c not in known})
    if len(texts) == 0:
        raise ValueError("no photo–listing pairs to evaluate")
    preds = bundle.predict(texts, px)
    labels = bundle.labels + unknown
    y = np.array([known.get(c, len(bundle.labels) + unknown.index(c) if c in unknown else -1)
                  for c in cats])
    pad = len(unknown)
    out: dict = {"n_pairs": len(texts), "unknown_categories": unknown}
    for name, probs in zip(MODALITIES, (preds.image_probs, preds.text_probs, preds.fused_probs)):
        probs = np.pad(probs, ((0, 0), (0, pad))) if pad else probs
        out[name] = classification_metrics(y, probs, labels)
    return out


def headline(result: dict) -> dict:
    """The short form: n_pairs and accuracy / top-3 / macro-F1 per modality."""
    return {"n_pairs": result["n_pairs"], **{
        m: {k: round(float(result[m][k]), 4) for k in ("accuracy", "top3_accuracy", "macro_f1")}
        for m in MODALITIES}}
