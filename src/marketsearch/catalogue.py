"""The clean catalogue as the stages after gather_clean read it: the clean shards where
prepare_shard wrote them, and gather_clean's plan (marketsearch.records.CleanPlan).

A stage walks the shards one at a time (``parts``), each with its pixels memory-mapped and its
listings' split taken from the plan (dealt over the whole catalogue), so what it holds is one
shard, not the catalogue. ``gathered`` concatenates (a split of) the catalogue in id order
for the work that needs it whole and small: a drift sample (evaluation reads the test
split part by part). With ``lazy=True`` its pixels stay in the shards
(``GatheredPixels``), read only where the work indexes them, so a sample of 5,000 listings
holds its tables, not its photos.

Given one CleanData (a test's fixture, the CLI's clean directory) instead of shards, it is
the catalogue of one shard whose splits are its own.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marketsearch.records import CleanData, CleanPlan, CleanShard
from marketsearch.records.data import PLAN_COLUMNS


def _shard(part) -> CleanShard | CleanData:
    if isinstance(part, (CleanShard, CleanData)):
        return part
    return CleanShard.load(part)


class CleanCatalogue:
    """Clean shards plus the plan that says each listing's split (see the module docstring)."""

    def __init__(self, shards: Sequence[CleanShard | CleanData], plan: CleanPlan):
        self.shards = list(shards)
        self.plan = plan
        self._split = pd.Series(plan.listings["split"].to_numpy(),
                                index=plan.listings["id"].to_numpy())

    @classmethod
    def of(cls, clean_data, plan: CleanPlan | str | Path | None = None) -> "CleanCatalogue":
        """``clean_data``: the clean shards (CleanShard, CleanData or their directories), or one
        CleanData (or its directory); ``plan``: gather_clean's, or None for data whose split
        column is already the one to use (one CleanData)."""
        if isinstance(clean_data, CleanCatalogue):
            return clean_data
        shards = ([_shard(p) for p in clean_data] if isinstance(clean_data, (list, tuple))
                  else [CleanData.coerce(clean_data)])
        if plan is not None:
            return cls(shards, CleanPlan.coerce(plan))
        return cls(shards, plan_of(shards))

    @property
    def labels(self) -> list[str]:
        return self.plan.labels

    @property
    def summary(self) -> dict:
        return self.plan.summary

    @property
    def source(self) -> dict:
        return self.plan.source

    @property
    def image_size(self) -> int:
        return int(self.plan.summary["image_size"])

    @property
    def listings(self) -> pd.DataFrame:
        """One row per clean listing in id order (the plan's columns)."""
        return self.plan.listings

    def __len__(self) -> int:
        return len(self.plan.listings)

    def parts(self, split: str | None = None) -> Iterator[CleanData]:
        """Each shard with a clean listing as a CleanData (pixels memory-mapped), its listings'
        and photos' split the plan's; with ``split``, only that split's rows (``row`` still
        indexes the shard's pixels)."""
        for shard in self.shards:
            if isinstance(shard, CleanShard) and not shard.n_products:
                continue
            data = shard.data() if isinstance(shard, CleanShard) else shard
            if not len(data.products):
                continue
            products = data.products.assign(
                split=data.products["id"].map(self._split).to_numpy())
            if products["split"].isna().any():
                missing = products.loc[products["split"].isna(), "id"].head(5).tolist()
                raise ValueError(f"clean shard {getattr(shard, 'name', '?')} has listings the plan "
                                 f"does not know (e.g. {missing}): plan and shards are of "
                                 "different runs")
            images = data.images.assign(
                split=data.images["product_id"].map(self._split).to_numpy())
            if split is not None:
                products = products[products["split"] == split].reset_index(drop=True)
                images = images[images["split"] == split].reset_index(drop=True)
            yield CleanData(products, images, data.pixels, [], data.thumbnails,
                            data.summary, data.source)

    def table_parts(self) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
        """Each shard's (name, listings, photo rows), splits from the plan; no pixels or
        thumbnails are read."""
        for shard in self.shards:
            if isinstance(shard, CleanShard):
                if not shard.n_products:
                    continue
                products, images = shard.products(), shard.images()
            else:
                products, images = shard.products, shard.images
            yield (getattr(shard, "name", None) or shard.summary.get("shard"),
                   products.assign(split=products["id"].map(self._split).to_numpy()),
                   images.assign(split=images["product_id"].map(self._split).to_numpy()))

    def listing_parts(self, split: str | None = None,
                      columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """Each shard's listings (only ``columns``, when given), split from the plan, with
        ``split``: only that split's; no photo is read."""
        for shard in self.shards:
            if isinstance(shard, CleanShard):
                if not shard.n_products:
                    continue
                products = shard.products(None if columns is None
                                          else list(dict.fromkeys(["id", *columns])))
            else:
                products = shard.products if columns is None else shard.products[
                    list(dict.fromkeys(["id", *columns]))]
            products = products.assign(split=products["id"].map(self._split).to_numpy())
            if split is not None:
                products = products[products["split"] == split].reset_index(drop=True)
            if len(products):
                yield products

    def sample_ids(self, n: int, seed: int, ids: pd.Series | None = None) -> set | None:
        """A seeded sample of ``n`` of ``ids`` (default: every listing's, in id order); None:
        there are no more than ``n``."""
        ids = self.plan.listings["id"] if ids is None else ids
        if len(ids) <= n:
            return None
        return set(ids.sample(n, random_state=seed))

    def gathered(self, split: str | None = None, ids: set | None = None,
                 lazy: bool = False) -> CleanData:
        """(``split`` of) the catalogue as one CleanData in id order, pixels in memory: for
        work that needs it whole, on a part of the catalogue that is small; ``ids``: only
        these listings (a sample). ``lazy``: its pixels a ``GatheredPixels`` that reads the
        photos from their shards when indexed (for work that reads a sample of the photos:
        the drift summaries), so memory does not grow with the listings gathered."""
        parts = []
        for part in self.parts(split):        # each shard cut down before the next is read
            part = _only(part, set(part.products["id"]) if ids is None else ids, copy=not lazy)
            if len(part.products):
                parts.append(part)
        if not parts:
            size = self.image_size
            return CleanData(pd.DataFrame(columns=self.plan.listings.columns.tolist() + ["text"]),
                             pd.DataFrame(columns=["id", "product_id", "row", "category", "split"]),
                             np.zeros((0, size, size, 3), np.uint8), summary=self.summary,
                             source=self.source)
        products, images, pixels = in_id_order(parts, lazy)
        thumbnails = pd.concat([p.thumbnails for p in parts], ignore_index=True)
        return CleanData(products, images, pixels, [], thumbnails.sort_values(
            "product_id", ignore_index=True), self.summary, self.source)


def plan_of(shards: Sequence[CleanShard | CleanData]) -> CleanPlan:
    """The plan of shards whose split column stands as it is (no re-deal), with the rows
    they refused."""
    frames, refused, summary, source = [], [], {}, {}
    for shard in shards:
        data = shard.data() if isinstance(shard, CleanShard) else shard
        refused += list(data.quarantine)
        if len(data.products):
            frames.append(data.products[[c for c in PLAN_COLUMNS if c in data.products]])
        summary = summary or dict(data.summary)
        source = source or dict(data.source)
        if "image_size" not in summary and data.pixels.ndim == 4:
            summary["image_size"] = int(data.pixels.shape[1])
    listings = (pd.concat(frames, ignore_index=True).sort_values("id", ignore_index=True)
                if frames else pd.DataFrame(columns=PLAN_COLUMNS))
    summary.setdefault("labels", sorted(listings["category"].unique()))
    return CleanPlan(listings, refused, summary, source)


def in_id_order(parts: list[CleanData], lazy: bool = False
                ) -> tuple[pd.DataFrame, pd.DataFrame, "np.ndarray | GatheredPixels"]:
    """The parts' listings in id order, their photos in their listings' order (each listing's
    in the order it had), and the pixels filled in that order (``lazy``: a GatheredPixels
    that reads them in that order when indexed): the same data whatever the shard layout."""
    products = pd.concat([p.products for p in parts], ignore_index=True)
    products = products.sort_values("id", kind="stable", ignore_index=True)
    rank = pd.Series(np.arange(len(products)), index=products["id"])
    images = pd.concat([p.images.assign(_part=i) for i, p in enumerate(parts)], ignore_index=True)
    images = images.assign(_rank=images["product_id"].map(rank).to_numpy())
    images = images.sort_values(["_rank", "_part", "row"], kind="stable", ignore_index=True)
    which, rows = images["_part"].to_numpy(), images["row"].to_numpy().astype(np.int64)
    pixels = GatheredPixels([p.pixels for p in parts], which, rows)
    if not lazy:
        pixels = pixels[:]
    images = images.drop(columns=["_rank", "_part"]).assign(row=np.arange(len(images)))
    return products, images, pixels


def _only(part: CleanData, ids: set, copy: bool = True) -> CleanData:
    """``part`` with only the listings in ``ids``, their photo rows and thumbnails, and only
    their pixels, copied out of the shard's memory map (so the map, and the pages the kernel
    read ahead into it, go with the shard). ``copy=False``: the pixels stay the shard's (a
    memory map) and ``row`` still indexes them."""
    products = part.products[part.products["id"].isin(ids)].reset_index(drop=True)
    images = part.images[part.images["product_id"].isin(ids)].reset_index(drop=True)
    thumbs = part.thumbnails[part.thumbnails["product_id"].isin(ids)].reset_index(drop=True)
    pixels = part.pixels
    if copy:
        pixels = np.array(part.pixels[images["row"].to_numpy().astype(int)])
        images = images.assign(row=np.arange(len(images)))
    return CleanData(products, images, pixels, [], thumbs, part.summary, part.source)


class GatheredPixels:
    """The pixels of a gathered sample left in their shards: photo ``i`` is row ``rows[i]`` of
    ``sources[which[i]]`` (a shard's memory-mapped pixels). Indexing it (an int, a slice or
    an array of rows) reads those photos, shard by shard in file order, into a new uint8
    array, through a memory map opened for that read; nothing else is held, so what the
    caller keeps is what it indexed."""

    dtype = np.dtype(np.uint8)

    def __init__(self, sources: Sequence[np.ndarray], which: np.ndarray, rows: np.ndarray):
        self._sources, self._which, self._rows = list(sources), which, rows
        tail = sources[0].shape[1:] if len(sources) else ()
        self.shape = (len(rows), *tail)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        picked = np.arange(len(self))[key]
        if np.ndim(picked) == 0:
            return self[np.array([picked])][0]
        out = np.empty((len(picked), *self.shape[1:]), np.uint8)
        which, rows = self._which[picked], self._rows[picked]
        for source in np.unique(which):
            mine = np.flatnonzero(which == source)
            mine = mine[np.argsort(rows[mine], kind="stable")]
            pixels = self._sources[source]
            if isinstance(pixels, np.memmap) and pixels.filename:
                # a map opened for this read alone: the pages it reads go when it does
                pixels = np.load(pixels.filename, mmap_mode="r")
            out[mine] = pixels[rows[mine]]
            del pixels
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)
