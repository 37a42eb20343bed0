"""The catalogue in shards (marketsearch.shards): bounded, self-contained, stable as it grows."""
import numpy as np
import pandas as pd
import pytest

from marketsearch import shards
from marketsearch.records import Snapshot


def _catalogue(n: int, start: int = 0, photos_per_listing: int = 2):
    ids = [f"listing-{i:06d}" for i in range(start, start + n)]
    products = pd.DataFrame({"id": ids, "product_name": [f"thing {i}" for i in range(n)]})
    images = pd.DataFrame({"id": [f"{p}-photo-{k}" for p in ids for k in range(photos_per_listing)],
                           "product_id": [p for p in ids for _ in range(photos_per_listing)]})
    return products, images


def test_shards_are_bounded_and_each_listing_has_its_photos_in_its_shard():
    products, images = _catalogue(1000)
    parts = list(shards.assign(products, images, shard_rows=100))
    sizes = [len(p) for _, p, _ in parts]
    assert max(sizes) <= 100 and sum(sizes) == 1000
    assert min(sizes) >= 20              # split by hash bits: about half to all of the limit
    for _, p, i in parts:
        assert set(i["product_id"]) == set(p["id"])
        assert len(i) == 2 * len(p)
    names = [n for n, _, _ in parts]
    assert len(set(names)) == len(names) and all(n.startswith("shard-") for n in names)
    # every listing exactly once
    assert sorted(pd.concat([p for _, p, _ in parts])["id"]) == sorted(products["id"])


def test_growing_the_catalogue_rewrites_only_the_shards_it_lands_in(tmp_path):
    products, images = _catalogue(2000)
    before = shards.write(tmp_path / "a", products, images, shard_rows=200)
    more_p, more_i = _catalogue(3, start=5000)             # 3 new listings arrive
    after = shards.write(tmp_path / "b", pd.concat([products, more_p]),
                         pd.concat([images, more_i]), shard_rows=200)
    changed = shards.changed([e.as_dict() for e in after], [e.as_dict() for e in before])
    touched = {shards.shard_name(p) for p in shards.leaf_of(
        shards.id_hashes(more_p["id"]), shards.split(shards.id_hashes(
            pd.concat([products, more_p])["id"]), 200))}
    assert set(changed) == touched                          # and nothing else
    assert 1 <= len(changed) <= 3 < len(after)
    # a changed listing changes its own shard only
    edited = products.copy()
    edited.loc[7, "product_name"] = "a different thing"
    again = shards.write(tmp_path / "c", edited, images, shard_rows=200)
    assert len(shards.changed([e.as_dict() for e in again], [e.as_dict() for e in before])) == 1


def test_a_photo_without_its_listing_goes_where_the_listing_would_be():
    products, images = _catalogue(300)
    orphan = pd.DataFrame({"id": ["lost-photo"], "product_id": ["listing-999999"]})
    parts = list(shards.assign(products, pd.concat([images, orphan]), shard_rows=50))
    holder = [n for n, _, i in parts if "lost-photo" in set(i["id"])]
    assert len(holder) == 1
    assert sum(len(i) for _, _, i in parts) == len(images) + 1
    # and it is the shard that listing would join (or, had the listing split it, its parent)
    with_it, _ = _catalogue(1, start=999999)
    joined = list(shards.assign(pd.concat([products, with_it]), images, shard_rows=50))
    (there,) = [n for n, p, _ in joined if "listing-999999" in set(p["id"])]
    assert there.startswith(holder[0])


def test_the_snapshot_saves_in_shards_and_loads_whole(tmp_path):
    products, images = _catalogue(250)
    images["data"] = [b"jpeg"] * len(images)
    manifest = {"source": "local", "n_products": 250, "n_images": 500, "content_hash": "0" * 64}
    Snapshot(products, images, manifest, shard_rows=40).save(tmp_path)
    back = Snapshot.load(tmp_path)
    entries = back.manifest["shards"]
    assert len(entries) >= 250 // 40 and all(e["n_products"] <= 40 for e in entries)
    assert sum(e["n_images"] for e in entries) == 500
    assert (tmp_path / entries[0]["path"] / "products.parquet").exists()
    pd.testing.assert_frame_equal(back.products.sort_values("id").reset_index(drop=True),
                                  products.sort_values("id").reset_index(drop=True))
    assert back.metrics()["n_shards"] == len(entries)


