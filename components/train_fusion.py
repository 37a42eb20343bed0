"""train_fusion: image + text embeddings concatenated into a trained head -> the served model.

The output is the model part of the bundle (see marketsearch.bundle): both single-modality
models, the assembled fused model, the vocabulary and the preprocessing metadata.
"""

import json
import logging
import shutil
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def train_fusion(cfg: Config, clean_dir: str | Path, image_dir: str | Path, text_dir: str | Path,
                 out_dir: str | Path) -> dict:
    import keras
    import numpy as np

    import marketsearch.models  # noqa: F401  custom layers
    from marketsearch.bundle import META, pair_arrays
    from marketsearch.components.clean import CleanData
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.fusion import assemble_fused_model, embedding_model, train_fusion_head
    from marketsearch.models.image import features_model, head_from_features
    from marketsearch.models.text import prepare_text_input, text_input_kind
    from marketsearch.tracking import training_summary

    data = CleanData.load(clean_dir)
    labels = data.labels
    for d in (image_dir, text_dir):
        trained = json.loads((Path(d) / "labels.json").read_text())
        if trained != labels:
            raise ValueError(f"{d} was trained on labels {trained}, the clean data has {labels}")
    image_model = keras.models.load_model(Path(image_dir) / "image.keras", compile=False)
    text_model = keras.models.load_model(Path(text_dir) / "text.keras", compile=False)
    vocab = json.loads((Path(text_dir) / "vocab.json").read_text())
    kind = text_input_kind(text_model)
    max_len = cfg.text_model.max_len
    # Photo embeddings from the cached backbone features (train_image computed them) through
    # the photo model's head; the text model runs whole.
    cache = FeatureCache.from_config(cfg)
    photo_features, image_emb_model = features_model(image_model), head_from_features(image_model, "embedding")
    text_emb_model = embedding_model(text_model)
    index = {c: i for i, c in enumerate(labels)}

    def split_inputs(split: str):
        imgs = data.images[data.images["split"] == split]
        texts, pixels, cats, _ = pair_arrays(data.products, imgs, data.pixels)
        # listings without a photo train the text-only path of the head
        no_photo = data.products[(data.products["split"] == split)
                                 & ~data.products["id"].isin(data.images["product_id"])]
        texts = texts + no_photo["text"].tolist()
        cats = cats + no_photo["category"].tolist()
        feats = cache.features(photo_features, pixels, desc=f"photo features ({split})")
        img_e = image_emb_model.predict(feats, batch_size=256, verbose=0) if len(pixels) else \
            np.zeros((0, image_emb_model.output_shape[-1]), np.float32)
        img_e = np.concatenate([img_e, np.zeros((len(no_photo), img_e.shape[1]), np.float32)])
        txt_e = text_emb_model.predict(prepare_text_input(texts, kind, vocab, max_len),
                                       batch_size=256, verbose=0)
        y = np.array([index[c] for c in cats], np.int32)
        return img_e, txt_e, y

    img_tr, txt_tr, y_tr = split_inputs("train")
    img_va, txt_va, y_va = split_inputs("val")
    # a listing without a photo has an all-zero image embedding: the head reads that as absent
    # the trained models' own classifiers join the head, blended on the val embeddings
    head, history = train_fusion_head(img_tr, txt_tr, y_tr, img_va, txt_va, y_va, len(labels),
                                      cfg.fusion, cfg.seed, image_model=image_model,
                                      text_model=text_model)
    fused = assemble_fused_model(image_model, text_model, head)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fused.save(out_dir / "fused.keras")
    shutil.copy(Path(image_dir) / "image.keras", out_dir / "image.keras")
    shutil.copy(Path(text_dir) / "text.keras", out_dir / "text.keras")
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "history.json").write_text(json.dumps(history, default=float))
    meta = {"labels": labels, "image_size": int(data.pixels.shape[1]), "text_input": kind,
            "max_len": max_len, "image_backbone": cfg.image_model.backbone,
            "text_encoder": cfg.text_model.encoder, "embedding_dim": cfg.fusion.embedding_dim}
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    result = {**training_summary(history, n_train=len(y_tr), n_val=len(y_va)),
              **cache.stats.as_dict(), "fusion_choice": history.get("choice", "blend")}
    log.info("train_fusion: %s", result)
    return result


def train_fusion_component(config_json: str, parent_run_id: str, clean_data: dsl.Input[dsl.Dataset],
                           image_model: dsl.Input[dsl.Model], text_model: dsl.Input[dsl.Model],
                           fused_model: dsl.Output[dsl.Model], curves: dsl.Output[dsl.HTML]):
    """KFP: train the fusion head and assemble the served model."""
    import mlflow

    from marketsearch import tracking
    from marketsearch.components.train_fusion import train_fusion
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "train_fusion"):
        mlflow.log_params(tracking.flatten(cfg.fusion.model_dump(), "fusion."))
        result = train_fusion(cfg, clean_data.path, image_model.path, text_model.path, fused_model.path)
        tracking.report_training(fused_model.path, "fusion", "Fusion head", result, curves.path)
    fused_model.metadata.update(result)
