"""The shard cache and the photo-feature cache in a bucket (a moto S3 server over HTTP), as on
EKS: what is read back is what was stored, an entry or part whose writer stopped before its
marker is not trusted, and a missing bucket or denied access is an error naming the URI."""
from __future__ import annotations

import json
import re
import urllib.request
import uuid

import boto3
import numpy as np
import pandas as pd
import pytest

from marketsearch.blobstore import S3Store, StoreError, open_store
from marketsearch.components.ingest import ingest
from marketsearch.components.shard import prepare_shard
from marketsearch.config import load_config
from marketsearch.records import CleanData, SnapshotShards

from ..component.conftest import FIXTURE, make_cfg


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


class _Killed(Exception):
    """A writer stopped midway."""


def _kill_before(monkeypatch, method: str, suffix: str) -> None:
    """Make S3Store.<method> fail for a name ending in ``suffix``, as if its writer died there."""
    real = getattr(S3Store, method)

    def dying(self, *args):
        if any(isinstance(a, str) and a.endswith(suffix) for a in args):
            raise _Killed(f"writer killed before {suffix}")
        return real(self, *args)

    monkeypatch.setattr(S3Store, method, dying)


# --- the shard cache ---------------------------------------------------------------------------
@pytest.fixture
def one_shard(tmp_path, s3_endpoint, s3_bucket):
    """(config with data.shard_cache in the bucket, the raw snapshot's shards, its first shard)."""
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_rows": 26,
                                   "s3_endpoint_url": s3_endpoint,
                                   "shard_cache": f"s3://{s3_bucket}/cache/shards"})
    ingest(cfg).save(tmp_path / "raw")
    shards = SnapshotShards.load(tmp_path / "raw")
    return cfg, shards, shards.manifest["shards"][0]