def test_shard_rows_must_be_positive():
    with pytest.raises(ValueError, match="shard_rows"):
        shards.split(np.zeros(3, dtype=np.uint64), 0)


def test_leaf_index_is_leaf_of():
    rng = np.random.default_rng(0)
    for n, shard_rows in ((0, 5), (1, 5), (300, 7), (2000, 64)):
        leaves = shards.split(shards.id_hashes([f"id-{i}" for i in range(n)]), shard_rows)
        probes = np.concatenate([rng.integers(0, 2**64, 500, dtype=np.uint64),
                                 np.array([0, 2**63, 2**64 - 1], dtype=np.uint64),
                                 shards.leaf_starts(leaves)])
        names = sorted(leaves)
        assert [names[i] for i in shards.leaf_index(probes, shards.leaf_starts(leaves))] \
            == shards.leaf_of(probes, leaves)


def _spilled(tmp_path, products, images, shard_rows, chunk_rows, group_rows,
             listing_mask=None, photo_mask=None):
    """shards.Spill fed ``chunk_rows`` at a time (two sources: the frames cut in half)."""
    directory = tmp_path / f"spill-{chunk_rows}-{group_rows}"
    directory.mkdir()
    spill = shards.Spill(directory, shard_rows, group_rows)
    halves = {"products": (products.iloc[:len(products) // 2], products.iloc[len(products) // 2:]),
              "images": (images.iloc[:len(images) // 3], images.iloc[len(images) // 3:])}
    for source in (1, 0):                       # any order of sources: each keeps its number
        for table, parts in halves.items():
            frame = parts[source]
            for start in range(0, max(len(frame), 1), chunk_rows):
                spill.put(table, source, frame.iloc[start:start + chunk_rows])
    split_at = {"products": len(halves["products"][0]), "images": len(halves["images"][0])}

    def per_source(mask, table):
        return {} if mask is None else {0: mask[:split_at[table]], 1: mask[split_at[table]:]}

    spill.deal(per_source(listing_mask, "products"), per_source(photo_mask, "images"))
    out = list(spill.shards())
    assert spill.n_shards == len(out) and not list(directory.iterdir())   # every file read
    return [(shards.shard_name(prefix), p, i) for prefix, p, i in out]


@pytest.mark.parametrize("chunk_rows,group_rows", [(5, 1), (7, 7), (13, 200), (1000, 40)])
def test_spill_in_chunks_deals_what_assign_deals(tmp_path, chunk_rows, group_rows):
    products, images = _catalogue(400, photos_per_listing=3)
    products = pd.concat([products, products.iloc[[5, 300]]], ignore_index=True)  # duplicates
    orphans = pd.DataFrame({"id": ["lost-1", "lost-2"], "product_id": ["nobody", "listing-999999"]})
    images = pd.concat([images.iloc[::-1], orphans], ignore_index=True)
    expected = list(shards.assign(products, images, shard_rows=30))
    got = _spilled(tmp_path, products, images, 30, chunk_rows, group_rows)
    assert [n for n, _, _ in got] == [n for n, _, _ in expected]
    for (_, p, i), (_, ep, ei) in zip(got, expected):
        pd.testing.assert_frame_equal(p, ep)
        pd.testing.assert_frame_equal(i, ei)


def test_spill_keeps_only_the_rows_the_masks_keep(tmp_path):
    products, images = _catalogue(300)
    rng = np.random.default_rng(1)
    keep_p, keep_i = rng.random(len(products)) < 0.5, rng.random(len(images)) < 0.7
    expected = list(shards.assign(products[keep_p], images[keep_i], shard_rows=20))
    got = _spilled(tmp_path, products, images, 20, 16, 50, keep_p, keep_i)
    assert [n for n, _, _ in got] == [n for n, _, _ in expected]
    for (_, p, i), (_, ep, ei) in zip(got, expected):
        pd.testing.assert_frame_equal(p, ep.reset_index(drop=True))
        pd.testing.assert_frame_equal(i, ei.reset_index(drop=True))


def test_spill_says_which_column_a_shard_needs(tmp_path):
    spill = shards.Spill(tmp_path, 10, 10)
    with pytest.raises(ValueError, match="id column"):
        spill.put("products", 0, pd.DataFrame({"name": ["x"]}))
    with pytest.raises(ValueError, match="product_id column"):
        spill.put("images", 0, pd.DataFrame({"id": ["x"]}))
