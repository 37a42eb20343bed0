"""Combining and cutting snapshots: ``concat`` (a newer snapshot's copies win) and ``sample``
(a stratified, seeded sample of the listings, photos following their listing); ``Selection``,
the rows both keep, decided over sources read in chunks."""
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


def _sample_listings(strata: pd.Series, limit: int, rng) -> list[int]:
    """Positions of the listings a sample keeps: ``limit`` of them, stratified (a proportional
    quota per stratum, drawn with ``rng``), in row order."""
    sizes = strata.value_counts().sort_index()
    quota = _allocate(sizes, limit)
    keep: list[int] = []
    for group in sorted(quota):
        positions = np.flatnonzero((strata == group).to_numpy())
        keep.extend(rng.choice(positions, size=quota[group], replace=False).tolist())
    return sorted(keep)


def _sample_photos(n_images: int, known: np.ndarray | None, own: np.ndarray | None,
                   limit: int, n: int, rng) -> np.ndarray:
    """The photo rows a sample keeps (a bool per row): those of a kept listing (``own``) plus
    a share of ``limit``/``n`` of those whose listing is unknown (not ``known``), drawn with
    ``rng``; without ``known`` (no way to tell whose photo is whose) that share of all."""
    if known is not None:
        orphans = np.flatnonzero(~known)
        share = int(round(len(orphans) * limit / n))
        chosen = rng.choice(orphans, size=share, replace=False) if share else []
        mask = own.copy()
        mask[np.asarray(chosen, dtype=int)] = True
    else:
        mask = np.zeros(n_images, dtype=bool)
        idx = rng.choice(n_images, size=int(round(n_images * limit / n)), replace=False)
        mask[idx] = True
    return mask


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
    kept_products = products.iloc[_sample_listings(strata, limit, rng)].reset_index(drop=True)
    if "product_id" in images.columns and "id" in products.columns:
        known = images["product_id"].isin(products["id"]).to_numpy()
        own = images["product_id"].isin(kept_products["id"]).to_numpy()
        mask = _sample_photos(len(images), known, own, limit, n, rng)
    else:                                       # no way to tell whose photo is whose
        mask = _sample_photos(len(images), None, None, limit, n, rng)
    kept_images = images[mask].reset_index(drop=True)
    log.info("sampled %d of %d listings (%d strata), %d of %d photos",
             len(kept_products), n, strata.nunique(), len(kept_images), len(images))
    return RawData(kept_products, kept_images, source=f"{raw.source} (sample {limit}, seed {seed})")