def _assert_same_clean(a: CleanData, b: CleanData) -> None:
    for name in ("products", "images", "thumbnails"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert pd.DataFrame(a.quarantine).equals(pd.DataFrame(b.quarantine))
    assert (a.summary, a.source) == (b.summary, b.source)


def test_a_shard_comes_back_from_the_bucket_as_it_was_stored(one_shard, tmp_path, s3_endpoint,
                                                             s3_bucket):
    cfg, shards, shard = one_shard
    first = prepare_shard(cfg, shards, shard)
    assert not first.summary.get("from_cache")
    stored = _keys(s3_endpoint, s3_bucket, "cache/shards/")
    (key,) = {name.split("/")[2] for name in stored}
    assert f"cache/shards/{key}/summary.json" in stored and len(stored) == len(CleanData.FILES)
    assert not (tmp_path / "runs" / "cache").exists()       # nothing kept on the pod's disk
    again = prepare_shard(cfg, shards, shard)
    assert again.summary.pop("from_cache") is True
    first.save(tmp_path / "local")                          # what a local cache reads back
    _assert_same_clean(CleanData.load(tmp_path / "local"), again)


def test_a_shard_entry_without_its_marker_is_not_trusted(one_shard, s3_endpoint, s3_bucket,
                                                         monkeypatch):
    """The writer dies after uploading every file but summary.json: the next run validates and
    cleans the shard again (and completes the entry), the one after reads it."""
    cfg, shards, shard = one_shard
    with monkeypatch.context() as patch:
        _kill_before(patch, "_upload", "/summary.json")
        with pytest.raises(_Killed):
            prepare_shard(cfg, shards, shard)
    half = _keys(s3_endpoint, s3_bucket, "cache/shards/")
    assert half and not any(k.endswith("/summary.json") for k in half)
    redone = prepare_shard(cfg, shards, shard)
    assert not redone.summary.get("from_cache")
    assert any(k.endswith("/summary.json") for k in _keys(s3_endpoint, s3_bucket, "cache/shards/"))
    assert prepare_shard(cfg, shards, shard).summary["from_cache"] is True


# --- the photo-feature cache -------------------------------------------------------------------
@pytest.fixture
def features_model():
    """(a small Keras features model, photos, a compute that counts) from the unit tests."""
    pytest.importorskip("keras")
    from ..unit.test_feature_cache import CountingCompute, _features_model, _photos

    return _features_model(), _photos, CountingCompute


def test_photo_features_are_read_back_from_the_bucket(features_model, s3_endpoint, s3_bucket):
    from marketsearch.feature_cache import FeatureCache

    model, photos_of, Counting = features_model
    uri = f"s3://{s3_bucket}/cache/photo_features"
    cfg = load_config(overrides={"image_model": {"feature_cache": uri,
                                                 "feature_cache_s3_endpoint_url": s3_endpoint}})
    photos = photos_of(10)
    first = Counting(model)
    a = FeatureCache.from_config(cfg).features(model, photos, compute=first, batch_size=4)
    assert first.photos == 10
    stored = _keys(s3_endpoint, s3_bucket, "cache/photo_features/")
    assert [k.rsplit(".", 1)[-1] for k in stored] == ["keys", "npz"]   # a part and its key file
    again, cache = Counting(model), FeatureCache.from_config(cfg)     # a new pod's view
    b = cache.features(model, photos, compute=again)
    assert again.photos == 0 and (cache.stats.hits, cache.stats.misses) == (10, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, model.predict(photos.astype("float32"), verbose=0), rtol=1e-5)
    # half old photos, three new ones: a second part; the next run reads both, part by part
    mixed = np.concatenate([photos[:5], photos_of(3, seed=1)])
    cache = FeatureCache(uri, s3_endpoint)
    c = cache.features(model, mixed, compute=Counting(model))
    assert (cache.stats.hits, cache.stats.misses) == (5, 3)
    last, cache = Counting(model), FeatureCache(uri, s3_endpoint)
    np.testing.assert_array_equal(cache.features(model, mixed, compute=last), c)
    assert last.photos == 0 and len(_keys(s3_endpoint, s3_bucket, "cache/photo_features/")) == 4


def test_a_feature_part_without_its_key_file_is_not_read(features_model, s3_endpoint, s3_bucket,
                                                         monkeypatch):
    from marketsearch.feature_cache import FeatureCache

    model, photos_of, Counting = features_model
    uri, photos = f"s3://{s3_bucket}/cache/photo_features", photos_of(4)
    with monkeypatch.context() as patch:
        _kill_before(patch, "write_bytes", ".keys")
        with pytest.raises(_Killed):
            FeatureCache(uri, s3_endpoint).features(model, photos, compute=Counting(model))
    assert [k.rsplit(".", 1)[-1] for k in _keys(s3_endpoint, s3_bucket, "cache/")] == ["npz"]
    compute, cache = Counting(model), FeatureCache(uri, s3_endpoint)
    cache.features(model, photos, compute=compute)
    assert compute.photos == 4 and cache.stats.hits == 0


# --- a bucket that cannot be used --------------------------------------------------------------
def _reset_auth(endpoint: str, count: str) -> str:
    """Have the moto server check IAM after ``count`` more requests ("inf": never); returns
    the previous setting."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                     headers={"Content-Type": "text/plain"}, method="POST")
    with urllib.request.urlopen(request) as response:
        return json.load(response)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]


@pytest.fixture
def denied(s3_endpoint, monkeypatch):
    """The credentials of an IAM user without any policy, while the server checks IAM."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint)
    user = f"nobody-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)   # it keeps the credentials it found
    previous = _reset_auth(s3_endpoint, "0")
    try:
        yield
    finally:
        _reset_auth(s3_endpoint, previous)


def test_a_missing_bucket_is_an_error_naming_the_uri(s3_endpoint, tmp_path):
    from marketsearch.components.shard import _cache

    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/cache/shards"
    with pytest.raises(StoreError, match=re.escape(uri) + ".*does not exist"):
        open_store(uri, s3_endpoint)
    cfg = make_cfg(tmp_path, data={"local_dir": str(FIXTURE), "shard_cache": uri,
                                   "s3_endpoint_url": s3_endpoint})
    with pytest.raises(StoreError, match=re.escape(uri)):
        _cache(cfg)


def test_denied_access_is_an_error_naming_the_uri(s3_endpoint, s3_bucket, denied):
    from marketsearch.feature_cache import FeatureCache

    uri = f"s3://{s3_bucket}/cache/photo_features"
    with pytest.raises(StoreError, match=re.escape(uri) + r": access denied \(AccessDenied\)"):
        FeatureCache(uri, s3_endpoint)
