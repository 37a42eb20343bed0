"""train_image: the photo model (ImageNet EfficientNet-Lite0: head on cached features, then
optionally its top blocks fine-tuned on the GPU nodes), trained on the clean shards streamed
(marketsearch.streaming): one shard's photos are read at a time. The frozen backbone's
features come from the feature cache, which featurize_shard filled shard by shard before
(``photo_features``, its records: the DAG's dependency, and their counts in the summary);
a photo missing there is computed here."""

import logging

from marketsearch.config import Config
from marketsearch.records import CleanPlan, CleanShard, ShardFeatures, TrainedModel
from marketsearch.steps import step

log = logging.getLogger(__name__)


def photo_examples(catalogue, labels: list[str], split: str, spill_dir=None):
    """The ``split``'s photos and their labels as streaming Examples, a part per shard (the
    pixels of a memory-mapped shard are read here, once)."""
    import numpy as np

    from marketsearch.streaming import Examples

    index = {c: i for i, c in enumerate(labels)}
    out = Examples(spill_dir)
    for part in catalogue.parts(split):
        rows = part.images["row"].to_numpy().astype(int)
        out.add(np.asarray(part.pixels[rows]), part.images["category"].map(index).to_numpy(np.int32))
    return out


def _featurized(records: list | None) -> dict:
    """What featurize_shard did before this stage: photos it computed and found cached."""
    done = [ShardFeatures.coerce(r).summary for r in records or []]
    return {"featurized_shards": sum(not s.get("skipped") for s in done),
            "featurized_photos": sum(s.get("computed", 0) for s in done)} if done else {}


@step(reads=("image_model", "data", "seed"),
      inputs={"clean_data": [CleanShard], "plan": CleanPlan, "photo_features": [ShardFeatures]},
      output=("model", TrainedModel), views={"curves": "HTML"}, out_dir=True)
def train_image(cfg: Config, clean_data, out_dir, plan: CleanPlan | None = None,
                photo_features: list | None = None) -> TrainedModel:
    """Train on the train split's photos, early-stop on val; ``image.keras`` in ``out_dir``.
    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData;
    ``photo_features``: featurize_shard's records of those shards, if it ran."""
    import tempfile
    from pathlib import Path

    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.image import train_image_model
    from marketsearch.tracking import training_summary

    catalogue = CleanCatalogue.of(clean_data, plan)
    labels = catalogue.labels
    cache = FeatureCache.from_config(cfg)
    with tempfile.TemporaryDirectory(prefix="train-image-") as spill:
        train = photo_examples(catalogue, labels, "train", Path(spill) / "train")
        val = photo_examples(catalogue, labels, "val", Path(spill) / "val")
        model, history = train_image_model(train, None, val, None, len(labels), cfg.image_model,
                                           cfg.seed, cache=cache,
                                           shuffle_buffer=cfg.data.shuffle_buffer,
                                           spill_dir=Path(spill) / "features")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save(Path(out_dir) / "image.keras")
    result = {**training_summary(history, n_train=len(train), n_val=len(val)),
              **history.get("features", {}), **_featurized(photo_features)}
    log.info("train_image: %s", result)
    return TrainedModel.write(out_dir, "image", labels, history, result)
