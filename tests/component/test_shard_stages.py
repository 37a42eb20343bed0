"""The data fan-out's stages without KFP: each shard validated and cleaned on its own
(prepare_shard), their plan made (gather_clean); the shards read with the plan
(marketsearch.catalogue) are what validate + clean give on the whole."""
import numpy as np
import pandas as pd
import pytest

from marketsearch.components.clean import clean
from marketsearch.components.ingest import ingest
from marketsearch.components.shard import gather_clean, prepare_shard
from marketsearch.components.validate import ValidationError, validate
from marketsearch.catalogue import CleanCatalogue
from marketsearch.records import CleanShard, Snapshot, SnapshotShards

from .conftest import make_cfg
from .test_data_stages import _rewrite_csv


def _fan_out(cfg, raw_dir):
    """ingest's saved snapshot -> prepare_shard per shard, each saved and read back lazily ->
    gather_clean -> (the shards, the whole catalogue as one CleanData read through the plan,
    with the plan's summary and quarantine)."""
    ingest(cfg).save(raw_dir)
    shards = SnapshotShards.load(raw_dir)
    parts = []
    for k, entry in enumerate(shards.manifest["shards"]):
        prepare_shard(cfg, shards, entry).save(raw_dir.parent / f"shard-{k}")
        parts.append(CleanShard.load(raw_dir.parent / f"shard-{k}"))
    plan = gather_clean(cfg, parts)
    gathered = CleanCatalogue(parts, plan).gathered()
    gathered.summary, gathered.quarantine = plan.summary, plan.quarantine
    pd.testing.assert_frame_equal(plan.listings[["id", "split", "category"]],
                                  gathered.products[["id", "split", "category"]])
    return parts, gathered


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("id").reset_index(drop=True)


def test_the_shards_gathered_are_the_catalogue_cleaned_whole(tmp_path):
    cfg = make_cfg(tmp_path, data={"local_dir": str(make_cfg(tmp_path).data.local_dir),
                                   "shard_rows": 12})
    parts, gathered = _fan_out(cfg, tmp_path / "raw")
    assert len(parts) >= 4
    whole = clean(cfg, validate(cfg, Snapshot.load(tmp_path / "raw")))
    pd.testing.assert_frame_equal(_by_id(gathered.products), _by_id(whole.products))
    # the same photos with the same pixels, each row pointing at its own pixels
    g, w = gathered.images.set_index("id"), whole.images.set_index("id")
    assert sorted(g.index) == sorted(w.index)
    for photo in g.index:
        assert np.array_equal(gathered.pixels[g.loc[photo, "row"]], whole.pixels[w.loc[photo, "row"]])
        assert g.loc[photo, "split"] == w.loc[photo, "split"]
    assert sorted(gathered.thumbnails["product_id"]) == sorted(whole.thumbnails["product_id"])
    for key in ("n_products", "n_images", "splits", "labels", "n_geocoded"):
        assert gathered.summary[key] == whole.summary[key], key
    assert gathered.summary["shards"]["n"] == len(parts)


def test_a_shard_that_fails_validation_is_quarantined_while_the_others_land(tmp_path, data_copy):
    """Every listing of one shard loses its price: that shard is over validate.max_bad_fraction
    and is quarantined whole, each row with the reason; the catalogue as a whole is not, so
    the other shards are gathered and nothing is lost."""
    cfg = make_cfg(tmp_path, data_copy, data={"local_dir": str(data_copy), "shard_rows": 12})
    ingest(cfg).save(tmp_path / "raw")
    victim = SnapshotShards.load(tmp_path / "raw").manifest["shards"][1]
    victim_ids = set(SnapshotShards.load(tmp_path / "raw").shard(victim).products["id"])
    _rewrite_csv(data_copy / "products.csv",
                 lambda rows: [r.update(price="") if r["id"] in victim_ids else None for r in rows]
                 and None)
    parts, gathered = _fan_out(cfg, tmp_path / "raw2")
    whole_quarantined = gathered.summary["shards"]["quarantined_whole"]
    assert list(whole_quarantined) == [victim["name"]]
    assert "failed validation" in whole_quarantined[victim["name"]]
    q = pd.DataFrame(gathered.quarantine)
    assert victim_ids <= set(q.loc[q["table"] == "products", "row_id"])
    assert not victim_ids & set(gathered.products["id"])
    n_in = sum(e["n_products"] for e in SnapshotShards.load(tmp_path / "raw2").manifest["shards"])
    assert len(gathered.products) + len(victim_ids) == n_in          # every listing accounted
    # allowed to be all bad (max_bad_fraction 1), the shard's rows are refused one by one
    # instead, with their own reasons, and it hands on no listing
    lenient = make_cfg(tmp_path, data_copy, data={"local_dir": str(data_copy), "shard_rows": 12,
                                                  "shard_cache": None},
                       validate={"max_bad_fraction": 1.0})
    (refused,) = [prepare_shard(lenient, SnapshotShards.load(tmp_path / "raw2"), victim)]
    assert len(refused.products) == 0 and "quarantined_whole" not in refused.summary
    assert {r["row_id"] for r in refused.quarantine if r["table"] == "products"} == victim_ids
    assert all("shard " not in r["reason"] for r in refused.quarantine)
    # but a catalogue that is mostly bad still stops the run
    strict = make_cfg(tmp_path, data_copy, data={"local_dir": str(data_copy), "shard_rows": 12},
                      validate={"max_bad_fraction": 0.05})
    with pytest.raises(ValidationError, match="failed validation"):
        gather_clean(strict, parts)


def test_an_unchanged_shard_is_not_processed_again(tmp_path, data_copy):
    cfg = make_cfg(tmp_path, data_copy, data={"local_dir": str(data_copy), "shard_rows": 12})
    parts, _ = _fan_out(cfg, tmp_path / "a" / "raw")
    assert not any(p.summary.get("from_cache") for p in parts)
    _rewrite_csv(data_copy / "products.csv",
                 lambda rows: rows[0].update(product_name=rows[0]["product_name"] + " (mint)"))
    again, gathered = _fan_out(cfg, tmp_path / "b" / "raw")
    fresh = [p for p in again if not p.summary.get("from_cache")]
    assert len(fresh) == 1 and len(again) >= 4          # only the shard with the edit
    assert gathered.summary["shards"]["from_cache"] == len(again) - 1
    assert gathered.products["title"].str.endswith("(mint)").sum() == 1


def test_the_gathered_data_does_not_depend_on_the_shard_layout(tmp_path):
    """Shards of 12 or of 30 listings: the same CleanData, row for row and pixel for pixel."""
    fixture = str(make_cfg(tmp_path).data.local_dir)
    gathered = []
    for rows in (12, 30):
        cfg = make_cfg(tmp_path / str(rows), data={"local_dir": fixture, "shard_rows": rows,
                                                   "shard_cache": None})
        parts, data = _fan_out(cfg, tmp_path / str(rows) / "raw")
        gathered.append((len(parts), data))
    (n_a, a), (n_b, b) = gathered
    assert n_a != n_b
    pd.testing.assert_frame_equal(a.products, b.products)
    pd.testing.assert_frame_equal(a.images, b.images)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.products["id"].is_monotonic_increasing
    # photo rows renumbered 0..n-1 (pixels checked against clean's above)
    by_id = {row["id"]: row["row"] for row in a.images.to_dict("records")}
    assert sorted(by_id.values()) == list(range(len(a.images)))
