"""Evaluate a bundle per photo–listing pair: image-only, text-only and fused models; and its
search as buyers use it (``search_relevance``)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from marketsearch.bundle import Bundle, pair_arrays
from marketsearch.metrics import classification_metrics

log = logging.getLogger(__name__)

MODALITIES = ("image", "text", "fusion")
# How a listing is searched for: by its first photo alone, its text alone, or both together.
SEARCH_MODES = ("image", "text", "both")
# Listings embedded and searched at a time, so memory stays bounded whatever the test split holds.
SEARCH_CHUNK = 512


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


def search_relevance(bundle, products: pd.DataFrame, images: pd.DataFrame, pixels: np.ndarray,
                     k: int = 10, chunk_size: int = SEARCH_CHUNK) -> dict:
    """Search relevance measured as the search is used: every listing in ``products`` is searched
    for in ``bundle.index`` three ways, as the server answers a query (``SearchEngine.answer``:
    the fused embedding of ``Bundle.predict`` with per-item presence flags, no location):

    - ``image``: by its first photo in ``images`` alone (text "" and absent);
    - ``text``: by its ``text`` column (listing_text of title and description) alone (photo
      all zeros and absent);
    - ``both``: by its text and that photo.

    Listings without a photo in ``images`` are queries for ``text`` only. The listing itself is
    never counted (the evaluated listings are usually in the catalogue index): k + 1 neighbours
    are fetched, the listing's own id dropped, the first k kept. Per mode::

        precision_at_<k>  mean over queries of the share of its neighbours (k, or as many as
                          the index returned) whose root ``category`` (the index metadata's)
                          is the query listing's ``category``
        top1              mean over queries of: the first neighbour's category is right
        n_queries         how many listings were searched for that way

    A mode without queries has None for both figures. ``bundle`` needs only ``predict`` and
    ``index`` (a ``marketsearch.index.SearchIndex`` whose metadata has ``category``).

    Returns {"k", "n_listings", "image": {...}, "text": {...}, "both": {...}}.
    """
    from tqdm import tqdm

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index = bundle.index
    if "category" not in index.metadata.columns:
        raise ValueError("the bundle's index metadata has no 'category' column: cannot judge "
                         "whether a neighbour is relevant")
    category_of = dict(zip((str(i) for i in index.ids), index.metadata["category"].tolist()))
    ids = products["id"].astype(str).tolist()
    texts = products["text"].fillna("").astype(str).tolist()
    categories = products["category"].tolist()
    first = images.drop_duplicates("product_id")
    photo_row = dict(zip(first["product_id"].astype(str), first["row"].astype(int)))
    blank = np.zeros((0, *pixels.shape[1:]), np.uint8)

    hits = {m: 0.0 for m in SEARCH_MODES}
    firsts = {m: 0.0 for m in SEARCH_MODES}
    counts = {m: 0 for m in SEARCH_MODES}
    bar = tqdm(total=len(ids), desc="evaluate: search relevance", unit="listing", mininterval=2)
    for start in range(0, len(ids), chunk_size):
        chunk = range(start, min(start + chunk_size, len(ids)))
        with_photo = [i for i in chunk if ids[i] in photo_row]
        photos = (pixels[[photo_row[ids[i]] for i in with_photo]] if with_photo else blank)
        # One predict call per chunk (Bundle.predict batches it): photo-only, text-only, both.
        queries = {"image": with_photo, "text": list(chunk), "both": with_photo}
        batch_texts = [""] * len(with_photo) + [texts[i] for i in chunk] + \
                      [texts[i] for i in with_photo]
        batch_pixels = np.concatenate([photos, np.zeros((len(chunk), *pixels.shape[1:]), np.uint8),
                                       photos]).astype(np.uint8, copy=False)
        has_text = np.array([0] * len(with_photo) + [1] * (len(chunk) + len(with_photo)),
                            np.float32)
        has_image = np.array([1] * len(with_photo) + [0] * len(chunk) + [1] * len(with_photo),
                             np.float32)
        embedding = bundle.predict(batch_texts, batch_pixels, has_text, has_image,
                                   per_modality=False).fused_embedding
        neighbours = index.search(embedding, k + 1)
        offset = 0
        for mode in SEARCH_MODES:
            for j, i in enumerate(queries[mode]):
                precision, top1 = _relevance(neighbours[offset + j], ids[i], categories[i],
                                             category_of, k)
                hits[mode] += precision
                firsts[mode] += top1
                counts[mode] += 1
            offset += len(queries[mode])
        bar.update(len(chunk))
    bar.close()
    out: dict = {"k": int(k), "n_listings": len(ids)}
    for mode in SEARCH_MODES:
        n = counts[mode]
        out[mode] = {"n_queries": n,
                     f"precision_at_{k}": hits[mode] / n if n else None,
                     "top1": firsts[mode] / n if n else None}
    log.info("search relevance of %d listings (%d with a photo), k=%d: %s", len(ids),
             counts["image"], k, "; ".join(search_lines(out)))
    return out


def _relevance(hits: list[tuple[object, float]], query_id: str, category, category_of: dict,
               k: int) -> tuple[float, float]:
    """(precision, top-1) of one query's (product_id, similarity) hits, its own id left out."""
    kept = [str(pid) for pid, _ in hits if str(pid) != query_id][:k]
    if not kept:
        return 0.0, 0.0
    right = [category_of.get(pid) == category for pid in kept]
    return sum(right) / len(kept), float(right[0])


def search_metrics(search: dict) -> dict[str, dict[str, float]]:
    """{mode: {"precision_at_<k>": …, "top1": …}} of a ``search_relevance`` result: the figures
    MLflow and KFP take (a mode without queries has none)."""
    keys = (f"precision_at_{search['k']}", "top1")
    return {mode: {key: float(search[mode][key]) for key in keys
                   if search[mode][key] is not None} for mode in SEARCH_MODES}


def search_lines(search: dict) -> list[str]:
    """One line per search mode, for ``marketsearch evaluate``'s plain-text output."""
    k = search["k"]
    lines = []
    for mode in SEARCH_MODES:
        m = search[mode]
        if not m["n_queries"]:
            lines.append(f"search by {mode:5s}  no queries")
            continue
        lines.append(f"search by {mode:5s}  precision@{k} {m[f'precision_at_{k}']:.3f}  "
                     f"top-1 {m['top1']:.3f}  ({m['n_queries']} queries)")
    return lines
