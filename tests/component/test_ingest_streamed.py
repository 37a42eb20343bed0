"""ingest streams the source shard by shard: the same shards as a whole read, one shard's photo
bytes in memory at a time, bad photos reported as before; the listing and photo rows in
chunks of data.ingest_chunk_rows, never the whole catalogue in one frame."""
import csv
import hashlib
import shutil
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from marketsearch import shards, snapshot, sources
from marketsearch.components.ingest import ingest
from marketsearch.records import Snapshot, SnapshotShards

from .conftest import FIXTURE, make_cfg


def _whole_read_shards(cfg, directory):
    """What ingest wrote before it streamed: read everything (each file in one read_csv, the
    chunk size out of the way), then shards.write."""
    whole = cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"ingest_chunk_rows": 10**9})})
    raw = sources.read_source(whole)
    images = raw.images.copy()
    images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
    return [e.as_dict() for e in shards.write(directory, raw.products, images,
                                              cfg.data.shard_rows)]


def assert_ingest_is_the_whole_read(cfg, tmp_path, least_shards: int = 3) -> dict:
    """ingest(cfg) writes the shards, tables and counts the whole read writes; its manifest."""
    expected = _whole_read_shards(cfg, tmp_path / "whole")
    snap = ingest(cfg, out_dir=tmp_path / "streamed")
    assert snap.manifest["shards"] == expected       # names, paths, counts, content hashes
    assert len(expected) >= least_shards
    for entry in expected:
        for table in ("products", "images"):
            pd.testing.assert_frame_equal(
                snapshot.read_table(tmp_path / "streamed" / entry["path"], table),
                snapshot.read_table(tmp_path / "whole" / entry["path"], table))
    m = snap.manifest
    assert m["n_products"] == sum(e["n_products"] for e in expected)
    assert m["n_images"] == sum(e["n_images"] for e in expected)
    return m


def test_streamed_ingest_writes_the_shards_a_whole_read_would(tmp_path):
    extra = tmp_path / "extra"                       # data.extra_local_dirs and data.limit too
    shutil.copytree(FIXTURE, extra)
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_rows": 8, "limit": 40,
                                   "extra_local_dirs": [str(extra)]})
    m = assert_ingest_is_the_whole_read(cfg, tmp_path, least_shards=4)
    expected = m["shards"]
    assert m["n_images_unreadable"] == 0 and m["shard_rows"] == 8
    # the directory is a whole snapshot already; save() there only rewrites snapshot.json
    Snapshot.load(tmp_path / "streamed").save(tmp_path / "streamed")
    assert Snapshot.load(tmp_path / "streamed").manifest == m
    assert SnapshotShards.load(tmp_path / "streamed").shard(expected[0]).products["id"].tolist() \
        == snapshot.read_table(tmp_path / "whole" / expected[0]["path"], "products")["id"].tolist()


