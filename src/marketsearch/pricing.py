"""The bundle's price part: trained by train_fusion after the fused model, scored by evaluate,
answered by the server (``Bundle.price``). The models are ``marketsearch.price``'s.

Files in the model part, so in the bundle::

    price.keras           the price head: fused embedding, location, modality flags ->
                          log-price quantiles (10/50/90%), its 80% interval calibrated
    price_baselines.json  the two baselines trained in the same run, scored beside the head
                          by evaluate: the root category's median, a TF-IDF ridge regression;
                          with ``price.text_char_terms``, "text_price", the ridge of words and
                          character n-grams whose log-price of the text the head reads instead
    price_comparables/    with ``price.comparables``, the catalogue's priced listings indexed by
                          their text (``marketsearch.comparables``): the head reads the
                          nearest ones' prices

A listing's price features are what the server computes for a request (``features``): the
fused embedding of ``Bundle.predict``, ``location_features`` of its coordinates, the two
presence flags, and from the text: the TF-IDF ridge's log-price (the baseline; with
``price.text_char_terms``, "text_price", the same of words and character n-grams; stacked,
out-of-fold for the training rows, so the head does not learn to trust a ridge that has seen
their prices), with ``price.comparables`` the prices of the catalogue listings whose text is
most like it (a catalogue listing is never its own comparable), and the first "£amount" the
seller wrote, when there is one (a fifth of the listings state their price). Each listing
with a price gives a row per way a seller may ask (``MODES``): with text and its first photo,
with text only, with the photo only (a listing without a photo: text only). The head so
learns a price for every kind of request, and how much less sure it is with one modality (a
wider interval).

Training holds its rows in memory: at most ``price.max_train_listings`` sampled listings (and
as many for validation) whatever the catalogue's size; the rows are built shard by shard.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PRICE_FILE = "price.keras"
BASELINES_FILE = "price_baselines.json"
TEXT_PRICE = "text_price"   # the key in BASELINES_FILE of the ridge the head reads
# how a seller may ask: (has text, has photo)
MODES = {"both": (1.0, 1.0), "text": (1.0, 0.0), "image": (0.0, 1.0)}
CHUNK = 1024          # listings embedded at a time (their first photos' pixels in memory)


def features(embedding: np.ndarray, texts, lat, lon, has_text, has_image,
             text_log_price, comparables: np.ndarray | None = None) -> np.ndarray:
    """The head's input rows, float32 [N, embedding dim + 9 (+ 3)]: the fused embedding,
    ``location_features``, the text and photo flags, the ridge's log-price of the text
    (``text_log_price``), with a bundle that has them the text's ``comparables`` (the
    ``Comparables.features`` of each text: best cosine, its log-price, the k best's), and
    the first price written in it (log, and a flag); all zero without text."""
    from marketsearch.price import location_features

    n = len(embedding)
    has_text = np.broadcast_to(np.asarray(has_text, np.float32), n)
    has_image = np.broadcast_to(np.asarray(has_image, np.float32), n)
    written = np.array([mentioned_log_price(t) for t in texts], np.float32).reshape(n, 2)
    said = [np.asarray(text_log_price, np.float32), np.ones(n, np.float32)]
    if comparables is not None:
        said.append(np.asarray(comparables, np.float32).reshape(n, -1))
    text = np.column_stack([*said, written]) * has_text[:, None]
    return np.concatenate([np.asarray(embedding, np.float32), location_features(lat, lon),
                           np.stack([has_text, has_image], axis=1), text],
                          axis=1).astype(np.float32)


def written_columns(dim: int) -> tuple[int, int]:
    """The columns of ``features``' rows (``dim`` wide) holding the written log-price and its
    flag: the last two."""
    return dim - 2, dim - 1


def comparable_columns(dim: int) -> tuple[int, int]:
    """The columns of ``features``' rows (``dim`` wide, with comparables) holding the best
    comparable's log-price and its cosine: the head's gate moves towards that price as far as
    it trusts a comparable that close."""
    return dim - 4, dim - 5


_POUNDS = re.compile(r"£\s?(\d[\d,]*(?:\.\d+)?)")


def mentioned_log_price(text: str | None) -> tuple[float, float]:
    """(log of the first positive "£amount" in ``text``, 1), or (0, 0) when it names none."""
    for amount in _POUNDS.findall(text or ""):
        value = float(amount.replace(",", ""))
        if value > 0:
            return math.log(value), 1.0
    return 0.0, 0.0


def priced(products: pd.DataFrame) -> pd.DataFrame:
    """The listings with a usable asking price (positive, finite): the others (free items,
    "price on request") are neither learned from nor scored."""
    price = pd.to_numeric(products["price"], errors="coerce")
    return products[np.isfinite(price) & (price > 0)]


def listing_rows(bundle, part, ids: set | None = None) -> dict[str, np.ndarray]:
    """One clean shard's priced listings (only ``ids``, when given), a row per mode each
    listing can be asked in: {"embedding", "text" ("" where the mode has none), "lat", "lon",
    "has_text", "has_image", "log_price", "mode", "id"}; ``features`` makes the head's rows."""
    products = priced(part.products)
    if ids is not None:
        products = products[products["id"].isin(ids)]
    first = part.images.drop_duplicates("product_id").set_index("product_id")["row"]
    rows: dict[str, list] = {}
    for start in range(0, len(products), CHUNK):
        chunk = products.iloc[start:start + CHUNK]
        photo_rows = chunk["id"].map(first)
        with_photo = photo_rows.notna().to_numpy()
        pixels = None
        if with_photo.any():
            photos = np.asarray(part.pixels[photo_rows[with_photo].astype(int).to_numpy()])
            pixels = np.zeros((len(chunk), *photos.shape[1:]), np.uint8)
            pixels[with_photo] = photos
        for mode, (has_text, has_image) in MODES.items():
            keep = with_photo if has_image else np.ones(len(chunk), bool)
            if not keep.any():
                continue
            n = int(keep.sum())
            # as the server asks: "" for no text, no pixels for no photo
            texts = [t if has_text else "" for t in chunk["text"][keep]]
            pred = bundle.predict(texts, pixels[keep] if has_image else None,
                                  np.full(n, has_text, np.float32),
                                  np.full(n, has_image, np.float32), per_modality=False)
            for key, value in (("embedding", pred.fused_embedding), ("text", texts),
                               ("lat", chunk["lat"].to_numpy(np.float64)[keep]),
                               ("lon", chunk["lon"].to_numpy(np.float64)[keep]),
                               ("has_text", np.full(n, has_text, np.float32)),
                               ("has_image", np.full(n, has_image, np.float32)),
                               ("log_price", np.log(chunk["price"].to_numpy(np.float64)[keep])),
                               ("mode", [mode] * n), ("id", chunk["id"][keep].tolist())):
                rows.setdefault(key, []).append(np.asarray(value, dtype=object if key in (
                    "text", "mode", "id") else None))
    return {key: np.concatenate(values) for key, values in rows.items()}


