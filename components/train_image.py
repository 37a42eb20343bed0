"""train_image: the photo model (ImageNet EfficientNet-Lite0: head on cached features, then
optionally its top blocks fine-tuned on the GPU nodes)."""

import json
import logging
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def train_image(cfg: Config, clean_dir: str | Path, out_dir: str | Path) -> dict:
    """Train on the train split's photos, early-stop on val; write ``image.keras`` + history."""
    import numpy as np

    from marketsearch.components.clean import CleanData
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.image import train_image_model
    from marketsearch.tracking import training_summary

    data = CleanData.load(clean_dir)
    labels = data.labels
    index = {c: i for i, c in enumerate(labels)}
    y = data.images["category"].map(index).to_numpy(np.int32)
    rows = data.images["row"].to_numpy()
    train = (data.images["split"] == "train").to_numpy()
    val = (data.images["split"] == "val").to_numpy()
    cache = FeatureCache.from_config(cfg)
    model, history = train_image_model(data.pixels[rows[train]], y[train], data.pixels[rows[val]], y[val],
                                       len(labels), cfg.image_model, cfg.seed, cache=cache)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "image.keras")
    (out_dir / "history.json").write_text(json.dumps(history, default=float))
    (out_dir / "labels.json").write_text(json.dumps(labels))
    result = {**training_summary(history, n_train=train.sum(), n_val=val.sum()),
              **history.get("features", {})}
    log.info("train_image: %s", result)
    return result


def train_image_component(config_json: str, parent_run_id: str, clean_data: dsl.Input[dsl.Dataset],
                          image_model: dsl.Output[dsl.Model], curves: dsl.Output[dsl.HTML]):
    """KFP: train the image model; training curves to MLflow and the KFP UI."""
    import mlflow

    from marketsearch import tracking
    from marketsearch.components.train_image import train_image
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "train_image"):
        mlflow.log_params(tracking.flatten(cfg.image_model.model_dump(), "image_model."))
        result = train_image(cfg, clean_data.path, image_model.path)
        tracking.report_training(image_model.path, "image", "Image model", result, curves.path)
    image_model.metadata.update(result)
