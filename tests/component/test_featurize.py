"""featurize_shard, the per-shard photo features, without KFP: each clean shard's photos go
through the frozen backbone into the feature cache, and the photo model trained after finds
every one of them there instead of running the backbone itself."""
import numpy as np
import pytest

from marketsearch.components.featurize import featurize_shard
from marketsearch.components.ingest import ingest
from marketsearch.components.shard import gather_clean, prepare_shard
from marketsearch.components.train_image import train_image
from marketsearch.feature_cache import FeatureCache, traced_features
from marketsearch.models.image import build_features_model
from marketsearch.records import CleanShard, ShardFeatures, SnapshotShards

from ..support import TINY
from .conftest import FIXTURE, make_cfg
from .test_data_stages import _rewrite_csv


def _cfg(tmp_path, data_dir=FIXTURE, **image_model):
    """The tiny config, in shards of 20 listings, with ``image_model`` overrides."""
    sections = {**TINY, "image_model": {**TINY["image_model"], **image_model}}
    return make_cfg(tmp_path, data_dir, **sections,
                    data={"local_dir": str(data_dir), "shard_rows": 20})


def _shards(cfg, tmp_path) -> list[CleanShard]:
    ingest(cfg).save(tmp_path / "raw")
    raw = SnapshotShards.load(tmp_path / "raw")
    parts = []
    for k, entry in enumerate(raw.manifest["shards"]):
        prepare_shard(cfg, raw, entry).save(tmp_path / f"shard-{k}")
        parts.append(CleanShard.load(tmp_path / f"shard-{k}"))
    return parts


def _photos(shard: CleanShard) -> np.ndarray:
    data = shard.data()
    return np.asarray(data.pixels[sorted(set(data.images["row"].astype(int)))])


def test_each_shard_is_featurized_once_and_training_reads_them_all(tmp_path):
    cfg = _cfg(tmp_path, feature_chunk=16)
    shards = _shards(cfg, tmp_path)
    assert len(shards) >= 3
    records = [featurize_shard(cfg, s) for s in shards]
    for shard, record in zip(shards, records):
        s = record.summary
        n = len(_photos(shard))
        assert (s["shard"], s["n_photos"], s["computed"], s["from_cache"]) == (shard.name, n, n, 0)
        assert f"{n} computed" in record.headline()
    # the cache holds what the backbone gives for those photos
    model = build_features_model(cfg.image_model, cfg.clean.image_size)
    photos = _photos(shards[0])
    cached = FeatureCache.from_config(cfg).features(model, photos)
    np.testing.assert_allclose(cached, traced_features(model)(photos), rtol=1e-4, atol=1e-5)
    # a second run over unchanged shards computes nothing
    again = [featurize_shard(cfg, s).summary for s in shards]
    assert [a["computed"] for a in again] == [0] * len(shards)
    assert [a["from_cache"] for a in again] == [r.summary["n_photos"] for r in records]
    # the photo model reads every photo's features from the cache: the backbone never runs
    plan = gather_clean(cfg, shards)
    for k, record in enumerate(records):
        record.save(tmp_path / f"features-{k}")
    model = train_image(cfg, shards, tmp_path / "image", plan=plan,
                        photo_features=[tmp_path / f"features-{k}" for k in range(len(records))])
    result = model.result
    assert result["feature_cache_misses"] == 0
    assert result["feature_cache_hits"] == result["n_train"] + result["n_val"] > 0
    assert result["featurized_shards"] == len(shards)
    assert result["featurized_photos"] == sum(r.summary["computed"] for r in records)


@pytest.mark.parametrize("override, why", [
    ({"feature_cache": None}, "no feature cache configured (image_model.feature_cache)"),
    ({"backbone": "small_cnn", "weights": None}, "has no pretrained weights"),
])
def test_nothing_is_computed_where_nothing_would_read_it(tmp_path, override, why):
    cfg = _cfg(tmp_path, **override)
    record = featurize_shard(cfg, _shards(cfg, tmp_path)[0])
    assert why in record.summary["skipped"]
    assert why in record.headline()
    assert ShardFeatures.coerce(record).metrics() == {}
    assert not (tmp_path / "runs" / "cache" / "photo_features").exists()


def test_a_shard_quarantined_whole_has_no_photos_to_featurize(tmp_path, data_copy):
    cfg = _cfg(tmp_path, data_copy)
    ingest(cfg).save(tmp_path / "raw")
    raw = SnapshotShards.load(tmp_path / "raw")
    victim = raw.manifest["shards"][0]
    ids = set(raw.shard(victim).products["id"])
    _rewrite_csv(data_copy / "products.csv",
                 lambda rows: [r.update(price="") if r["id"] in ids else None for r in rows] and None)
    shards = _shards(cfg, tmp_path / "again")
    assert shards[0].summary.get("quarantined_whole")
    assert featurize_shard(cfg, shards[0]).summary["skipped"] == "no photos"
    assert featurize_shard(cfg, shards[1]).summary["computed"] > 0     # the others go on