def _rows(bundle, catalogue, split: str, ids: set | None) -> dict[str, np.ndarray]:
    parts = [rows for part in catalogue.parts(split)
             if (rows := listing_rows(bundle, part, ids))]
    if not parts:
        raise ValueError(f"no priced listings in the {split} split to train the price head on")
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _head_input(rows: dict, text_log_price, comparables=None) -> np.ndarray:
    """The head's input rows for ``listing_rows``; a listing is not its own comparable."""
    return features(rows["embedding"], rows["text"], rows["lat"], rows["lon"], rows["has_text"],
                    rows["has_image"], text_log_price,
                    None if comparables is None else
                    comparables.features(rows["text"], exclude=rows["id"]))


def ridge_log_price(ridge, texts) -> np.ndarray:
    """The ridge's log-price of each text (0 for "": the caller's flag says there is none)."""
    texts = list(texts)
    out = np.zeros(len(texts))
    said = [i for i, t in enumerate(texts) if t]
    if said:
        out[said] = np.log(ridge.predict([texts[i] for i in said])[0])
    return out


def _out_of_fold(train: pd.DataFrame, folds: int, seed: int, char_terms: int) -> dict:
    """listing id -> the log-price a ridge (of ``char_terms`` character n-grams besides the
    words) fitted without that listing's fold gives it."""
    from marketsearch.price import TfidfRidge

    fold = np.random.default_rng(seed).permutation(len(train)) % folds
    out = {}
    for f in range(folds):
        ridge = TfidfRidge(seed=seed, char_terms=char_terms).fit(
            train["text"][fold != f].tolist(), train["price"][fold != f].to_numpy())
        held = train[fold == f]
        out.update(zip(held["id"], ridge_log_price(ridge, held["text"])))
    return out


