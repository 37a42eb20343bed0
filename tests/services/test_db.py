"""Idempotent upsert of the clean catalogue into SQLite and a real Postgres."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from marketsearch.db import LISTINGS, PHOTOS, read_table, upsert_clean
from marketsearch.geo import get_gazetteer
from marketsearch.schema import CLEAN_IMAGE_COLUMNS, CLEAN_PRODUCT_COLUMNS, SPLITS
from marketsearch.sources import read_local
from marketsearch.text import clean_title, listing_text, parse_price, root_category


@pytest.fixture(scope="module")
def clean_frames(fixture_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean-stage-shaped frames built from the fixture (enough for the database's sake)."""
    raw = read_local(fixture_dir)
    p = raw.products
    coords = get_gazetteer(500).lookup_many(p["location"].tolist())
    coords[:3] = np.nan                                   # some listings without lat/lon
    products = pd.DataFrame({
        "id": p["id"],
        "title": p["product_name"].map(clean_title),
        "description": p["product_description"],
        "text": [listing_text(t, d) for t, d in zip(p["product_name"], p["product_description"])],
        "price": p["price"].map(parse_price).astype(float),
        "category": p["category"].map(root_category),
        "category_path": p["category"],
        "location": p["location"],
        "lat": coords[:, 0],
        "lon": coords[:, 1],
        "split": [SPLITS[i % 3] for i in range(len(p))],
    })[CLEAN_PRODUCT_COLUMNS]
    split_of = dict(zip(products["id"], products["split"]))
    category_of = dict(zip(products["id"], products["category"]))
    images = pd.DataFrame({
        "id": raw.images["id"],
        "product_id": raw.images["product_id"],
        "row": np.arange(len(raw.images)),
        "category": raw.images["product_id"].map(category_of),
        "split": raw.images["product_id"].map(split_of),
    })[CLEAN_IMAGE_COLUMNS]
    return products, images


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+psycopg2"])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'marketsearch.db'}"
    url = request.getfixturevalue("postgres_db_url")
    return url.replace("postgresql://", f"{request.param}://")


def snapshot(url: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_table(url, LISTINGS), read_table(url, PHOTOS)


def test_upsert_inserts_then_changes_nothing_then_updates_one(db_url, clean_frames):
    products, images = clean_frames
    first = upsert_clean(db_url, products, images)
    assert first == {"products": {"inserted": 52, "updated": 0, "unchanged": 0},
                     "images": {"inserted": 65, "updated": 0, "unchanged": 0}}
    before = snapshot(db_url)
    assert len(before[0]) == 52 and len(before[1]) == 65
    assert list(before[0].columns) == CLEAN_PRODUCT_COLUMNS
    assert list(before[1].columns) == [c for c in CLEAN_IMAGE_COLUMNS if c != "row"]
    stored = before[0].set_index("id").loc[products["id"]]
    np.testing.assert_array_equal(stored["price"].to_numpy(), products["price"].to_numpy())
    assert stored["lat"].isna().sum() == 3                           # NULL, not NaN or 0
    assert (stored["description"].to_numpy() == products["description"].to_numpy()).all()

    again = upsert_clean(db_url, products, images)
    assert again == {"products": {"inserted": 0, "updated": 0, "unchanged": 52},
                     "images": {"inserted": 0, "updated": 0, "unchanged": 65}}
    after = snapshot(db_url)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])

    changed = products.copy()
    changed.loc[changed.index[7], "price"] += 10.5
    third = upsert_clean(db_url, changed, images)
    assert third["products"] == {"inserted": 0, "updated": 1, "unchanged": 51}
    assert third["images"] == {"inserted": 0, "updated": 0, "unchanged": 65}
    stored = read_table(db_url, LISTINGS).set_index("id")
    assert stored.loc[changed["id"].iloc[7], "price"] == changed["price"].iloc[7]


def test_upsert_new_rows_and_null_changes(db_url, clean_frames):
    products, images = clean_frames
    upsert_clean(db_url, products.iloc[:40], images[images["product_id"].isin(products["id"][:40])])
    changed = products.copy()
    changed.loc[changed.index[5], "lat"] = np.nan                     # value -> NULL is a change
    changed.loc[changed.index[0], "lat"] = 51.5                       # NULL -> value too
    changed.loc[changed.index[1], "split"] = "test" if changed["split"].iloc[1] != "test" else "val"
    counts = upsert_clean(db_url, changed, images)
    assert counts["products"] == {"inserted": 12, "updated": 3, "unchanged": 37}
    assert counts["images"]["inserted"] == (~images["product_id"].isin(products["id"][:40])).sum()
    assert counts["images"]["updated"] == 0


def test_upsert_refuses_bad_input_and_writes_nothing(tmp_path: Path, clean_frames):
    products, images = clean_frames
    url = f"sqlite:///{tmp_path / 'm.db'}"
    orphan = images.copy()
    orphan.loc[orphan.index[0], "product_id"] = "no-such-listing"
    with pytest.raises(ValueError, match="no-such-listing"):
        upsert_clean(url, products, orphan)
    with pytest.raises(ValueError, match="price"):
        upsert_clean(url, products.drop(columns=["price"]), images)
    with pytest.raises(ValueError, match="duplicate"):
        upsert_clean(url, pd.concat([products, products.iloc[:1]]), images)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {LISTINGS}")).scalar() == 0
    engine.dispose()


