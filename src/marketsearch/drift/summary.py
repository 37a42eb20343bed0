"""Summarising listings for the drift checks: the same code for the training run's reference
(``build_reference``, ``write_reference``) and for a new batch (``current_statistics``)."""
from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from marketsearch.config import DriftConfig

from .reference import REFERENCE_DIR, Reference

log = logging.getLogger(__name__)

# ITU-R BT.601 luma weights of R, G, B: a photo's brightness is the mean over its pixels.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------- computing one
_EMBEDDERS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _embedder(bundle, which: str):
    """``embedding_model(bundle.<which>_model)`` traced once per bundle as a tf.function; for
    photos of a bundle whose fused model is split (``Bundle.parts``), the photo model's head
    from pooled backbone features (``_embed`` gets those through the bundle's feature cache)."""
    cache = _EMBEDDERS.setdefault(bundle, {})
    if which not in cache:
        import tensorflow as tf

        from marketsearch.models.fusion import embedding_model
        from marketsearch.models.image import head_from_features

        if which == "image" and bundle.parts is not None:
            model = head_from_features(bundle.image_model, "embedding")
        else:
            model = embedding_model(bundle.image_model if which == "image" else bundle.text_model)
        spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
        cache[which] = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return cache[which]


def _embed(bundle, which: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    fn = _embedder(bundle, which)
    if which == "image" and bundle.parts is not None:
        x = bundle.photo_features(x, batch_size)
    parts = [fn(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of min(n, k) rows drawn without replacement."""
    return np.sort(rng.choice(n, size=k, replace=False)) if n > k else np.arange(n)


def mean_luminance(pixels: np.ndarray, rows: np.ndarray | None = None,
                   chunk: int = 256) -> np.ndarray:
    """Per-photo mean luminance, 0-255: 0.299 R + 0.587 G + 0.114 B averaged over the pixels
    of each uint8 photo ``pixels[rows]`` (all of them without ``rows``) -> float32 [len(rows)].

    Chunk by chunk (``pixels`` may be a memory map of ~10k 128x128x3 photos): each chunk's
    channel sums are exact integers, so no float copy of the pixels is made. Photos without
    three colour channels ([n, h, w] or [n, h, w, 1]) count as grey; a fourth (alpha)
    channel is ignored."""
    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows), np.float64)
    for start in range(0, len(rows), chunk):
        block = np.asarray(pixels[rows[start:start + chunk]])
        if block.ndim == 4 and block.shape[-1] >= 3:
            sums = block[..., :3].sum(axis=(1, 2), dtype=np.int64)  # [n, 3]
            n_pixels = block.shape[1] * block.shape[2]
            out[start:start + len(block)] = (sums @ LUMA_WEIGHTS) / n_pixels
        else:
            flat = block.reshape(len(block), -1)
            out[start:start + len(block)] = (flat.sum(axis=1, dtype=np.int64)
                                             / max(flat.shape[1], 1))
    return out.astype(np.float32)


def summarize(bundle, products, images, pixels: np.ndarray | None, cfg: DriftConfig,
              seed: int, role: str = "batch", model_rows: tuple | None = None) -> Reference:
    """The summary of clean listings the checks compare, computed the same way for the
    reference (``build_reference``) and for a new batch (``current_statistics``).

    ``products``: clean listings (columns text, price, category); ``images``: their clean
    photos (columns product_id, row), ``pixels[images.row]`` the photo's uint8 pixels (their
    mean luminance is a data statistic, of ``images``).
    ``model_rows`` (products, images): take the model-dependent parts (OOV rate, photo and
    text embeddings) from these listings instead (the reference's held-out split, see
    ``build_reference``). Samples are seeded by ``seed``; embeddings come from the bundle's
    image and text models' "embedding" layers."""
    from marketsearch.text import oov_rate, tokenize

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = len(products)
    n_photos = 0 if images is None or pixels is None else len(images)
    categories = products["category"].astype(str).value_counts()
    category_counts = {str(k): int(v) for k, v in sorted(categories.items())}

    prices = products["price"].to_numpy(dtype=float)
    prices = prices[np.isfinite(prices)]
    price_sample = prices[_sample(len(prices), cfg.sample_size, rng)]

    texts = products["text"].fillna("").astype(str).tolist()
    rows = _sample(n, cfg.sample_size, rng)
    text_lengths = np.array([len(tokenize(texts[i])) for i in rows], dtype=np.int64)

    m_products, m_images = model_rows if model_rows is not None else (products, images)
    m_texts = m_products["text"].fillna("").astype(str).tolist()
    vocab = bundle.vocab
    oov = oov_rate(m_texts, vocab) if vocab else None  # a TF-Hub text model has no vocabulary
    rows = _sample(len(m_texts), cfg.embedding_rows, rng)
    text_emb = _embed(bundle, "text", bundle.text_batch([m_texts[i] for i in rows]))
    if m_images is not None and len(m_images) and pixels is not None:
        # One random photo per listing: a listing's photos resemble each other, and the MMD
        # permutation test assumes exchangeable rows (several photos of one listing on one
        # side made in-distribution batches look drifted more often than alpha).
        order = rng.permutation(len(m_images))
        one_each = m_images.iloc[order].drop_duplicates("product_id")["row"].to_numpy()
        photo_rows = np.sort(one_each[_sample(len(one_each), cfg.embedding_rows, rng)])
        photo_emb = _embed(bundle, "image", bundle.image_batch(pixels[photo_rows], len(photo_rows)))
    else:
        photo_emb = np.zeros((0, 0), np.float32)
    # Drawn after the other samples, so that those stay what they were before this statistic.
    if images is not None and len(images) and pixels is not None:
        all_rows = images["row"].to_numpy()
        chosen = all_rows[_sample(len(all_rows), cfg.sample_size, rng)]
        brightness = mean_luminance(pixels, chosen)
    else:
        brightness = np.zeros(0, np.float32)
    meta = {"role": role, "seed": int(seed),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sample_size": cfg.sample_size, "embedding_rows": cfg.embedding_rows,
            "model_stats_listings": len(m_products),
            "model_stats_photos": 0 if m_images is None else len(m_images),
            "bundle_labels": list(getattr(bundle, "labels", [])),
            "vocab_size": len(vocab), "seconds": round(time.perf_counter() - start, 2)}
    ref = Reference(n_listings=n, n_photos=n_photos, category_counts=category_counts,
                    price_sample=price_sample, text_lengths=text_lengths, oov_rate=oov,
                    photo_embeddings=photo_emb, text_embeddings=text_emb,
                    photo_brightness=brightness, meta=meta)
    log.info("drift: %s summary of %d listings, %d photos in %.1fs", role, n, n_photos,
             meta["seconds"])
    return ref


def _rows_of(products, images, splits: Sequence[str]):
    chosen = products[products["split"].isin(list(splits))]
    photos = None if images is None else images[images["product_id"].isin(chosen["id"])]
    return chosen, photos


def build_reference(bundle, products, images, pixels: np.ndarray | None, cfg: DriftConfig,
                    seed: int) -> Reference:
    """The reference a training run saves (``save`` it to ``<bundle>/reference``).

    ``products`` / ``images``: the run's clean data. With a "split" column, the data
    statistics (category counts, prices, text lengths, photo luminance) come from the
    listings the model learned from (``cfg.reference_splits``, the training split) and the
    model-dependent ones (OOV rate, photo and text embeddings) from held-out listings
    (``cfg.holdout_splits``, the validation split; empty: the reference splits too). Why:
    the model has fitted its own training rows. On the shared listings the text model's
    embeddings of its training texts differ from its embeddings of any unseen texts (MMD
    permutation p = 0.005, the minimum, for 8 of 8 in-distribution test batches of 500), and
    the vocabulary, built from the training texts, covers them better than any new text (OOV
    rate 0.035 on train, 0.070 on val, 0.075 on test): a training-split baseline would flag
    every batch. Without a "split" column every row serves for both."""
    if "split" not in products.columns:
        return summarize(bundle, products, images, pixels, cfg, seed, role="reference")
    data_p, data_i = _rows_of(products, images, cfg.reference_splits)
    model_rows = None
    if cfg.holdout_splits:
        model_rows = _rows_of(products, images, cfg.holdout_splits)
        if len(model_rows[0]) == 0:
            log.warning("drift: no listings in the held-out split(s) %s; the model statistics "
                        "come from %s", cfg.holdout_splits, cfg.reference_splits)
            model_rows = None
    ref = summarize(bundle, data_p, data_i, pixels, cfg, seed, role="reference",
                    model_rows=model_rows)
    ref.meta["reference_splits"] = list(cfg.reference_splits)
    ref.meta["holdout_splits"] = list(cfg.holdout_splits) if model_rows is not None else []
    return ref


def current_statistics(bundle, products, images, pixels: np.ndarray | None, cfg: DriftConfig,
                       seed: int) -> Reference:
    """A new batch's summary, by the same code as the reference's (every row of the batch
    serves for every statistic)."""
    return summarize(bundle, products, images, pixels, cfg, seed, role="batch")


def write_reference(bundle, products, images, pixels: np.ndarray, cfg: DriftConfig,
                    seed: int) -> dict:
    """``build_reference`` on a training run's clean data, saved as ``<bundle>/reference``
    (``bundle``: a Bundle or its directory) -> a few numbers to log."""
    from marketsearch.bundle import Bundle

    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    ref = build_reference(bundle, products, images, pixels, cfg, seed)
    ref.save(bundle.root / REFERENCE_DIR)
    return {"reference_listings": ref.n_listings, "reference_photos": ref.n_photos,
            "reference_holdout_listings": ref.meta["model_stats_listings"],
            "reference_seconds": ref.meta["seconds"]}