def _sample(catalogue, split: str, n: int, seed: int) -> set | None:
    """A seeded sample of at most ``n`` of the split's priced listing ids (None: all)."""
    listings = priced(catalogue.plan.listings)
    ids = listings.loc[listings["split"] == split, "id"]
    return None if len(ids) <= n else set(ids.sample(n, random_state=seed))


def train_price(cfg, catalogue, bundle, out_dir: str | Path) -> dict[str, Any]:
    """Train the two baselines and the price head on the fused embeddings of ``bundle`` (the
    model part just assembled); write ``PRICE_FILE`` and ``BASELINES_FILE`` into ``out_dir``.
    Returns {"price": the training figures (rows, epochs, the interval's calibration, the
    validation MdAPE of the head on text-and-photo rows and of each baseline),
    "price_history": the head's curves}."""
    from marketsearch.price import (CategoryMedian, TfidfRidge, average_price_heads,
                                    build_price_head, calibrate_price_head, fit_price_head,
                                    predict_price, price_metrics)

    pcfg, seed = cfg.price, cfg.seed
    plan = priced(catalogue.plan.listings)
    counts = {split: int((plan["split"] == split).sum()) for split in ("train", "val")}
    if counts["train"] < pcfg.min_train_listings or not counts["val"]:
        why = (f"{counts['train']} priced training and {counts['val']} validation listings, "
               f"fewer than price.min_train_listings ({pcfg.min_train_listings}) or none to "
               "validate on: no price head, the bundle answers without a price")
        log.warning("price head skipped: %s", why)
        return {"price": {"skipped": why}, "price_history": {}}
    samples = {split: _sample(catalogue, split, pcfg.max_train_listings, seed)
               for split in ("train", "val")}
    listings = {}
    for split in ("train", "val"):
        frame = pd.concat([priced(p) for p in catalogue.listing_parts(
            split, ["text", "category", "price"])], ignore_index=True)
        listings[split] = frame if samples[split] is None else \
            frame[frame["id"].isin(samples[split])].reset_index(drop=True)
    train = listings["train"]
    baselines = {"category_median": CategoryMedian().fit(train["category"].tolist(),
                                                         train["price"].to_numpy()),
                 "tfidf_ridge": TfidfRidge(seed=seed).fit(train["text"].tolist(),
                                                          train["price"].to_numpy())}
    saved = dict(baselines)
    text_price = baselines["tfidf_ridge"]
    if pcfg.text_char_terms:
        text_price = saved[TEXT_PRICE] = TfidfRidge(seed=seed, char_terms=pcfg.text_char_terms).fit(
            train["text"].tolist(), train["price"].to_numpy())
    (Path(out_dir) / BASELINES_FILE).write_text(json.dumps(
        {name: model.to_dict() for name, model in saved.items()}))

    comparables = _comparables(pcfg, seed, catalogue, train["text"].tolist(), cfg.index, out_dir)
    rows = {split: _rows(bundle, catalogue, split, samples[split]) for split in ("train", "val")}
    oof = _out_of_fold(train, pcfg.ridge_folds, seed, pcfg.text_char_terms)
    x = _head_input(rows["train"], [oof[i] for i in rows["train"]["id"]], comparables)
    x_val = _head_input(rows["val"], ridge_log_price(text_price, rows["val"]["text"]),
                        comparables)
    y, y_val = rows["train"]["log_price"], rows["val"]["log_price"]
    # the suggestion is tuned for, and the head's figure is, the way a seller mostly asks
    both = rows["val"]["mode"] == "both"
    tuned = both if both.any() else None
    heads, histories = [], []
    for i in range(pcfg.heads):
        heads.append(build_price_head(
            x.shape[1], pcfg, seed=seed + i, name=f"price_head_{i}",
            written=written_columns(x.shape[1]),
            comparable=comparable_columns(x.shape[1]) if comparables else None))
        histories.append(fit_price_head(heads[-1], x, y, x_val, y_val, pcfg, seed + i,
                                        relative_rows=tuned))
    head = heads[0]
    calibration = {k: histories[0][k] for k in ("interval_scale", "coverage_before", "coverage",
                                                "estimate_factor")}
    if len(heads) > 1:
        head = average_price_heads(heads)
        calibration = calibrate_price_head(head, x_val, y_val, pcfg.interval_target,
                                           pcfg.relative_estimate, tuned)
    head.save(Path(out_dir) / PRICE_FILE)

    figures = {"rows": len(x), "val_rows": len(x_val), "heads": len(heads),
               "val_mdape": price_metrics(np.exp(y_val[both]),
                                          *predict_price(head, x_val[both]))["mdape"],
               # over the heads: the mean best and run epochs, the seconds of all
               "best_epoch": float(np.mean([h["best_epoch"] for h in histories])),
               "epochs_run": float(np.mean([h["epochs_run"] for h in histories])),
               "seconds": float(sum(h["seconds"] for h in histories)), **calibration}
    if len(heads) > 1:
        figures["val_mdape_one_head"] = price_metrics(
            np.exp(y_val[both]), *predict_price(heads[0], x_val[both]))["mdape"]
    history = histories[0]                        # the curves shown: the first head's
    val = listings["val"]
    for name, model in baselines.items():
        inputs = val["category"] if name == "category_median" else val["text"]
        figures[f"val_mdape_{name}"] = price_metrics(
            val["price"].to_numpy(), *model.predict(inputs.tolist()))["mdape"]
    log.info("price head: %s", figures)
    return {"price": figures, "price_history": history}


