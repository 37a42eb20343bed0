"""The training DAG's data fan-out: each shard of the raw snapshot validated and cleaned in a
task of its own (``prepare_shard``, under ``dsl.ParallelFor``), then the clean shards' plan made
(``gather_clean``, from ``dsl.Collected``): the stages after read the shards themselves, one at
a time, with that plan (marketsearch.catalogue).

prepare_shard runs the same functions as the validate and clean stages, on one shard. A shard
with a critical problem (a required column missing, more bad rows than
``validate.max_bad_fraction``, no listings) is quarantined whole, every row with the reason,
and the other shards go on; gather_clean then checks the bad fraction over the whole
catalogue. A shard whose content, config and code are those of an earlier run is not
processed again: its clean data comes from the shard cache (``data.shard_cache``, keyed by
all three), the way photo features come from theirs. The cache is a local directory or an
s3://bucket/prefix (``marketsearch.blobstore``; on EKS the data bucket, since a pod's disk does
not outlive it): an entry is whole or absent, and one without its summary.json is not trusted.

gather_clean deals the splits over the whole catalogue (``cleaning.split_by_id``: a small
label is dealt by rank across all its listings, not within a shard), so the split is the
one a single clean stage would give whatever the shard layout. It reads the shards'
listing columns (id, category, price, location) and summaries, never a photo or a text.
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd

from marketsearch import blobstore, quarantine
from marketsearch.config import Config
from marketsearch.records import CleanData, CleanPlan, CleanShard, Snapshot, SnapshotShards
from marketsearch.records.data import PLAN_COLUMNS
from marketsearch.steps import step

log = logging.getLogger(__name__)


def _cache_key(cfg: Config, shard: dict) -> str:
    from marketsearch.steps.kfp import code_version

    what = {"shard": shard["content_hash"], "validate": cfg.validate_.model_dump(mode="json"),
            "clean": cfg.clean.model_dump(mode="json"), "seed": cfg.seed, "code": code_version()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


# A cache entry is trusted only with this file: CleanData.save writes it, and an S3 entry has it
# uploaded last (blobstore.S3Store.writing_tree).
ENTRY_MARKER = "summary.json"


def _cache(cfg: Config):
    """The shard cache's store (``data.shard_cache``; S3 at ``data.s3_endpoint_url``), or None."""
    where = blobstore.location(cfg, cfg.data.shard_cache)
    return blobstore.open_store(where, cfg.data.s3_endpoint_url) if where else None


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

    cache = _cache(cfg)
    key = _cache_key(cfg, shard)
    cached = _lookup(cache, key) if cache is not None else None
    if cached is not None:
        log.info("prepare_shard: %s unchanged since an earlier run: from the shard cache %s",
                 shard["name"], cache.uri)
        return cached
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


def _lookup(cache, key: str) -> CleanData | None:
    """The shard cache's entry ``key``, or None where it is absent or has no summary.json (its
    writer stopped midway). An S3 entry is downloaded to a scratch folder and read whole."""
    with cache.reading_tree(key, ENTRY_MARKER) as entry:
        if entry is None:
            return None
        data = CleanData.load(entry)
    data.summary = dict(data.summary, from_cache=True)
    return data


def _store(data: CleanData, cache, key: str) -> None:
    """Save into the shard cache whole or not at all: a local entry is written beside, then
    renamed in; an S3 entry's files are uploaded with summary.json last. Two writers of one
    key: the first complete entry wins (locally the second copy is dropped, on S3 a writer
    that finds summary.json uploads nothing; two that race before either is complete both
    upload, the last upload of a file winning). Either is fine: entries of one key are the
    same clean data."""
    with cache.writing_tree(key, ENTRY_MARKER) as staged:
        data.save(staged)


@step(reads=("validate", "clean", "seed"), inputs={"clean_shards": [CleanShard]},
      output=("plan", CleanPlan), views={"plots": "HTML"})
def gather_clean(cfg: Config, clean_shards: list) -> CleanPlan:
    """The plan of the clean shards (records.CleanPlan): every listing's split, dealt over
    the whole catalogue, and the catalogue's counts, read from the shards' listing columns
    and summaries; no photo or text is read. Raises ValidationError when more of the
    catalogue than ``validate.max_bad_fraction`` failed validation."""
    from marketsearch.catalogue import _shard
    from marketsearch.cleaning import split_by_id
    from marketsearch.components.clean import summary_of
    from marketsearch.components.validate import ValidationError

    shards = [_shard(p) for p in clean_shards]
    summaries = [s.summary for s in shards]
    parts = [s for s in shards if _n_listings(s)]
    if not parts:
        reasons = {s.get("shard"): s.get("quarantined_whole") for s in summaries}
        raise ValidationError(f"no shard has a clean listing: {reasons}", None)
    sizes = {s.summary.get("image_size") for s in parts}
    if len(sizes) > 1:
        raise ValueError(f"clean shards have photos of different sizes {sorted(sizes)}: "
                         "they were cleaned with different clean.image_size")
    columns = [c for c in PLAN_COLUMNS if c != "split"]
    listings = pd.concat([_listing_columns(s, columns) for s in parts], ignore_index=True)
    listings = listings.sort_values("id", kind="stable", ignore_index=True)
    listings.insert(1, "split", split_by_id(listings["id"], listings["category"],
                                            cfg.clean.split.model_dump(), cfg.seed).to_numpy())
    refused = [r for s in shards for r in _refused(s)]
    validated: dict = {}
    for summary in summaries:
        for k, v in summary.get("validated", {}).items():
            validated[k] = validated.get(k, 0) + v
    summary = summary_of(listings, sum(int(s.summary.get("n_images", 0)) for s in parts),
                         sizes.pop(), refused, validated)
    summary["shards"] = {"n": len(shards),
                         "from_cache": sum(bool(s.get("from_cache")) for s in summaries),
                         "quarantined_whole": {s["shard"]: s["quarantined_whole"]
                                               for s in summaries if s.get("quarantined_whole")}}
    plan = CleanPlan(listings, refused, summary, _source(parts[0]))
    _check_bad_fraction(cfg, validated)
    log.info("gather_clean: %s", plan.headline())
    return plan


def _n_listings(shard) -> int:
    return shard.n_products if isinstance(shard, CleanShard) else len(shard.products)


def _listing_columns(shard, columns: list[str]) -> pd.DataFrame:
    return (shard.products(columns) if isinstance(shard, CleanShard)
            else shard.products[columns])


def _refused(shard) -> list[dict]:
    return shard.quarantine() if isinstance(shard, CleanShard) else list(shard.quarantine)


def _source(shard) -> dict:
    if isinstance(shard, CleanData):
        return shard.source
    path = shard.directory / "source.json"
    return json.loads(path.read_text()) if path.exists() else {}


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
