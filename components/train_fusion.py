"""train_fusion: image + text embeddings concatenated into a trained head -> the served model.

The output is the model part of the bundle (see marketsearch.bundle): both single-modality
models, the assembled fused model, the vocabulary and the preprocessing metadata.
"""

import json
import logging
import shutil
from pathlib import Path

from marketsearch.config import Config
from marketsearch.hub_handles import allow as allow_hub_handles
from marketsearch.records import CleanData, TrainedModel
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("fusion", "image_model", "text_model", "seed"),
      inputs={"clean_data": CleanData, "image": TrainedModel, "text": TrainedModel},
      output=("model", TrainedModel), views={"curves": "HTML"}, out_dir=True)
def train_fusion(cfg: Config, clean_data: CleanData, image: TrainedModel, text: TrainedModel,
                 out_dir: str | Path) -> TrainedModel:
    """The fusion head on the two models' embeddings, assembled with them into the served
    model: the bundle's model part (fused.keras, both models, vocab, meta) in ``out_dir``."""
    import numpy as np

    import marketsearch.models  # noqa: F401  custom layers
    from marketsearch.bundle import META, pair_arrays
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.fusion import assemble_fused_model, embedding_model, train_fusion_head
    from marketsearch.models.image import features_model, head_from_features
    from marketsearch.models.text import prepare_text_input, text_input_kind
    from marketsearch.tracking import training_summary

    allow_hub_handles([cfg.text_model.hub_handle])
    data = CleanData.coerce(clean_data)
    image_part, text_part = TrainedModel.coerce(image), TrainedModel.coerce(text)
    labels = data.labels
    for part in (image_part, text_part):
        part.check_labels(labels)
    image_model, text_model = image_part.model(), text_part.model()
    vocab = text_part.vocab
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
    shutil.copy(image_part.model_file, out_dir / "image.keras")
    shutil.copy(text_part.model_file, out_dir / "text.keras")
    meta = {"labels": labels, "image_size": int(data.pixels.shape[1]), "text_input": kind,
            "max_len": max_len, "image_backbone": cfg.image_model.backbone,
            "text_encoder": cfg.text_model.encoder, "embedding_dim": cfg.fusion.embedding_dim}
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    result = {**training_summary(history, n_train=len(y_tr), n_val=len(y_va)),
              **cache.stats.as_dict(), "fusion_choice": history.get("choice", "blend")}
    log.info("train_fusion: %s", result)
    return TrainedModel.write(out_dir, "fusion", labels, history, result, vocab=vocab)
