"""ingest -> validate -> clean on the small fixture, including malformed input."""
import csv
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from marketsearch import shards, snapshot
from marketsearch.cleaning import split_by_id
from marketsearch.components.clean import clean, load_db
from marketsearch.components.ingest import ingest
from marketsearch.components.validate import ValidationError, validate
from marketsearch.records import CleanData, Snapshot, ValidatedData

from .conftest import FIXTURE, make_cfg


def run_data_stages(cfg, tmp_path):
    """ingest -> validate -> clean -> load_db, each record saved and read back in between, as
    the pipeline hands them over."""
    raw, val, cln = tmp_path / "raw", tmp_path / "validated", tmp_path / "clean"
    ingest(cfg).save(raw)
    validate(cfg, Snapshot.load(raw)).save(val)
    clean(cfg, ValidatedData.load(val)).save(cln)
    data = CleanData.load(cln)
    load_db(cfg, data)
    return (Snapshot.load(raw).manifest, ValidatedData.load(val).report_data, data.summary, data)


def _rewrite_csv(path, mutate):
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    fields = list(rows[0].keys())
    rows = mutate(rows) or rows
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows)


def test_ingest_writes_snapshot_with_stable_hash(tmp_path):
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_rows": 10})
    ingest(cfg).save(tmp_path / "a")
    first, second = Snapshot.load(tmp_path / "a").manifest, ingest(cfg).manifest
    n_products = len(pd.read_csv(FIXTURE / "products.csv", dtype=str))
    assert first["n_products"] == n_products
    assert first["content_hash"] == second["content_hash"]
    images = Snapshot.load(tmp_path / "a").images
    assert images["data"].map(len).gt(0).all()
    assert (images["sha256"].str.len() == 64).all()
    # in shards of at most data.shard_rows listings, each with its photos, hashed each
    entries = first["shards"]
    assert len(entries) >= n_products // 10
    assert sum(e["n_products"] for e in entries) == n_products
    assert all(e["n_products"] <= cfg.data.shard_rows for e in entries)
    for entry in entries:
        listings, photos = shards.read(tmp_path / "a", entry)
        assert set(photos["product_id"]) <= set(listings["id"])
        assert snapshot.content_hash(listings, photos) == entry["content_hash"]


def test_ingest_hash_changes_with_content(cfg, data_copy, tmp_path):
    _rewrite_csv(data_copy / "products.csv", lambda rows: rows[0].update(price="£999.00"))
    changed = ingest(make_cfg(tmp_path, data_copy)).manifest
    assert changed["content_hash"] != ingest(cfg).manifest["content_hash"]