class Selection:
    """The rows ``read_source_index`` keeps of its sources, decided over sources read in
    chunks (ingest): the first source's ``sample`` (``limit``, ``seed``), then each later
    source appended as ``concat`` appends it (a later source's copy of a listing or photo id
    replaces every earlier one). It holds a few bytes a row, never the rows.

    Show it each source, LAST to first (an earlier source's rows then meet the ids of every
    source after it): ``listings(k, chunk)`` for each listing chunk of source ``k`` in order,
    then ``photos(k, chunk)`` for each of its photo-index chunks, then ``done(k)``. Then
    ``listing_mask(k)`` and ``photo_mask(k)`` say which rows of source ``k`` stay (a bool per
    row in the source's order; None: all of them).

    What it holds: the listing and photo ids of every source but the first (what replaces an
    earlier copy); with a ``limit`` below the first source's size, also a stratum number per
    listing and the first source's listing ids (``sample`` tells a photo whose listing is
    unknown by them) and two bools per photo. The sample is ``sample``'s, row for row: the
    same strata and quotas, drawn by the same seeded generator in the same order, from the
    same columns (its helpers are ``sample``'s own)."""

    def __init__(self, names: list[str], limit: int | None = None, seed: int = 0):
        if limit is not None and limit < 0:
            raise ValueError(f"limit {limit} is negative")
        self.names, self.limit, self.seed = list(names), limit, seed
        self._later = {"listings": set(), "photos": set()}     # ids of the sources after k
        self._own_ids = {"listings": set(), "photos": set()}   # source k's, joining at done(k)
        self._repeated: dict[str, list[np.ndarray]] = {"listings": [], "photos": []}
        self._masks: dict[tuple[str, int], np.ndarray | None] = {}
        # the first source's sample (limit): strata, then the draw, then the photos
        self._strata: list[np.ndarray] = []
        self._stratum_of: dict[str, int] = {}
        self._ids: list[str] = []                # the first source's listing ids
        self._has_ids = True                     # ... when its listings have an id column
        self._has_category: bool | None = None
        self._drawn = False
        self._sampled: np.ndarray | None = None  # bool per listing of the first source
        self._rng = None
        self._known: list[np.ndarray] = []
        self._own: list[np.ndarray] = []
        self._n_photos = 0
        self._by_owner: bool | None = None

    def listing_mask(self, k: int) -> np.ndarray | None:
        return self._masks[("listings", k)]

    def photo_mask(self, k: int) -> np.ndarray | None:
        return self._masks[("photos", k)]

    # -- shown, source by source, last to first -----------------------------------------------
    def listings(self, k: int, chunk: pd.DataFrame) -> None:
        self._see("listings", k, chunk)
        if k == 0 and self.limit is not None:
            if self._has_category is None:
                self._has_category = "category" in chunk.columns
            strata = (chunk["category"].map(_root_or_blank).tolist() if self._has_category
                      else [""] * len(chunk))
            self._strata.append(np.array([self._stratum_of.setdefault(g, len(self._stratum_of))
                                          for g in strata], dtype=np.int32))
            if "id" in chunk.columns:
                self._ids.extend(chunk["id"].tolist())
            else:
                self._has_ids = False

    def photos(self, k: int, chunk: pd.DataFrame) -> None:
        self._see("photos", k, chunk)
        if k == 0 and self.limit is not None:
            self._draw()
            if self._sampled is None:
                return
            if self._by_owner is None:
                self._by_owner = "product_id" in chunk.columns and self._has_ids
            if self._by_owner:
                owner = chunk["product_id"]
                self._known.append(owner.isin(self._all_ids).to_numpy())
                self._own.append(owner.isin(self._kept_ids).to_numpy())
            self._n_photos += len(chunk)

    def done(self, k: int) -> None:
        """Source ``k`` is all shown: its masks are decided, its ids join the later ones."""
        kept = {"listings": self._not_repeated("listings"), "photos": self._not_repeated("photos")}
        sampled = {"listings": None, "photos": None}
        if k == 0 and self.limit is not None:
            self._draw()
            if self._sampled is not None:
                sampled["listings"] = self._sampled
                if self._by_owner:
                    known, own = (np.concatenate(self._known) if self._known
                                  else np.zeros(0, dtype=bool),
                                  np.concatenate(self._own) if self._own
                                  else np.zeros(0, dtype=bool))
                else:
                    known = own = None
                n = len(self._sampled)
                sampled["photos"] = _sample_photos(self._n_photos, known, own, self.limit, n,
                                                   self._rng)
                log.info("sampled %d of %d listings (%d strata), %d of %d photos",
                         int(self._sampled.sum()), n, self._n_strata,
                         int(sampled["photos"].sum()), self._n_photos)
                self._known, self._own, self._all_ids, self._kept_ids = [], [], set(), set()
        again = {}
        for table in ("listings", "photos"):
            mask, drawn = kept[table], sampled[table]
            again[table] = 0 if mask is None else int(
                (~mask).sum() if drawn is None else (~mask & drawn).sum())
            if drawn is not None:
                mask = drawn if mask is None else mask & drawn
            self._masks[(table, k)] = mask
            self._later[table] |= self._own_ids[table]
            self._own_ids[table] = set()
        if again["listings"] or again["photos"]:
            log.info("%s has %d listing(s) and %d photo(s) again in a later source: keeping the "
                     "later copies", self.names[k], again["listings"], again["photos"])

    # -- inside -------------------------------------------------------------------------------
    def _see(self, table: str, k: int, chunk: pd.DataFrame) -> None:
        """Note which of the chunk's rows a later source has again, and (every source but the
        first) its ids, for the sources before it."""
        if len(self.names) == 1:
            return
        if "id" not in chunk.columns:
            raise ValueError(f"the {table} of {self.names[k]} have no id column: with more "
                             "than one source, a later source's copy of a row is told by its id")
        ids = chunk["id"]
        if self._later[table]:
            self._repeated[table].append(ids.isin(self._later[table]).to_numpy())
        else:
            self._repeated[table].append(np.zeros(len(ids), dtype=bool))
        if k > 0:
            self._own_ids[table].update(ids.tolist())

    def _not_repeated(self, table: str) -> np.ndarray | None:
        parts, self._repeated[table] = self._repeated[table], []
        if not parts:
            return None
        repeated = np.concatenate(parts)
        return ~repeated if repeated.any() else None

    def _draw(self) -> None:
        """The first source's listings are all shown: draw the sample, as ``sample`` does."""
        if self._drawn:
            return
        self._drawn = True
        codes = np.concatenate(self._strata) if self._strata else np.zeros(0, dtype=np.int32)
        self._strata = []
        n = len(codes)
        if self.limit >= n:                      # sample() keeps everything as it is
            self._ids = []
            return
        names = np.empty(len(self._stratum_of), dtype=object)
        for name, code in self._stratum_of.items():
            names[code] = name
        strata = pd.Series(names[codes], dtype=object)
        self._n_strata = int(strata.nunique())
        self._rng = np.random.default_rng(self.seed)
        kept = _sample_listings(strata, self.limit, self._rng)
        self._sampled = np.zeros(n, dtype=bool)
        self._sampled[kept] = True
        ids, self._ids = self._ids, []
        self._all_ids = set(ids)
        self._kept_ids = {ids[i] for i in kept} if self._has_ids else set()
