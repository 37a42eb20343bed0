"""clean: typed listings and square RGB photos, outliers out, split by listing (cached);
load_db: the clean listings upserted into the database (never cached).

The database write is its own stage because it is a side effect outside the artifacts: were
it part of clean, a cache hit on clean would silently skip it. load_db is never cached and
its upsert is idempotent (keyed by listing and photo id), so it runs every time and writes
the same rows the same way. The cleaning itself is marketsearch.cleaning.clean_frames.
"""

import logging
from pathlib import Path

from marketsearch import quarantine
from marketsearch.cleaning import clean_frames
from marketsearch.config import Config
from marketsearch.records import CleanData, CleanPlan, CleanShard, ValidatedData
from marketsearch.schema import SPLITS
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("clean", "seed"), inputs={"validated": ValidatedData},
      output=("clean_data", CleanData), views={"plots": "HTML"})
def clean(cfg: Config, validated: ValidatedData) -> CleanData:
    """Clean the validated snapshot: listings, photos, thumbnails, a fixed split by listing id,
    and the rows refused with their reason."""
    validated = ValidatedData.coerce(validated)
    products, images = validated.products, validated.images
    data = clean_frames(products, images, cfg)
    data.source = validated.source
    data.summary = summarize(data, {k: v for k, v in validated.report_data.items()
                                    if k.startswith("n_")})
    log.info("clean: %s", data.headline())
    return data


def summarize(data: CleanData, validated: dict) -> dict:
    """clean's summary of ``data``: counts (what came in is what validation passed, whose
    counts are ``validated``), splits, labels and the reasons rows were refused; the
    quarantine counts are clean's own (validate's rows have stage "validate")."""
    return summary_of(data.products, len(data.images), int(data.pixels.shape[1]),
                      data.quarantine, validated)


def summary_of(products, n_images: int, image_size: int, refused: list[dict],
               validated: dict) -> dict:
    """``summarize`` from the listings (id, category, split, lat), the photo count and size
    and the refused rows: what gather_clean has of the whole catalogue."""
    q = quarantine.frame(refused)
    q = q[q["stage"] == "clean"]
    return {
        "n_products_in": int(validated.get("n_products_valid", len(products))),
        "n_images_in": int(validated.get("n_images_valid", n_images)),
        "n_products": len(products), "n_images": int(n_images),
        "n_products_quarantined": int((q["table"] == "products").sum()),
        "n_images_quarantined": int((q["table"] == "images").sum()),
        "n_geocoded": int(products["lat"].notna().sum()),
        "splits": {s: int((products["split"] == s).sum()) for s in SPLITS},
        "labels": sorted(products["category"].unique()), "image_size": int(image_size),
        "quarantine_reasons": quarantine.summary(q),
        "validated": validated,
    }


@step(reads=("clean", "data"), inputs={"clean_data": [CleanShard], "plan": CleanPlan},
      cached=False)
def load_db(cfg: Config, clean_data, plan: CleanPlan | None = None) -> dict:
    """Upsert the clean listings and photos into the database shard by shard, a transaction
    per at most ``data.shard_rows`` listings (marketsearch.db); returns the row counts.
    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData."""
    from marketsearch import db
    from marketsearch.catalogue import CleanCatalogue

    catalogue = CleanCatalogue.of(clean_data, plan)
    if cfg.database_url.startswith("sqlite:///"):
        Path(cfg.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upsert = db.upsert_parts(cfg.database_url, (
        (name, products, images.drop(columns=["row"]))
        for name, products, images in catalogue.table_parts()), cfg.data.shard_rows)
    log.info("load_db: %s", upsert)
    return upsert