def test_clean_data_end_to_end(cfg, tmp_path):
    manifest, report, summary, data = run_data_stages(cfg, tmp_path)
    assert report["n_products_quarantined"] == 0 and report["n_images_quarantined"] == 0
    assert len(data.products) + summary["n_products_quarantined"] == manifest["n_products"]
    p = data.products.set_index("id")
    assert not p["title"].str.contains("Gumtree").any()
    assert p["price"].dtype == float and (p["price"] >= 0).all()
    assert set(p["category"]) == set(summary["labels"]) and len(summary["labels"]) == 13
    assert p["lat"].notna().mean() > 0.9 and p["lat"].dropna().between(49, 61).all()
    assert data.pixels.shape == (len(data.images), cfg.clean.image_size, cfg.clean.image_size, 3) and data.pixels.dtype == np.uint8
    # each photo has its listing's split and category
    joined = data.images.merge(p[["split", "category"]], left_on="product_id", right_index=True,
                               suffixes=("", "_listing"))
    assert (joined["split"] == joined["split_listing"]).all()
    assert (joined["category"] == joined["category_listing"]).all()
    assert set(data.products["split"]) == {"train", "val", "test"}
    # the database holds exactly the clean rows
    with sqlite3.connect(cfg.database_url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("select count(*) from listings").fetchone()[0] == len(data.products)
        assert conn.execute("select count(*) from listing_photos").fetchone()[0] == len(data.images)


def test_load_db_rerun_changes_nothing_in_db(cfg, tmp_path):
    """load_db is never cached, so it runs on every pipeline run: a rerun on the same clean data
    must write nothing new."""
    *_, data = run_data_stages(cfg, tmp_path)
    again = load_db(cfg, data)
    assert again["products"]["inserted"] == 0
    assert again["products"]["updated"] == 0
    assert again["images"]["inserted"] == 0 and again["images"]["updated"] == 0


def test_malformed_input_is_quarantined_with_reasons(data_copy, tmp_path):
    """Broken prices, a missing id, a duplicate id, a photo that does not decode, a photo of an
    unknown listing, a price outlier: the run completes and every bad row is accounted for."""
    products = list(csv.DictReader(open(data_copy / "products.csv", newline="", encoding="utf-8")))
    images = list(csv.DictReader(open(data_copy / "images.csv", newline="", encoding="utf-8")))
    broken_price, no_id, outlier = products[0]["id"], products[1]["id"], products[2]["id"]
    dup = products[3]

    def mutate_products(rows):
        rows[0]["price"] = "twenty quid"
        rows[1]["id"] = ""
        rows[2]["price"] = "£9,999,999.00"
        rows.append(dict(dup, product_name="Copy | in Leeds, West Yorkshire | Gumtree"))
    _rewrite_csv(data_copy / "products.csv", mutate_products)

    good_photo = next(r for r in images if r["product_id"] not in {broken_price, no_id, outlier})
    (data_copy / "images" / f"{good_photo['id']}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")

    def mutate_images(rows):
        rows.append(dict(rows[-1], id="orphan-photo", product_id="no-such-listing"))
    _rewrite_csv(data_copy / "images.csv", mutate_images)
    (data_copy / "images" / "orphan-photo.jpg").write_bytes(
        (FIXTURE / "images" / f"{images[-1]['id']}.jpg").read_bytes())

    cfg = make_cfg(tmp_path, data_copy, validate={"max_bad_fraction": 0.5})
    manifest, report, summary, data = run_data_stages(cfg, tmp_path)
    q = pd.concat([snapshot.read_table(tmp_path / "validated", "quarantine"),
                   snapshot.read_table(tmp_path / "clean", "quarantine")])

    def reason(table, row_id):
        hits = q[(q["table"] == table) & (q["row_id"] == row_id)]
        assert len(hits) >= 1, f"{table} {row_id} not in quarantine:\n{q[['table', 'row_id', 'reason']]}"
        return " | ".join(hits["reason"])

    assert "price is not a number" in reason("products", broken_price)
    assert "listing id is missing" in reason("products", "(missing)")
    assert "duplicate listing id" in reason("products", dup["id"])
    assert "price outlier" in reason("products", outlier)
    assert "does not decode" in reason("images", good_photo["id"])
    assert "unknown or quarantined listing" in reason("images", "orphan-photo")
    # photos of the broken listings are quarantined as such, not silently dropped
    for r in images:
        if r["product_id"] in {broken_price, no_id}:
            assert "quarantined listing" in reason("images", r["id"])
        if r["product_id"] == outlier:
            assert "listing removed" in reason("images", r["id"])
    # the raw row is kept with the reason
    raw = json.loads(q[q["row_id"] == broken_price].iloc[0]["raw"])
    assert raw["price"] == "twenty quid"
    # nothing else is lost
    assert len(data.products) + (q["table"] == "products").sum() == manifest["n_products"]
    assert len(data.images) + (q["table"] == "images").sum() == manifest["n_images"]
    assert dup["id"] in set(data.products["id"])  # the first occurrence is kept
    assert len(data.products) == manifest["n_products"] - 4


def test_missing_column_is_critical(data_copy, tmp_path):
    df = pd.read_csv(data_copy / "products.csv", dtype=str, keep_default_na=False)
    df.drop(columns=["price"]).to_csv(data_copy / "products.csv", index=False, quoting=csv.QUOTE_ALL)
    cfg = make_cfg(tmp_path, data_copy)
    with pytest.raises(ValidationError, match="lacks column.*price") as failed:
        validate(cfg, ingest(cfg))
    failed.value.record.save(tmp_path / "validated")   # what the stage's wrapper saves
    assert "price" in (tmp_path / "validated" / "report.md").read_text()


def test_too_many_bad_rows_is_critical(data_copy, tmp_path):
    _rewrite_csv(data_copy / "products.csv",
                 lambda rows: [r.update(price="n/a") for r in rows[: len(rows) // 2]] and None)
    cfg = make_cfg(tmp_path, data_copy)
    with pytest.raises(ValidationError, match="failed validation"):
        validate(cfg, ingest(cfg))


def test_split_is_seeded_order_free_and_proportional():
    ids = pd.Series([f"id{i:05d}" for i in range(10_000)])
    labels = pd.Series(np.repeat(list("abcde"), 2_000))
    fr = {"train": 0.75, "val": 0.10, "test": 0.15}
    a, b = split_by_id(ids, labels, fr, 1), split_by_id(ids, labels, fr, 1)
    assert (a == b).all()
    assert (a != split_by_id(ids, labels, fr, 2)).mean() > 0.2
    for _, part in a.groupby(labels):
        share = part.value_counts(normalize=True)
        # binomial noise at n=2000: sd 0.8 points for test, 0.7 for val
        assert abs(share["test"] - 0.15) < 0.03 and abs(share["val"] - 0.10) < 0.03
    # order of the input does not change the assignment
    shuffled = split_by_id(ids[::-1], labels[::-1], fr, 1)
    assert (shuffled.sort_index() == a).all()


def test_split_does_not_re_deal_old_listings_when_data_grows():
    """The champion is scored on today's test split: none of it may be yesterday's train split."""
    fr = {"train": 0.75, "val": 0.10, "test": 0.15}
    rng = np.random.default_rng(0)
    ids = pd.Series([f"L{i}" for i in range(3_000)])
    labels = pd.Series(rng.choice(list("abcdefgh"), size=3_000))
    before = split_by_id(ids[:2_000], labels[:2_000], fr, 7)
    after = split_by_id(ids, labels, fr, 7)
    assert (before == after.iloc[:2_000]).all()
    # the new listings are dealt in proportion too
    share = after.iloc[2_000:].value_counts(normalize=True)
    assert abs(share["test"] - 0.15) < 0.04 and abs(share["val"] - 0.10) < 0.04


def test_small_labels_keep_a_test_and_a_val_listing():
    fr = {"train": 0.75, "val": 0.10, "test": 0.15}
    for seed in range(20):
        ids = pd.Series([f"s{seed}-{i}" for i in range(2 + 3 + 4 + 200)])
        labels = pd.Series(["two"] * 2 + ["three"] * 3 + ["four"] * 4 + ["big"] * 200)
        counts = split_by_id(ids, labels, fr, seed).groupby(labels).value_counts().unstack(fill_value=0)
        assert counts.loc["two"].to_dict() == {"test": 0, "train": 2, "val": 0}
        assert counts.loc["three"].to_dict() == {"test": 1, "train": 2, "val": 0}
        assert counts.loc["four"].to_dict() == {"test": 1, "train": 2, "val": 1}
