"""clean: typed listings and square RGB photos, outliers out, split by listing, upserted to the DB.

The transformation itself (``clean_frames``) is shared with ``marketsearch evaluate`` and the
server, so a listing is cleaned the same way wherever it is seen.
"""

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from marketsearch import quarantine, snapshot
from marketsearch.config import Config
from marketsearch.schema import CLEAN_IMAGE_COLUMNS, CLEAN_PRODUCT_COLUMNS, SPLITS

log = logging.getLogger(__name__)
PIXELS_FILE = "images_uint8.npy"
THUMBS_TABLE = "thumbnails"


@dataclass
class CleanData:
    products: pd.DataFrame
    images: pd.DataFrame
    pixels: np.ndarray  # uint8 [n_images, size, size, 3], row i belongs to images.row == i
    quarantine: list[dict] = field(default_factory=list)
    # One JPEG per listing (its first photo) for the search page: columns product_id, jpeg.
    thumbnails: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"product_id": [], "jpeg": []}))

    @property
    def labels(self) -> list[str]:
        return sorted(self.products["category"].unique())

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        snapshot.write_tables(out_dir, products=self.products, images=self.images,
                              quarantine=quarantine.frame(self.quarantine),
                              **{THUMBS_TABLE: self.thumbnails})
        np.save(out_dir / PIXELS_FILE, self.pixels)

    @classmethod
    def load(cls, directory: str | Path) -> "CleanData":
        q = snapshot.read_table(directory, "quarantine")
        thumbs = (snapshot.read_table(directory, THUMBS_TABLE)
                  if (Path(directory) / f"{THUMBS_TABLE}.parquet").exists() else None)
        data = cls(snapshot.read_table(directory, "products"), snapshot.read_table(directory, "images"),
                   np.load(Path(directory) / PIXELS_FILE), q.to_dict("records"))
        if thumbs is not None:
            data.thumbnails = thumbs
        return data


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


def clean(cfg: Config, validated_dir: str | Path, out_dir: str | Path) -> dict:
    """Clean the validated snapshot, write it to ``out_dir`` and upsert it into the database."""
    from marketsearch import db

    products = snapshot.read_table(validated_dir, "products")
    images = snapshot.read_table(validated_dir, "images")
    data = clean_frames(products, images, cfg)
    data.save(out_dir)
    if cfg.database_url.startswith("sqlite:///"):
        Path(cfg.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upsert = db.upsert_clean(cfg.database_url, data.products,
                             data.images.drop(columns=["row"]))
    q = quarantine.frame(data.quarantine)
    summary = {
        "n_products_in": len(products), "n_images_in": len(images),
        "n_products": len(data.products), "n_images": len(data.images),
        "n_products_quarantined": int((q["table"] == "products").sum()),
        "n_images_quarantined": int((q["table"] == "images").sum()),
        "n_geocoded": int(data.products["lat"].notna().sum()),
        "splits": {s: int((data.products["split"] == s).sum()) for s in SPLITS},
        "labels": data.labels, "image_size": int(data.pixels.shape[1]), "upsert": upsert,
        "quarantine_reasons": quarantine.summary(q),
    }
    snapshot.write_json(out_dir, "summary.json", summary)
    log.info("clean: %d listings (%d geocoded), %d photos; quarantined %d listings, %d photos; db %s",
             summary["n_products"], summary["n_geocoded"], summary["n_images"],
             summary["n_products_quarantined"], summary["n_images_quarantined"], upsert)
    return summary


def clean_component(config_json: str, parent_run_id: str, validated: dsl.Input[dsl.Dataset],
                    clean_data: dsl.Output[dsl.Dataset], plots: dsl.Output[dsl.HTML]):
    """KFP: clean + upsert; logs the price, category and UK-map plots."""
    from pathlib import Path

    import mlflow

    from marketsearch import plots as plotting
    from marketsearch import tracking
    from marketsearch.components.clean import CleanData, clean
    from marketsearch.config import Config
    from marketsearch.reports import html_page

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "clean"):
        mlflow.log_params(tracking.flatten(cfg.clean.model_dump(exclude={"database_url"}), "clean."))
        summary = clean(cfg, validated.path, clean_data.path)
        tracking.log_numbers({k: v for k, v in summary.items() if k.startswith("n_") or k == "splits"})
        mlflow.log_dict(summary, "clean_summary.json")
        data = CleanData.load(clean_data.path)
        fig_dir = Path(clean_data.path) / "plots"
        fig_dir.mkdir(exist_ok=True)
        pngs = [
            plotting.price_distribution_png(data.products["price"].to_numpy(), fig_dir / "price_distribution.png"),
            plotting.category_counts_png(data.products["category"].tolist(), fig_dir / "category_counts.png"),
            plotting.uk_map_png(data.products["lat"].to_numpy(), data.products["lon"].to_numpy(),
                                fig_dir / "uk_map.png", categories=data.products["category"].tolist()),
        ]
        for png in pngs:
            mlflow.log_artifact(str(png), "plots")
        Path(plots.path).write_text(html_page("Clean data", pngs, summary))
    clean_data.metadata.update({k: v for k, v in summary.items() if k.startswith("n_")})
