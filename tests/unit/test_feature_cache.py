"""The photo-feature cache: a hit on a second run, a miss when a photo or the backbone changes."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marketsearch.feature_cache import FeatureCache, model_key, photo_keys  # noqa: E402


def _features_model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="photo")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs / 255.0)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="image_features")


def _photos(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


class CountingCompute:
    """Computes features with the model and counts the photos it was asked for."""

    def __init__(self, model):
        self.model, self.photos = model, 0

    def __call__(self, batch):
        self.photos += len(batch)
        return self.model.predict(batch.astype("float32"), verbose=0)


def test_second_run_reads_every_photo_from_the_cache(tmp_path):
    model, photos = _features_model(), _photos(10)
    first = CountingCompute(model)
    a = FeatureCache(tmp_path).features(model, photos, compute=first, batch_size=4)
    assert first.photos == 10
    again = CountingCompute(model)
    cache = FeatureCache(tmp_path)  # a new process's view: only what is on disk
    b = cache.features(model, photos, compute=again)
    assert again.photos == 0 and (cache.stats.hits, cache.stats.misses) == (10, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, model.predict(photos.astype("float32"), verbose=0), rtol=1e-5)


def test_a_changed_photo_misses_and_only_it_is_computed(tmp_path):
    model, photos = _features_model(), _photos(6)
    FeatureCache(tmp_path).features(model, photos, compute=CountingCompute(model))
    changed = photos.copy()
    changed[2, 0, 0, 0] ^= 1  # one pixel of one photo
    compute = CountingCompute(model)
    cache = FeatureCache(tmp_path)
    out = cache.features(model, changed, compute=compute)
    assert compute.photos == 1 and (cache.stats.hits, cache.stats.misses) == (5, 1)
    np.testing.assert_allclose(out, model.predict(changed.astype("float32"), verbose=0),
                               rtol=1e-5)


def test_other_backbone_weights_never_read_another_backbones_features(tmp_path):
    photos = _photos(4)
    a, b = _features_model(0), _features_model(1)
    assert model_key(a) != model_key(b)
    FeatureCache(tmp_path).features(a, photos, compute=CountingCompute(a))
    compute = CountingCompute(b)
    out = FeatureCache(tmp_path).features(b, photos, compute=compute)
    assert compute.photos == 4
    np.testing.assert_allclose(out, b.predict(photos.astype("float32"), verbose=0), rtol=1e-5)


def test_the_same_weights_at_another_input_size_is_another_key():
    """A resize inside the model has no weights: the key must still tell 160 from 224 px."""
    def resized(size):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3), name="photo")
        x = keras.layers.Resizing(size, size, name="resize")(inputs)
        x = keras.layers.Conv2D(4, 3, name="conv")(x)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="image_features")

    a, b = resized(12), resized(16)
    b.get_layer("conv").set_weights(a.get_layer("conv").get_weights())
    assert model_key(a) != model_key(b)
    assert model_key(a) == model_key(resized(12))


def test_repeated_photos_are_computed_once_and_no_cache_stores_nothing(tmp_path):
    model = _features_model()
    photos = np.concatenate([_photos(3), _photos(3)])  # each photo twice
    assert len(set(photo_keys(photos))) == 3
    compute = CountingCompute(model)
    FeatureCache(tmp_path).features(model, photos, compute=compute)
    assert len(list(tmp_path.rglob("part-*.npz"))) == 1
    uncached = FeatureCache(None)
    uncached.features(model, photos, compute=CountingCompute(model))
    assert uncached.stats.misses == 6


def test_an_unreadable_part_is_skipped_not_fatal(tmp_path):
    model, photos = _features_model(), _photos(3)
    FeatureCache(tmp_path).features(model, photos, compute=CountingCompute(model))
    (next(tmp_path.rglob("part-*.npz")).parent / "part-broken.npz").write_bytes(b"not a zip")
    compute = CountingCompute(model)
    FeatureCache(tmp_path).features(model, photos, compute=compute)
    assert compute.photos == 0


def test_a_local_part_without_its_key_file_is_read_for_its_keys(tmp_path):
    """A local part is whole by its rename: one from before the key files (or whose writer
    stopped before writing one) is still read."""
    model, photos = _features_model(), _photos(3)
    FeatureCache(tmp_path).features(model, photos, compute=CountingCompute(model))
    (keys,) = tmp_path.rglob("part-*.keys")
    assert keys.read_text().split() == photo_keys(photos)
    keys.unlink()
    compute = CountingCompute(model)
    FeatureCache(tmp_path).features(model, photos, compute=compute)
    assert compute.photos == 0


def test_a_photo_model_loaded_from_its_file_has_the_key_it_was_trained_with(tmp_path):
    """train_image caches with the model it built; train_fusion, build_index and evaluate read
    with the model loaded from the saved file: the keys must agree, and differ by input size."""
    from marketsearch.config import ImageModelConfig
    from marketsearch.models.image import build_image_model, features_model

    cfg = ImageModelConfig(backbone="small_cnn", weights=None, input_size=24)
    model = build_image_model(3, cfg, 16)
    features = features_model(model)
    features.trainable = False  # as in stage 1
    model.save(tmp_path / "image.keras")
    loaded = keras.models.load_model(tmp_path / "image.keras", compile=False)
    assert model_key(features_model(loaded)) == model_key(features)
    other = build_image_model(3, cfg.model_copy(update={"input_size": 32}), 16)
    other_features = features_model(other)
    for a, b in zip(other_features.weights, features.weights):
        a.assign(b)
    assert model_key(other_features) != model_key(features)
