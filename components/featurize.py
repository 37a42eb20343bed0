"""featurize_shard: the per-photo backbone work of one clean shard, in the same
``dsl.ParallelFor`` as prepare_shard (pipelines/training.py): each shard's photos go through
the frozen ImageNet backbone in a task of its own, and their pooled features into the photo
feature cache (``image_model.feature_cache``: a local directory, or on EKS the data bucket).

The stages after (train_image, train_fusion's price head, build_index, evaluate, drift_check)
ask the cache for a photo's features by its content and the backbone's weights
(marketsearch.feature_cache), so they find these instead of running the backbone; a photo
the cache does not hold (the cache was emptied, a fine-tuned backbone) is computed where it is
asked for, so nothing here is needed for a correct result, only for spreading the work. A
shard whose photos are all cached already (an unchanged shard, a rerun) computes nothing.

Nothing is computed, with the reason in the record, when no cache is configured (the
features would be thrown away) or the photo model has no pretrained backbone to freeze
(``small_cnn``, random init: it trains from pixels)."""

import logging

from marketsearch.config import Config
from marketsearch.records import CleanShard, ShardFeatures
from marketsearch.steps import step

log = logging.getLogger(__name__)


def _skipped(shard: CleanShard, why: str) -> ShardFeatures:
    log.info("featurize_shard: %s: nothing to compute: %s", shard.name, why)
    return ShardFeatures({"shard": shard.name, "skipped": why})


@step(reads=("image_model",), inputs={"clean_shard": CleanShard},
      output=("photo_features", ShardFeatures))
def featurize_shard(cfg: Config, clean_shard) -> ShardFeatures:
    """Put the backbone features of every photo of ``clean_shard`` (a CleanShard or the
    directory of a saved CleanData) in the feature cache, ``image_model.feature_chunk``
    photos at a time (one cache part each; memory: one chunk's pixels and features)."""
    import time

    from marketsearch.feature_cache import FeatureCache, model_key
    from marketsearch.models.image import build_features_model, is_pretrained

    shard = CleanShard.coerce(clean_shard)
    image = cfg.image_model
    if not is_pretrained(image):
        return _skipped(shard, f"image_model.backbone {image.backbone} has no pretrained "
                               "weights (image_model.weights is empty): it trains from pixels")
    cache = FeatureCache.from_config(cfg)
    if cache.store is None:
        return _skipped(shard, "no feature cache configured (image_model.feature_cache)")
    photos = shard.images()
    rows = sorted(set(photos["row"].astype(int))) if len(photos) else []
    if not rows:
        return _skipped(shard, "no photos")
    start = time.perf_counter()
    model = None
    chunk = image.feature_chunk
    for first in range(0, len(rows), chunk):
        pixels = shard.photos(rows[first:first + chunk])   # one chunk's pages at a time
        model = model or build_features_model(image, int(pixels.shape[1]))
        cache.features(model, pixels, desc=f"photo features ({shard.name})")
    stats = cache.stats
    return ShardFeatures({"shard": shard.name, "cache": str(cache.store.uri),
                          "model_key": model_key(model), "n_photos": len(rows),
                          "from_cache": stats.hits, "computed": stats.misses,
                          "seconds": round(time.perf_counter() - start, 1)})
