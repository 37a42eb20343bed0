"""The training DAG's data fan-out: each shard of the raw snapshot validated and cleaned in a
task of its own (``prepare_shard``, under ``dsl.ParallelFor``), then the clean shards gathered
(``gather_clean``, from ``dsl.Collected``) into the CleanData the trainers read.

prepare_shard runs the same functions as the validate and clean stages, on one shard. A shard
with a critical problem (a required column missing, more bad rows than
``validate.max_bad_fraction``, no listings) is quarantined whole, every row with the reason,
and the other shards go on; gather_clean then checks the bad fraction over the whole
catalogue. A shard whose content, config and code are those of an earlier run is not
processed again: its clean data comes from the shard cache (``data.shard_cache``, keyed by
all three), the way photo features come from theirs.

gather_clean deals the splits over the whole catalogue (``cleaning.split_by_id``: a small
label is dealt by rank across all its listings, not within a shard), so the split is the
one a single clean stage would give, and puts the listings in id order: the gathered data,
and so the models trained on it, do not depend on how the catalogue was sharded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from marketsearch import quarantine
from marketsearch.config import Config
from marketsearch.records import CleanData, Snapshot, SnapshotShards
from marketsearch.steps import step

log = logging.getLogger(__name__)


def _cache_key(cfg: Config, shard: dict) -> str:
    from marketsearch.steps.kfp import code_version

    what = {"shard": shard["content_hash"], "validate": cfg.validate_.model_dump(mode="json"),
            "clean": cfg.clean.model_dump(mode="json"), "seed": cfg.seed, "code": code_version()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cache_dir(cfg: Config) -> Path | None:
    return cfg.path(cfg.data.shard_cache) if cfg.data.shard_cache else None


def _without_listings(name: str, records: list[dict], validated: dict,
                      why: str | None = None) -> CleanData:
    """A shard's CleanData with no listing left: its refused rows, its validation counts, and
    ``why`` when the shard was quarantined whole."""
    data = CleanData(pd.DataFrame(columns=["id", "category", "split", "lat"]),
                     pd.DataFrame(columns=["id", "product_id", "row", "category", "split"]),
                     np.zeros((0, 1, 1, 3), np.uint8), records)
    data.summary = {"shard": name, "validated": validated}
    if why:
        data.summary["quarantined_whole"] = why
    return data


def _quarantined_whole(part: Snapshot, why: str) -> CleanData:
    """A shard that cannot go on: every row kept in quarantine with the reason."""
    name = part.manifest["shard"]["name"]
    records = [quarantine.record(table, row, "validate", "shard", f"shard {name}: {why}")
               for table, frame in (("products", part.products), ("images", part.images))
               for row in frame.to_dict("records")]
    counts = {"n_products": len(part.products), "n_images": len(part.images),
              "n_products_valid": 0, "n_images_valid": 0,
              "n_products_quarantined": len(part.products),
              "n_images_quarantined": len(part.images)}
    return _without_listings(name, records, counts, why)


@step(reads=("validate", "clean", "data", "seed"), inputs={"raw_snapshot": SnapshotShards},
      params={"shard": "dict"}, output=("clean_shard", CleanData))
def prepare_shard(cfg: Config, raw_snapshot: SnapshotShards, shard: dict) -> CleanData:
    """Validate and clean one shard (see the module docstring); its quarantine holds the rows
    either refused."""
    from marketsearch.components.clean import clean
    from marketsearch.components.validate import ValidationError, validate

    cache = _cache_dir(cfg)
    key = _cache_key(cfg, shard)
    if cache is not None and (cache / key / "summary.json").exists():
        log.info("prepare_shard: %s unchanged since an earlier run: from the shard cache",
                 shard["name"])
        data = CleanData.load(cache / key)
        data.summary = dict(data.summary, from_cache=True)
        return data
    part = raw_snapshot.shard(shard)
    try:
        validated = validate(cfg, part)
    except ValidationError as exc:
        log.error("prepare_shard: shard %s quarantined whole: %s", shard["name"], exc)
        return _quarantined_whole(part, str(exc))
    refused = validated.quarantine.to_dict("records")
    if len(validated.products):
        data = clean(cfg, validated)
        data.quarantine = refused + list(data.quarantine)
        data.summary = dict(data.summary, shard=shard["name"])
    else:                                    # every row refused, within max_bad_fraction
        data = _without_listings(shard["name"], refused, {
            k: v for k, v in validated.report_data.items() if k.startswith("n_")})
    if cache is not None:
        _store(data, cache, key)
    return data


def _store(data: CleanData, cache: Path, key: str) -> None:
    """Save into the shard cache whole or not at all (written beside, then renamed); a
    concurrent writer of the same key wins and this copy is dropped."""
    staged = cache / f".{key}-{uuid.uuid4().hex[:8]}"
    data.save(staged)
    if (cache / key).exists():
        shutil.rmtree(staged)
    else:
        staged.rename(cache / key)


@step(reads=("validate", "clean", "seed"), inputs={"clean_shards": [CleanData]},
      output=("clean_data", CleanData), views={"plots": "HTML"})
def gather_clean(cfg: Config, clean_shards: list[CleanData]) -> CleanData:
    """The clean shards as one CleanData: rows concatenated (photo rows renumbered), splits
    dealt over the whole catalogue, the summary recounted. Raises ValidationError when more
    of the catalogue than ``validate.max_bad_fraction`` failed validation."""
    from marketsearch.cleaning import split_by_id
    from marketsearch.components.clean import summarize
    from marketsearch.components.validate import ValidationError

    parts = [p for p in clean_shards if len(p.products)]
    if not parts:
        reasons = {p.summary.get("shard"): p.summary.get("quarantined_whole") for p in clean_shards}
        raise ValidationError(f"no shard has a clean listing: {reasons}", None)
    sizes = {p.pixels.shape[1:] for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"clean shards have photos of different sizes {sorted(sizes)}: "
                         "they were cleaned with different clean.image_size")
    products, images, pixels = _in_id_order(parts)
    products["split"] = split_by_id(products["id"], products["category"],
                                    cfg.clean.split.model_dump(), cfg.seed).to_numpy()
    images["split"] = images["product_id"].map(dict(zip(products["id"], products["split"])))
    thumbnails = pd.concat([p.thumbnails for p in parts], ignore_index=True)
    data = CleanData(products, images, pixels, [r for p in clean_shards for r in p.quarantine],
                     thumbnails.sort_values("product_id", ignore_index=True),
                     source=parts[0].source)
    validated = {}
    for part in clean_shards:
        for k, v in part.summary.get("validated", {}).items():
            validated[k] = validated.get(k, 0) + v
    data.summary = summarize(data, validated)
    data.summary["shards"] = {"n": len(clean_shards),
                              "from_cache": sum(bool(p.summary.get("from_cache"))
                                                for p in clean_shards),
                              "quarantined_whole": {p.summary["shard"]: p.summary["quarantined_whole"]
                                                    for p in clean_shards
                                                    if p.summary.get("quarantined_whole")}}
    _check_bad_fraction(cfg, validated)
    log.info("gather_clean: %s", data.headline())
    return data


def _in_id_order(parts: list[CleanData]) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The shards' listings in id order, their photos in their listings' order (each listing's
    in the order it had), and the pixels filled in that order: the same CleanData whatever
    the shard layout, so ``data.shard_rows`` never changes what is trained."""
    products = pd.concat([p.products for p in parts], ignore_index=True)
    products = products.sort_values("id", kind="stable", ignore_index=True)
    rank = pd.Series(np.arange(len(products)), index=products["id"])
    offsets = np.cumsum([0] + [len(p.pixels) for p in parts])
    images = pd.concat([p.images.assign(row=p.images["row"].astype(int) + int(o))
                        for p, o in zip(parts, offsets)], ignore_index=True)
    images = images.assign(_rank=images["product_id"].map(rank).to_numpy())
    images = images.sort_values(["_rank", "row"], kind="stable", ignore_index=True)
    pixels = np.empty((len(images), *parts[0].pixels.shape[1:]), dtype=np.uint8)
    source_rows = images["row"].to_numpy()
    for part, start, stop in zip(parts, offsets[:-1], offsets[1:]):
        mine = (source_rows >= start) & (source_rows < stop)
        pixels[np.flatnonzero(mine)] = part.pixels[source_rows[mine] - start]
    images = images.drop(columns=["_rank"]).assign(row=np.arange(len(images)))
    return products, images, pixels


def _check_bad_fraction(cfg: Config, counts: dict) -> None:
    from marketsearch.components.validate import ValidationError

    limit = cfg.validate_.max_bad_fraction
    problems = []
    for table, key in (("listings", "products"), ("photos", "images")):
        total = counts.get(f"n_{key}", 0)
        bad = total - counts.get(f"n_{key}_valid", 0)
        if total and bad / total > limit:
            problems.append(f"{bad} of {total} {table} failed validation "
                            f"({bad / total:.0%} > {limit:.0%} allowed)")
    if problems:
        raise ValidationError("; ".join(problems), None)
