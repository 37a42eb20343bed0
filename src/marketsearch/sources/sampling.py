"""Combining and cutting snapshots: ``concat`` (a newer snapshot's copies win) and ``sample``
(a stratified, seeded sample of the listings, photos following their listing)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from marketsearch.text import root_category

from .common import RawData

log = logging.getLogger(__name__)


def concat(first: RawData, second: RawData) -> RawData:
    """Both snapshots' rows; a listing or photo id in both is taken from ``second`` (the newer
    snapshot, e.g. a full export that repeats old listings), so it is neither counted twice nor
    quarantined as a duplicate."""
    again_p = first.products["id"].isin(second.products["id"])
    again_i = first.images["id"].isin(second.images["id"])
    if again_p.any() or again_i.any():
        log.info("%s repeats %d listing(s) and %d photo(s) of %s: keeping its copies",
                 second.source, int(again_p.sum()), int(again_i.sum()), first.source)
    return RawData(pd.concat([first.products[~again_p], second.products],
                             ignore_index=True).fillna(""),
                   pd.concat([first.images[~again_i], second.images], ignore_index=True),
                   source=f"{first.source} + {second.source}")


def _root_or_blank(category: str) -> str:
    try:
        return root_category(category)
    except ValueError:
        return ""                               # unparseable: a stratum of its own


def _allocate(sizes: pd.Series, limit: int) -> dict[str, int]:
    """Largest-remainder proportional allocation of ``limit`` over strata (deterministic)."""
    total = int(sizes.sum())
    exact = sizes * (limit / total)
    counts = np.floor(exact).astype(int)
    left = limit - int(counts.sum())
    order = sorted(sizes.index, key=lambda g: (-(exact[g] - counts[g]), g))
    for g in order[:left]:
        counts[g] += 1
    return {g: int(counts[g]) for g in sizes.index}


def sample(raw: RawData, limit: int | None, seed: int = 0) -> RawData:
    """Keep ``limit`` listings, stratified by root category (proportional, seeded), and
    only their photos plus a proportional share of photos whose listing is unknown."""
    products, images = raw.products, raw.images
    n = len(products)
    if limit is None or limit >= n:
        return raw
    if limit < 0:
        raise ValueError(f"limit {limit} is negative")
    rng = np.random.default_rng(seed)
    strata = (products["category"].map(_root_or_blank) if "category" in products.columns
              else pd.Series("", index=products.index))
    sizes = strata.value_counts().sort_index()
    quota = _allocate(sizes, limit)
    keep: list[int] = []
    for group in sorted(quota):
        positions = np.flatnonzero((strata == group).to_numpy())
        keep.extend(rng.choice(positions, size=quota[group], replace=False).tolist())
    kept_products = products.iloc[sorted(keep)].reset_index(drop=True)

    if "product_id" in images.columns and "id" in products.columns:
        known = images["product_id"].isin(products["id"]).to_numpy()
        own = images["product_id"].isin(kept_products["id"]).to_numpy()
        orphans = np.flatnonzero(~known)
        share = int(round(len(orphans) * limit / n))
        chosen = rng.choice(orphans, size=share, replace=False) if share else []
        mask = own.copy()
        mask[np.asarray(chosen, dtype=int)] = True
    else:                                       # no way to tell whose photo is whose
        mask = np.zeros(len(images), dtype=bool)
        idx = rng.choice(len(images), size=int(round(len(images) * limit / n)), replace=False)
        mask[idx] = True
    kept_images = images[mask].reset_index(drop=True)
    log.info("sampled %d of %d listings (%d strata), %d of %d photos",
             len(kept_products), n, len(sizes), len(kept_images), len(images))
    return RawData(kept_products, kept_images, source=f"{raw.source} (sample {limit}, seed {seed})")