def _comparables(pcfg, seed: int, catalogue, texts: list[str], index_cfg, out_dir):
    """With ``price.comparables``, the catalogue's priced listings (every split: a listing's
    comparables are the catalogue's other listings, as a seller's are at serving time)
    indexed by their text, shard by shard, the embedder fitted on the training sample's
    ``texts``; saved into ``out_dir``. None when off."""
    from marketsearch.comparables import DIRECTORY, Comparables, TextEmbedder

    if not pcfg.comparables:
        return None
    embedder = TextEmbedder.fit(texts, pcfg.comparables_dim, pcfg.comparables_min_df, seed,
                                pcfg.comparables_max_terms)
    listings = (priced(frame) for frame in catalogue.listing_parts(None, ["text", "price"]))
    comparables = Comparables.build(embedder, listings, len(priced(catalogue.plan.listings)),
                                    pcfg.comparables, index_cfg)
    comparables.save(Path(out_dir) / DIRECTORY)
    return comparables


def load_baselines(bundle_dir: str | Path) -> dict | None:
    """The baselines saved beside a bundle's price head, and its text input ``TEXT_PRICE``
    (a bundle from before it has none: its head read the baseline ridge); None: a bundle
    without them."""
    from marketsearch.price import CategoryMedian, TfidfRidge

    path = Path(bundle_dir) / BASELINES_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    out = {"category_median": CategoryMedian.from_dict(state["category_median"]),
           "tfidf_ridge": TfidfRidge.from_dict(state["tfidf_ridge"])}
    out[TEXT_PRICE] = (TfidfRidge.from_dict(state[TEXT_PRICE]) if TEXT_PRICE in state
                       else out["tfidf_ridge"])
    return out


