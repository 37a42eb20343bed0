"""Cleaning listings and photos: typed listings (price as a number, root category, title
without the site's suffix, lat/lon from the offline gazetteer), square RGB photos, outliers
out, and a split by listing id that never re-deals a listing as the data grows.

The clean stage, ``marketsearch evaluate``, the drift checks and the benchmarks all clean
with ``clean_frames``, so a listing is cleaned the same way wherever it is seen.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from marketsearch import quarantine
from marketsearch.config import Config
from marketsearch.records import CleanData
from marketsearch.schema import CLEAN_IMAGE_COLUMNS, CLEAN_PRODUCT_COLUMNS


def split_key(listing_id: str, seed: int) -> float:
    """A listing's fixed place in [0, 1): a hash of the seed and its id, the same in every process."""
    digest = hashlib.blake2b(f"{seed}:{listing_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


SMALL_LABEL = 20  # below this many listings a label is dealt by rank, so it keeps a test/val listing


def split_by_id(ids: pd.Series, labels: pd.Series, fractions: dict[str, float],
                     seed: int) -> pd.Series:
    """Assign each id a split that does not change as the data grows.

    An id's split comes from its own hash key: test below ``fractions["test"]``, val below
    test + val, train above. Adding listings never re-deals the old ones, so a champion
    trained on yesterday's train split is never scored on it today. Per label the
    proportions are right in expectation (binomial noise, about ±1.5 points at 500 listings).

    A label with fewer than ``SMALL_LABEL`` listings is dealt by rank of key instead, with
    exact counts: a test listing from 3 up and a val listing from 4 up. Such a label may
    re-deal as it grows, until it reaches ``SMALL_LABEL``.
    """
    keys = pd.Series([split_key(str(i), seed) for i in ids], index=ids.index, dtype=np.float64)
    test_below, val_below = fractions["test"], fractions["test"] + fractions["val"]
    out = pd.Series(np.where(keys < test_below, "test", np.where(keys < val_below, "val", "train")),
                    index=ids.index, dtype=object)
    for _, group in keys.groupby(labels.to_numpy(), sort=True):
        n = len(group)
        if n >= SMALL_LABEL:
            continue
        n_test = max(round(n * fractions["test"]), 1 if n >= 3 else 0)
        n_val = max(round(n * fractions["val"]), 1 if n >= 4 else 0)
        ranked = group.sort_values().index
        out.loc[ranked] = "train"
        out.loc[ranked[:n_test]] = "test"
        out.loc[ranked[n_test:n_test + n_val]] = "val"
    return out


def clean_frames(products: pd.DataFrame, images: pd.DataFrame, cfg: Config, *,
                 image_size: int | None = None, remove_outliers: bool = True,
                 assign_split: bool = True, gazetteer=None) -> CleanData:
    """Validated raw rows -> CleanData. Rows that cannot be cleaned are quarantined, not lost."""
    from tqdm import tqdm

    from marketsearch.geo import Gazetteer
    from marketsearch.images import (ImageDecodeError, aspect_ratio, decode, thumbnail_jpeg,
                                     to_square)
    from marketsearch.text import clean_title, listing_text, normalize, parse_price, root_category

    size = image_size or cfg.clean.image_size
    gazetteer = gazetteer or Gazetteer(cfg.clean.gazetteer_min_population)
    records: list[dict] = []
    rows = []
    for raw in products.to_dict("records"):
        try:
            price = parse_price(raw["price"])
            category = root_category(raw["category"])
        except ValueError as exc:
            field_ = "price" if "price" in str(exc) else "category"
            records.append(quarantine.record("products", raw, "clean", field_, str(exc)))
            continue
        if remove_outliers and not (cfg.clean.min_price <= price <= cfg.clean.max_price):
            records.append(quarantine.record(
                "products", raw, "clean", "price",
                f"price outlier: £{price:,.2f} outside [£{cfg.clean.min_price:,.0f}, £{cfg.clean.max_price:,.0f}]"))
            continue
        location = normalize(raw.get("location") or "")
        coords = gazetteer.lookup(location) if location else None
        rows.append({
            "id": raw["id"], "title": clean_title(raw["product_name"]),
            "description": normalize(raw.get("product_description") or ""),
            "text": listing_text(raw["product_name"], raw.get("product_description") or ""),
            "price": price, "category": category, "category_path": normalize(raw["category"]),
            "location": location,
            "lat": coords[0] if coords else np.nan, "lon": coords[1] if coords else np.nan,
        })
    clean_p = pd.DataFrame(rows, columns=[c for c in CLEAN_PRODUCT_COLUMNS if c != "split"])
    if assign_split:
        clean_p["split"] = split_by_id(clean_p["id"], clean_p["category"],
                                       cfg.clean.split.model_dump(), cfg.seed)
    else:
        clean_p["split"] = "test"
    by_id = clean_p.set_index("id")
    dropped = {r["row_id"]: r["reason"] for r in records}

    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    kept = []
    thumbs: dict = {}  # product id -> JPEG of its first kept photo
    for raw in tqdm(images.to_dict("records"), desc="clean: photos", mininterval=2):
        pid = raw.get("product_id")
        if pid not in by_id.index:
            why = f"listing removed: {dropped[pid]}" if pid in dropped else f"no clean listing {pid!r}"
            records.append(quarantine.record("images", raw, "clean", "product_id", why))
            continue
        try:
            img = decode(raw.get("data"))
        except ImageDecodeError as exc:
            records.append(quarantine.record("images", raw, "clean", "data", str(exc)))
            continue
        ratio = aspect_ratio(img)
        if remove_outliers and ratio > cfg.clean.max_aspect_ratio:
            records.append(quarantine.record(
                "images", raw, "clean", "data",
                f"aspect-ratio outlier: {img.width}x{img.height} ({ratio:.1f} > {cfg.clean.max_aspect_ratio})"))
            continue
        pixels[len(kept)] = to_square(img, size)
        if cfg.clean.thumbnail_size and pid not in thumbs:
            thumbs[pid] = thumbnail_jpeg(img, cfg.clean.thumbnail_size)
        listing = by_id.loc[pid]
        kept.append({"id": raw["id"], "product_id": pid, "row": len(kept),
                     "category": listing["category"], "split": listing["split"]})
    clean_i = pd.DataFrame(kept, columns=CLEAN_IMAGE_COLUMNS)
    thumbnails = pd.DataFrame({"product_id": list(thumbs), "jpeg": list(thumbs.values())})
    return CleanData(clean_p.reset_index(drop=True), clean_i, pixels[: len(kept)].copy(), records,
                     thumbnails)
