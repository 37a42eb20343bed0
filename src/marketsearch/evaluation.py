"""Evaluate a bundle per photo–listing pair: image-only, text-only and fused models; and its
search as buyers use it (``search_relevance``).

Both take the data as one frame (``evaluate_pairs``, ``search_relevance``) or as parts
(``evaluate_parts``, ``search_parts``): an iterable of (products, images, pixels) triples, one
shard each (``images.row`` indexing that part's ``pixels``), read one at a time so that only one
part's photos are in memory. Over parts they give the same figures as over the parts joined."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable

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

# A part of the evaluated data: (products, images, pixels), ``images.row`` indexing ``pixels``.
Part = tuple[pd.DataFrame, pd.DataFrame, np.ndarray]


def evaluate_pairs(bundle: Bundle, products: pd.DataFrame, images: pd.DataFrame,
                   pixels: np.ndarray) -> dict:
    """``evaluate_parts`` of one part: metrics on every (photo, its listing's text) pair in
    ``images``."""
    return evaluate_parts(bundle, [(products, images, pixels)])


def evaluate_parts(bundle: Bundle, parts: Iterable[Part]) -> dict:
    """Metrics on every (photo, its listing's text) pair in the parts' ``images``.

    The parts are predicted one at a time; what is held across them is each pair's category
    and its class probabilities per modality (3 x pairs x classes floats), from which the
    metrics are computed once at the end. Pairs whose category the bundle was not trained on
    cannot be predicted right: they count as errors (their true class index lies outside the
    model's columns) and are reported."""
    cats: list = []
    probs: dict[str, list[np.ndarray]] = {name: [] for name in MODALITIES}
    for products, images, pixels in parts:
        if not len(images):
            continue
        texts, px, part_cats, _ = pair_arrays(products, images, pixels)
        preds = bundle.predict(texts, px)
        cats.extend(part_cats)
        for name, p in zip(MODALITIES, (preds.image_probs, preds.text_probs, preds.fused_probs)):
            probs[name].append(p)
    if not cats:
        raise ValueError("no photo–listing pairs to evaluate")
    known = {c: i for i, c in enumerate(bundle.labels)}
    unknown = sorted({c for c in cats if c not in known})
    labels = bundle.labels + unknown
    index = {**known, **{c: len(bundle.labels) + i for i, c in enumerate(unknown)}}
    y = np.array([index[c] for c in cats])
    pad = len(unknown)
    out: dict = {"n_pairs": len(cats), "unknown_categories": unknown}
    for name in MODALITIES:
        p = np.concatenate(probs.pop(name))
        out[name] = classification_metrics(y, np.pad(p, ((0, 0), (0, pad))) if pad else p, labels)
    return out


def headline(result: dict) -> dict:
    """The short form: n_pairs and accuracy / top-3 / macro-F1 per modality."""
    return {"n_pairs": result["n_pairs"], **{
        m: {k: round(float(result[m][k]), 4) for k in ("accuracy", "top3_accuracy", "macro_f1")}
        for m in MODALITIES}}


def search_relevance(bundle, products: pd.DataFrame, images: pd.DataFrame, pixels: np.ndarray,
                     k: int = 10, chunk_size: int = SEARCH_CHUNK) -> dict:
    """``search_parts`` of one part: every listing in ``products`` searched for."""
    return search_parts(bundle, [(products, images, pixels)], k, chunk_size)


def search_parts(bundle, parts: Iterable[Part], k: int = 10,
                 chunk_size: int = SEARCH_CHUNK) -> dict:
    """Search relevance measured as the search is used: every listing in the parts' ``products``
    is searched for in ``bundle.index`` three ways, as the server answers a query
    (``SearchEngine.answer``: the fused embedding of ``Bundle.predict`` with per-item presence
    flags, no location):

    - ``image``: by its first photo in its part's ``images`` alone (text "" and absent);
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

    The parts are read one at a time and searched ``chunk_size`` listings at a time; what is
    held across them is each query's two figures. Their means are exact sums (``math.fsum``),
    so they do not depend on how the listings were cut into parts or chunks.

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
    figures: dict[str, list[np.ndarray]] = {m: [] for m in SEARCH_MODES}  # [queries, 2] each
    n_listings = 0
    bar = tqdm(desc="evaluate: search relevance", unit="listing", mininterval=2)
    for products, images, pixels in parts:
        for n_chunk, chunk_figures in _search_part(bundle, category_of, products, images, pixels,
                                                   k, chunk_size):
            for mode in SEARCH_MODES:
                figures[mode].append(chunk_figures[mode])
            bar.update(n_chunk)
        n_listings += len(products)
    bar.close()
    out: dict = {"k": int(k), "n_listings": n_listings}
    for mode in SEARCH_MODES:
        rows = np.concatenate(figures[mode]) if figures[mode] else np.zeros((0, 2))
        n = len(rows)
        out[mode] = {"n_queries": n,
                     f"precision_at_{k}": math.fsum(rows[:, 0]) / n if n else None,
                     "top1": math.fsum(rows[:, 1]) / n if n else None}
    log.info("search relevance of %d listings (%d with a photo), k=%d: %s", n_listings,
             out["image"]["n_queries"], k, "; ".join(search_lines(out)))
    return out


def _search_part(bundle, category_of: dict, products: pd.DataFrame, images: pd.DataFrame,
                 pixels: np.ndarray, k: int, chunk_size: int):
    """Per chunk of ``chunk_size`` of the part's listings: (listings in it, {mode: [queries, 2]
    array of each query's (precision, top-1)})."""
    ids = products["id"].astype(str).tolist()
    texts = products["text"].fillna("").astype(str).tolist()
    categories = products["category"].tolist()
    first = images.drop_duplicates("product_id")
    photo_row = dict(zip(first["product_id"].astype(str), first["row"].astype(int)))
    blank = np.zeros((0, *pixels.shape[1:]), np.uint8)
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
        neighbours = bundle.index.search(embedding, k + 1)
        out, offset = {}, 0
        for mode in SEARCH_MODES:
            out[mode] = np.array([_relevance(neighbours[offset + j], ids[i], categories[i],
                                             category_of, k)
                                  for j, i in enumerate(queries[mode])], np.float64).reshape(-1, 2)
            offset += len(queries[mode])
        yield len(chunk), out


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
