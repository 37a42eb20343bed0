"""ingest streams the source shard by shard: the same shards as a whole read, one shard's photo
bytes in memory at a time, bad photos reported as before."""
import hashlib
import shutil

import pandas as pd

from marketsearch import shards, snapshot, sources
from marketsearch.components.ingest import ingest
from marketsearch.records import Snapshot, SnapshotShards

from .conftest import FIXTURE, make_cfg


def _whole_read_shards(cfg, directory):
    """What ingest wrote before it streamed: read everything, then shards.write."""
    raw = sources.read_source(cfg)
    images = raw.images.copy()
    images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
    return [e.as_dict() for e in shards.write(directory, raw.products, images,
                                              cfg.data.shard_rows)]


def test_streamed_ingest_writes_the_shards_a_whole_read_would(tmp_path):
    extra = tmp_path / "extra"                       # data.extra_local_dirs and data.limit too
    shutil.copytree(FIXTURE, extra)
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_rows": 8, "limit": 40,
                                   "extra_local_dirs": [str(extra)]})
    expected = _whole_read_shards(cfg, tmp_path / "whole")
    snap = ingest(cfg, out_dir=tmp_path / "streamed")
    assert snap.manifest["shards"] == expected       # names, paths, counts, content hashes
    assert len(expected) > 3
    for entry in expected:
        for table in ("products", "images"):
            pd.testing.assert_frame_equal(
                snapshot.read_table(tmp_path / "streamed" / entry["path"], table),
                snapshot.read_table(tmp_path / "whole" / entry["path"], table))
    m = snap.manifest
    assert m["n_products"] == sum(e["n_products"] for e in expected)
    assert m["n_images"] == sum(e["n_images"] for e in expected)
    assert m["n_images_unreadable"] == 0 and m["shard_rows"] == 8
    # the directory is a whole snapshot already; save() there only rewrites snapshot.json
    snap.save(tmp_path / "streamed")
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