def score_prices(bundle, parts, sample: int = 2000, seed: int = 0) -> dict | None:
    """The price head and the two baselines on a split's priced listings, read part by part
    (``parts``: clean shards' CleanData, e.g. ``catalogue.parts("test")``); None for a bundle
    without a price head. Per listing the head is asked as a seller would ask the server: with
    its text and first photo, or its text alone when it has none ("model"); "modes" scores
    each way of asking on the listings that allow it. Holds three floats per listing and
    model; ``sample`` listings' prices are kept for the plot (``price_figure``)."""
    from marketsearch.price import price_metrics

    if bundle.price_model is None:
        return None
    kept: dict[str, list] = {}
    for part in parts:
        rows = listing_rows(bundle, part)
        if not rows:
            continue
        prices = bundle.price(rows["embedding"], rows["text"], rows["has_text"],
                              rows["has_image"], rows["lat"], rows["lon"], exclude=rows["id"])
        with_photo = set(rows["id"][rows["mode"] == "both"])
        served = (rows["mode"] == "both") | ((rows["mode"] == "text") &
                                             ~np.isin(rows["id"], list(with_photo)))
        listings = priced(part.products).set_index("id").loc[rows["id"][served]]
        for name, estimates in (
                ("model", prices[served].T),
                *((f"mode_{m}", prices[rows["mode"] == m].T) for m in MODES),
                ("category_median", bundle.price_baselines["category_median"].predict(
                    listings["category"].tolist())),
                ("tfidf_ridge", bundle.price_baselines["tfidf_ridge"].predict(
                    listings["text"].tolist()))):
            kept.setdefault(name, []).append(np.column_stack(estimates))
        kept.setdefault("true", []).append(np.exp(rows["log_price"][served]))
        for m in MODES:
            kept.setdefault(f"true_{m}", []).append(np.exp(rows["log_price"][rows["mode"] == m]))
    if not kept:
        return {"n_listings": 0}
    arrays = {name: np.concatenate(values) for name, values in kept.items()}
    true = arrays["true"]
    out: dict[str, Any] = {"n_listings": int(len(true)), "models": {}, "modes": {}}
    for name in ("model", "tfidf_ridge", "category_median"):
        out["models"][name] = price_metrics(true, *arrays[name].T)
    for m in MODES:
        if len(arrays[f"true_{m}"]):
            out["modes"][m] = price_metrics(arrays[f"true_{m}"], *arrays[f"mode_{m}"].T)
            est, low, high = arrays[f"mode_{m}"].T
            out["modes"][m]["median_interval_ratio"] = float(np.median(high / low))
    ridge = out["models"]["tfidf_ridge"]["mdape"]
    out["mdape_vs_ridge"] = out["models"]["model"]["mdape"] / ridge if ridge else None
    shown = np.sort(np.random.default_rng(seed).choice(len(true), min(sample, len(true)),
                                                      replace=False))
    out["sample"] = {"true": true[shown].tolist(),
                     **{name: arrays[name][shown].tolist()
                        for name in ("model", "tfidf_ridge", "category_median")}}
    return out


PLOT_NAMES = {"model": "price head", "tfidf_ridge": "TF-IDF ridge",
              "category_median": "category median"}


def price_figure(result: dict):
    """``score_prices``' sample, plotted: suggested against listed price per model."""
    from marketsearch.price import price_plot

    sample = result["sample"]
    return price_plot(sample["true"], {PLOT_NAMES[name]: tuple(np.asarray(sample[name]).T)
                                       for name in PLOT_NAMES},
                      title=f"Test listings, a sample of {len(sample['true']):,}")
