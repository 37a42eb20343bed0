"""train_fusion: image + text embeddings concatenated into a trained head -> the served model,
then the price head on its fused embeddings (marketsearch.pricing).

The output is the model part of the bundle (see marketsearch.bundle): both single-modality
models, the assembled fused model, the price head and its baselines, the vocabulary and the
preprocessing metadata.
"""

import json
import logging
import shutil
from pathlib import Path

from marketsearch.config import Config
from marketsearch.hub_handles import allow as allow_hub_handles
from marketsearch.records import CleanPlan, CleanShard, TrainedModel
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("fusion", "price", "image_model", "text_model", "data", "seed", "index"),
      inputs={"clean_data": [CleanShard], "plan": CleanPlan, "image": TrainedModel,
              "text": TrainedModel},
      output=("model", TrainedModel), views={"curves": "HTML"}, out_dir=True)
def train_fusion(cfg: Config, clean_data, image: TrainedModel, text: TrainedModel,
                 out_dir: str | Path, plan: CleanPlan | None = None) -> TrainedModel:
    """The fusion head on the two models' embeddings, assembled with them into the served
    model: the bundle's model part (fused.keras, both models, vocab, meta) in ``out_dir``.
    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData; the
    embeddings are computed shard by shard and streamed."""
    import tempfile

    import marketsearch.models  # noqa: F401  custom layers
    from marketsearch.bundle import META, Bundle
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.models.fusion import (assemble_fused_model, embedding_model,
                                            train_fusion_head_streamed)
    from marketsearch.models.image import features_model, head_from_features
    from marketsearch.models.text import text_input_kind
    from marketsearch.pricing import train_price
    from marketsearch.streaming import Examples
    from marketsearch.tracking import training_summary

    allow_hub_handles([cfg.text_model.hub_handle])
    catalogue = CleanCatalogue.of(clean_data, plan)
    image_part, text_part = TrainedModel.coerce(image), TrainedModel.coerce(text)
    labels = catalogue.labels
    for part in (image_part, text_part):
        part.check_labels(labels)
    image_model, text_model = image_part.model(), text_part.model()
    vocab = text_part.vocab
    kind = text_input_kind(text_model)
    max_len = cfg.text_model.max_len
    # Photo embeddings from the cached backbone features (featurize_shard computed them) through
    # the photo model's head; the text model runs whole.
    cache = FeatureCache.from_config(cfg)
    models = (features_model(image_model), head_from_features(image_model, "embedding"),
              embedding_model(text_model))
    with tempfile.TemporaryDirectory(prefix="train-fusion-") as spill:
        pairs = {split: Examples(Path(spill) / split) for split in ("train", "val")}
        for split, examples in pairs.items():
            for part in catalogue.parts(split):
                examples.add(*pair_embeddings(part, labels, models, cache, kind, vocab, max_len))
        # a listing without a photo has an all-zero image embedding: the head reads that as
        # absent; the trained models' own classifiers join the head, blended on the val pairs
        head, history = train_fusion_head_streamed(
            pairs["train"], pairs["val"], len(labels), cfg.fusion, cfg.seed,
            image_model=image_model, text_model=text_model,
            shuffle_buffer=cfg.data.shuffle_buffer)
        n_train, n_val = len(pairs["train"]), len(pairs["val"])
    fused = assemble_fused_model(image_model, text_model, head)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fused.save(out_dir / "fused.keras")
    shutil.copy(image_part.model_file, out_dir / "image.keras")
    shutil.copy(text_part.model_file, out_dir / "text.keras")
    meta = {"labels": labels, "image_size": catalogue.image_size, "text_input": kind,
            "max_len": max_len, "image_backbone": cfg.image_model.backbone,
            "text_encoder": cfg.text_model.encoder, "embedding_dim": cfg.fusion.embedding_dim}
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    (out_dir / "vocab.json").write_text(json.dumps(vocab or {}))
    # the price head learns from the fused embeddings as the server computes them (the
    # bundle's own files: the model part is complete from here, vocabulary included)
    part = Bundle(out_dir)
    part.feature_cache = cache
    priced = train_price(cfg, catalogue, part, out_dir)
    history["price"] = priced["price_history"]
    result = {**training_summary(history, n_train=n_train, n_val=n_val),
              **cache.stats.as_dict(), "fusion_choice": history.get("choice", "blend"),
              **{f"price_{k}": v for k, v in priced["price"].items()}}
    log.info("train_fusion: %s", result)
    return TrainedModel.write(out_dir, "fusion", labels, history, result, vocab=vocab)


def pair_embeddings(part, labels: list[str], models, cache, kind: str, vocab, max_len: int):
    """One shard's (image embeddings, text embeddings) per photo-listing pair, then one row
    per listing without a photo (zero image embedding: the text-only path), and the labels."""
    import numpy as np

    from marketsearch.bundle import pair_arrays
    from marketsearch.models.text import prepare_text_input

    photo_features, image_emb_model, text_emb_model = models
    texts, pixels, cats, _ = pair_arrays(part.products, part.images, part.pixels)
    no_photo = part.products[~part.products["id"].isin(part.images["product_id"])]
    texts = texts + no_photo["text"].tolist()
    cats = cats + no_photo["category"].tolist()
    feats = cache.features(photo_features, np.asarray(pixels), desc="photo features")
    img_e = image_emb_model.predict(feats, batch_size=256, verbose=0) if len(pixels) else \
        np.zeros((0, image_emb_model.output_shape[-1]), np.float32)
    img_e = np.concatenate([img_e, np.zeros((len(no_photo), img_e.shape[1]), np.float32)])
    txt_e = text_emb_model.predict(prepare_text_input(texts, kind, vocab, max_len),
                                   batch_size=256, verbose=0)
    index = {c: i for i, c in enumerate(labels)}
    return (img_e, txt_e), np.array([index[c] for c in cats], np.int32)