def test_a_failure_half_way_through_the_transaction_writes_nothing(db_url, clean_frames,
                                                                   monkeypatch):
    """The listings are written, then writing the photos fails (the database refusing them,
    the connection dropping): the listings' changes are rolled back with them."""
    import marketsearch.db as db

    products, images = clean_frames
    upsert_clean(db_url, products, images)
    before = snapshot(db_url)
    changed = products.copy()
    changed["price"] = changed["price"] + 1.0
    real = db._upsert
    written = []

    def photos_fail(conn, table, rows):
        if table is db.photos_table:
            raise RuntimeError("connection lost while writing listing_photos")
        written.append(real(conn, table, rows))      # the listings really are written first
        return written[-1]

    monkeypatch.setattr(db, "_upsert", photos_fail)
    with pytest.raises(RuntimeError, match="connection lost"):
        upsert_clean(db_url, changed, images)
    assert written and written[0]["updated"] == len(products)   # inside the transaction
    after = snapshot(db_url)
    pd.testing.assert_frame_equal(before[0], after[0])          # ... and rolled back
    pd.testing.assert_frame_equal(before[1], after[1])


def test_upsert_catalogue_sized_batch(tmp_path: Path):
    """6k listings / 11k photos go through the batched statements; the re-run writes nothing.
    (No timed assertion: it takes well under a second here.)"""
    n, m = 6000, 11000
    rng = np.random.default_rng(0)
    products = pd.DataFrame({
        "id": [f"p{i:05d}" for i in range(n)], "title": "t", "description": "d" * 300,
        "text": "x" * 400, "price": rng.random(n) * 100, "category": "c",
        "category_path": "c / d", "location": "Leeds, West Yorkshire",
        "lat": np.where(rng.random(n) < 0.1, np.nan, 53.8), "lon": -1.55, "split": "train"})
    images = pd.DataFrame({"id": [f"i{i:05d}" for i in range(m)],
                           "product_id": [f"p{i % n:05d}" for i in range(m)],
                           "row": range(m), "category": "c", "split": "train"})
    url = f"sqlite:///{tmp_path / 'big.db'}"
    assert upsert_clean(url, products, images)["images"]["inserted"] == m
    again = upsert_clean(url, products, images)
    assert again["products"]["unchanged"] == n and again["images"]["unchanged"] == m


# --- shard by shard ----------------------------------------------------------------------
def test_shards_write_what_one_transaction_writes(db_url, clean_frames, tmp_path):
    """The same frames in shards of 7 listings: the same tables as one transaction, the same
    counts, and a re-run in shards writes nothing."""
    products, images = clean_frames
    one = f"sqlite:///{tmp_path / 'one.db'}"
    whole = upsert_clean(one, products, images)
    sharded = upsert_clean(db_url, products, images, shard_rows=7)
    assert sharded == whole
    for a, b in zip(snapshot(one), snapshot(db_url)):
        pd.testing.assert_frame_equal(a, b)
    again = upsert_clean(db_url, products, images, shard_rows=7)
    assert again["products"] == {"inserted": 0, "updated": 0, "unchanged": len(products)}
    assert again["images"] == {"inserted": 0, "updated": 0, "unchanged": len(images)}


def test_a_bad_shard_is_rolled_back_and_named_while_the_others_land(db_url, clean_frames):
    from marketsearch.db import ShardsFailed, shards_of, upsert_shards

    products, images = clean_frames
    shards = list(shards_of(products, images, 10))
    name, bad_products, bad_images = shards[1]
    bad_products = bad_products.copy()
    bad_products.loc[bad_products.index[0], "title"] = None      # a required value missing
    shards[1] = (name, bad_products, bad_images)
    with pytest.raises(ShardsFailed, match=rf"1 shard\(s\) not written.*{name}: products have "
                                           r"no title") as err:
        upsert_shards(db_url, shards)
    assert set(err.value.failed) == {name}
    listings, photos = snapshot(db_url)
    assert set(listings["id"]) == set(products["id"]) - set(bad_products["id"])
    assert set(photos["id"]) == set(images["id"]) - set(bad_images["id"])
    assert err.value.counts["products"]["inserted"] == len(products) - len(bad_products)


WRITER = """
import sys
import pandas as pd
from marketsearch.db import upsert_clean
url, products, images, shard_rows = sys.argv[1:]
upsert_clean(url, pd.read_parquet(products), pd.read_parquet(images), shard_rows=int(shard_rows))
"""


@pytest.mark.parametrize("point", ["db_mid_shard@3", "db_after_shard@2"])
def test_a_writer_killed_mid_way_then_rerun_leaves_the_tables_of_an_uninterrupted_run(
        postgres_db_url, clean_frames, tmp_path, point):
    """SIGKILL of the writer in the middle of a shard's transaction (the listings written, the
    photos not) and between two shards, on a real Postgres: only whole shards are left, and
    the re-run gives exactly the tables of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys

    from marketsearch.faults import CRASH_ENV

    products, images = clean_frames
    upsert_clean(postgres_db_url, products, images)                # uninterrupted
    expected = snapshot(postgres_db_url)
    engine = sa.create_engine(postgres_db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {PHOTOS}, {LISTINGS}"))
    engine.dispose()

    products.to_parquet(tmp_path / "p.parquet")
    images.to_parquet(tmp_path / "i.parquet")
    args = [sys.executable, "-c", WRITER, postgres_db_url, str(tmp_path / "p.parquet"),
            str(tmp_path / "i.parquet"), "10"]
    killed = subprocess.run(args, env={**os.environ, CRASH_ENV: point}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    listings, photos = snapshot(postgres_db_url)
    assert len(listings) == 20                          # two whole shards, nothing of the third
    assert set(photos["product_id"]) <= set(listings["id"])
    assert set(photos["id"]) == set(images[images["product_id"].isin(listings["id"])]["id"])

    rerun = subprocess.run(args, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    for a, b in zip(expected, snapshot(postgres_db_url)):
        pd.testing.assert_frame_equal(a, b)