def test_streamed_ingest_holds_one_shards_photo_bytes_at_a_time(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_rows": 10})
    calls: list[list[str]] = []                      # photo ids per call of the folder fetcher
    held = {"now": 0, "peak": 0}
    folder_call = sources.FolderPhotos.__call__

    def fetch_and_count(self, ids):
        calls.append(list(ids))
        data, errors = folder_call(self, ids)
        held["now"] += sum(len(b) for b in data if b)
        held["peak"] = max(held["peak"], held["now"])
        return data, errors

    write_shard = shards.write_shard

    def write_and_release(directory, name, products, images):
        entry = write_shard(directory, name, products, images)
        held["now"] -= sum(len(b) for b in images["data"] if b)
        return entry

    monkeypatch.setattr(sources.FolderPhotos, "__call__", fetch_and_count)
    monkeypatch.setattr(shards, "write_shard", write_and_release)
    snap = ingest(cfg, out_dir=tmp_path / "raw")
    entries = snap.manifest["shards"]
    per_shard = [shards.read(tmp_path / "raw", e)[1] for e in entries]
    # one fetch per shard (that has photos), with exactly that shard's photo ids, in order
    assert calls == [list(i["id"]) for i in per_shard if len(i)]
    assert len(calls) > 3
    sizes = [int(i["data"].map(len).sum()) for i in per_shard]
    assert held["now"] == 0 and held["peak"] == max(sizes) < sum(sizes) / 3


def test_a_missing_photo_file_is_a_source_error_and_the_rest_goes_on(tmp_path, data_copy):
    gone = pd.read_csv(data_copy / "images.csv", dtype=str)["id"].iloc[3]
    (data_copy / "images" / f"{gone}.jpg").unlink()
    cfg = make_cfg(tmp_path, data_copy, data={"local_dir": str(data_copy), "shard_rows": 10})
    ingest(cfg).save(tmp_path / "raw")               # no out_dir: staged, then copied
    snap = Snapshot.load(tmp_path / "raw")
    row = snap.images.set_index("id").loc[gone]
    assert row["source_error"] == f"photo file images/{gone}.jpg not found"
    assert row["data"] is None and row["sha256"] == ""
    others = snap.images[snap.images["id"] != gone]
    assert (others["source_error"] == "").all() and others["data"].map(len).gt(0).all()
    assert snap.manifest["n_images_unreadable"] == 1
    assert snap.manifest["n_images"] == len(snap.images) == 65


def test_content_hash_follows_the_bytes_not_the_row_order(tmp_path, data_copy):
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_rows": 10})
    before = ingest(cfg).manifest
    # the same rows in another order: the same hash and shards
    for name in ("products.csv", "images.csv"):
        text = (data_copy / name).read_text(encoding="utf-8")
        frame = pd.read_csv(data_copy / name, dtype=str, keep_default_na=False)
        frame.iloc[::-1].to_csv(data_copy / name, index=False, quoting=1)
        assert (data_copy / name).read_text(encoding="utf-8") != text
    shuffled = make_cfg(tmp_path, data_copy, data={"local_dir": str(data_copy), "shard_rows": 10})
    again = ingest(shuffled).manifest
    assert again["content_hash"] == before["content_hash"]
    assert again["shards"] == before["shards"]
    # one photo byte changes: the hash changes, and that photo's shard's entry alone
    photo = next((data_copy / "images").glob("*.jpg"))
    blob = bytearray(photo.read_bytes())
    blob[-3] ^= 0xFF
    photo.write_bytes(bytes(blob))
    edited = ingest(shuffled).manifest
    assert edited["content_hash"] != before["content_hash"]
    assert len(shards.changed(edited["shards"], before["shards"])) == 1


# --- chunks smaller than a shard ------------------------------------------------------------
def _messy_copy(data_copy):
    """The fixture with the bad input validate quarantines: a duplicate listing id (the copy
    far from the first, in another chunk), photos of no listing, a photo file missing, a
    listing column and a photo column missing, a blank category."""
    products = pd.read_csv(data_copy / "products.csv", dtype=str, keep_default_na=False)
    images = pd.read_csv(data_copy / "images.csv", dtype=str, keep_default_na=False)
    twin = products.iloc[[3]].assign(product_name="the same id again")
    products.loc[5, "category"] = ""
    products = pd.concat([products, twin]).drop(columns=["location"])
    orphans = images.iloc[:4].copy()
    orphans["id"] = [f"orphan-{i}" for i in range(4)]
    orphans["product_id"] = ["no-such-listing-1", "no-such-listing-2", "x", "x"]
    for old, new in zip(images["id"].iloc[:4], orphans["id"]):
        shutil.copy(data_copy / "images" / f"{old}.jpg", data_copy / "images" / f"{new}.jpg")
    images = pd.concat([images, orphans]).drop(columns=["bucket_link"])
    (data_copy / "images" / f"{images['id'].iloc[7]}.jpg").unlink()
    products.to_csv(data_copy / "products.csv", index=False, quoting=csv.QUOTE_ALL)
    images.to_csv(data_copy / "images.csv", index=False, quoting=csv.QUOTE_ALL)
    return data_copy


@pytest.mark.parametrize("chunk_rows", [1, 7, 30])
def test_chunks_smaller_than_a_shard_give_the_same_snapshot(tmp_path, data_copy, chunk_rows):
    data = _messy_copy(data_copy)
    cfg = make_cfg(tmp_path, data, data={"local_dir": str(data), "shard_rows": 8,
                                         "ingest_chunk_rows": chunk_rows})
    m = assert_ingest_is_the_whole_read(cfg, tmp_path, least_shards=6)
    assert m["n_products"] == 53 and m["n_images"] == 69 and m["n_images_unreadable"] == 1
    # the duplicate's two rows in one shard, the orphans where their listing would be
    by_name = {e["name"]: e for e in m["shards"]}
    twins = [shards.read(tmp_path / "streamed", e)[0] for e in by_name.values()]
    assert sum(int(t["product_name"].eq("the same id again").sum()) for t in twins) == 1
    assert any(t["id"].duplicated().any() for t in twins)


def test_limit_and_extra_folders_in_chunks_give_the_same_snapshot(tmp_path, data_copy):
    """data.limit samples the first source as sample() does; an extra folder (a newer export:
    repeats with edits, new listings, a column more) is appended as concat() appends it."""
    newer = tmp_path / "newer"
    shutil.copytree(FIXTURE, newer)
    products = pd.read_csv(newer / "products.csv", dtype=str, keep_default_na=False)
    images = pd.read_csv(newer / "images.csv", dtype=str, keep_default_na=False)
    repeated = products.iloc[::4].assign(price="£1")
    added = products.iloc[:5].assign(id=[f"new-{i}" for i in range(5)])
    pd.concat([repeated, added]).assign(condition="used").to_csv(
        newer / "products.csv", index=False, quoting=csv.QUOTE_ALL)
    kept = images[images["product_id"].isin(repeated["id"])]
    pd.concat([kept, kept.iloc[:2].assign(id=["new-photo-0", "new-photo-1"],
                                          product_id=["new-0", "new-1"])]).assign(
        width="128").to_csv(newer / "images.csv", index=False, quoting=csv.QUOTE_ALL)
    for old, new in zip(kept["id"].iloc[:2], ["new-photo-0", "new-photo-1"]):
        shutil.copy(newer / "images" / f"{old}.jpg", newer / "images" / f"{new}.jpg")
    data = _messy_copy(data_copy)
    for limit in (20, 45, 500):
        cfg = make_cfg(tmp_path, data, seed=3, data={
            "local_dir": str(data), "shard_rows": 8, "ingest_chunk_rows": 7, "limit": limit,
            "extra_local_dirs": [str(newer), str(FIXTURE)] if limit == 45 else [str(newer)]})
        m = assert_ingest_is_the_whole_read(cfg, tmp_path / f"limit-{limit}")
        assert m["n_products"] > min(limit, 53)            # the extra folder's listings join
        listings = pd.concat([shards.read(tmp_path / f"limit-{limit}" / "streamed", e)[0]
                              for e in m["shards"]])
        assert "condition" in listings.columns and listings["condition"].isin(["", "used"]).all()


# --- memory: a chunk or a shard, never the catalogue ------------------------------------------
def _big_folder(directory, n: int, text: int = 1500, photos_per_listing: int = 2):
    """A folder source of ``n`` listings with ``text`` characters of description each and
    photo rows whose files are missing (no bytes: the rows alone are measured)."""
    (directory / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"listing-{i:07d}" for i in range(n)]
    words = np.array(["oak", "table", "chair", "good", "condition", "collect", "only", "sofa"])
    pd.DataFrame({
        "id": ids, "product_name": [f"thing {i} | in Town | Gumtree" for i in range(n)],
        "category": [f"Root {i % 5} / Sub {i % 3}" for i in range(n)],
        "product_description": [" ".join(rng.choice(words, text // 5)) for _ in range(n)],
        "price": "£10", "location": "Town, County",
    }).to_csv(directory / "products.csv", index=False, quoting=csv.QUOTE_ALL)
    pd.DataFrame({
        "id": [f"{p}-photo-{k}" for p in ids for k in range(photos_per_listing)],
        "product_id": [p for p in ids for _ in range(photos_per_listing)],
        "bucket_link": "https://bucket.example/x.jpg", "image_ref": "ref",
        "create_time": "26/02/2022",
    }).to_csv(directory / "images.csv", index=False, quoting=csv.QUOTE_ALL)
    return directory


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    return _big_folder(tmp_path_factory.mktemp("big"), 6000, text=3000)


def test_no_frame_larger_than_a_chunk_or_a_group_of_shards_is_built(tmp_path, big_folder,
                                                                     monkeypatch):
    """Every frame ingest handles, from the source to the shards written: the chunks the
    source hands on, the parts spilled and dealt, the groups read back, the shards."""
    chunk_rows, shard_rows = 250, 100
    cfg = make_cfg(tmp_path, big_folder, data={"local_dir": str(big_folder),
                                               "shard_rows": shard_rows,
                                               "ingest_chunk_rows": chunk_rows})
    largest: dict[str, int] = {}

    def note(where, frame):
        largest[where] = max(largest.get(where, 0), len(frame))
        return frame

    chunks_local = sources.chunks_local

    def counted(*args, **kwargs):
        source = chunks_local(*args, **kwargs)
        for name in ("listings", "photos"):
            inner = getattr(source, name)
            setattr(source, name, lambda _inner=inner, _name=name:
                    (note(f"source {_name}", f) for f in _inner()))
        return source

    monkeypatch.setattr(sources, "chunks_local", counted)
    put, read = shards.Spill.put, shards._Frames.read
    monkeypatch.setattr(shards.Spill, "put",
                        lambda self, table, k, frame: put(self, table, k, note("put", frame)))
    monkeypatch.setattr(shards._Frames, "read", lambda self, path: (
        note("read back", frame) for frame in read(self, path)))
    concat = pd.concat
    monkeypatch.setattr(pd, "concat", lambda *a, **kw: note("concat", concat(*a, **kw)))
    write_shard = shards.write_shard
    monkeypatch.setattr(shards, "write_shard", lambda d, name, p, i: write_shard(
        d, name, note("shard listings", p), note("shard photos", i)))

    snap = ingest(cfg, out_dir=tmp_path / "raw")
    assert snap.manifest["n_products"] == 6000 and snap.manifest["n_images"] == 12000
    assert largest["source listings"] == largest["source photos"] == chunk_rows
    assert largest["put"] == chunk_rows
    assert largest["shard listings"] <= shard_rows and largest["shard photos"] <= 2 * shard_rows
    # chunks and groups of shards read back: at most chunk_rows listings (photos: 2 each)
    assert largest["read back"] <= chunk_rows and largest["concat"] <= 2 * chunk_rows
    assert max(largest.values()) <= 2 * chunk_rows < 12000 / 10


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_a_chunk_not_the_catalogue(tmp_path, big_folder):
    """tracemalloc's peak (Python objects: every listing's text as str) of ingest in chunks of
    200 rows against a whole read of the same source (read_source_index, which ingest read
    before it streamed)."""
    cfg = make_cfg(tmp_path, big_folder, data={"local_dir": str(big_folder),
                                               "shard_rows": 200, "ingest_chunk_rows": 200})
    whole = cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"ingest_chunk_rows": 10**9})})
    # first calls import modules (parquet's among them): not what is measured
    ingest(make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "ingest_chunk_rows": 20}))
    index_peak = _traced_peak(lambda: sources.read_source_index(whole))
    ingest_peak = _traced_peak(lambda: ingest(cfg, out_dir=tmp_path / "raw"))
    assert ingest_peak < index_peak / 4, (ingest_peak, index_peak)
