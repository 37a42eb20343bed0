"""train_image: the photo model (ImageNet EfficientNet-Lite0: head on cached features, then
optionally its top blocks fine-tuned on the GPU nodes)."""

import logging

from marketsearch.config import Config
from marketsearch.records import CleanData, TrainedModel
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("image_model", "seed"), inputs={"clean_data": CleanData},
      output=("model", TrainedModel), views={"curves": "HTML"}, out_dir=True)
def train_image(cfg: Config, clean_data: CleanData, out_dir) -> TrainedModel:
    """Train on the train split's photos, early-stop on val; ``image.keras`` in ``out_dir``."""
    from pathlib import Path

    import numpy as np

    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.image import train_image_model
    from marketsearch.tracking import training_summary

    data = CleanData.coerce(clean_data)
    labels = data.labels
    index = {c: i for i, c in enumerate(labels)}
    y = data.images["category"].map(index).to_numpy(np.int32)
    rows = data.images["row"].to_numpy()
    train = (data.images["split"] == "train").to_numpy()
    val = (data.images["split"] == "val").to_numpy()
    cache = FeatureCache.from_config(cfg)
    model, history = train_image_model(data.pixels[rows[train]], y[train], data.pixels[rows[val]], y[val],
                                       len(labels), cfg.image_model, cfg.seed, cache=cache)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save(Path(out_dir) / "image.keras")
    result = {**training_summary(history, n_train=train.sum(), n_val=val.sum()),
              **history.get("features", {})}
    log.info("train_image: %s", result)
    return TrainedModel.write(out_dir, "image", labels, history, result)
