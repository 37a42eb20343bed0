"""train_text: Word2Vec (CBOW) on the training corpus feeding a Keras text CNN, or a TF-Hub
encoder, trained on the clean shards streamed (marketsearch.streaming): Word2Vec reads the
corpus shard by shard on each pass, the CNN takes the encoded texts through tf.data."""

import logging

from marketsearch.config import Config
from marketsearch.records import CleanPlan, CleanShard, TrainedModel
from marketsearch.steps import step

log = logging.getLogger(__name__)


def text_parts(catalogue, labels: list[str], split: str):
    """The ``split``'s listing texts and labels, a part per shard, read again on each pass."""
    import numpy as np

    from marketsearch.streaming import TextParts

    index = {c: i for i, c in enumerate(labels)}
    return TextParts(lambda: (
        (p["text"].tolist(), p["category"].map(index).to_numpy(np.int32))
        for p in catalogue.listing_parts(split, ["text", "category"])))


@step(reads=("text_model", "data", "seed"), inputs={"clean_data": [CleanShard], "plan": CleanPlan},
      output=("model", TrainedModel), views={"curves": "HTML"}, out_dir=True)
def train_text(cfg: Config, clean_data, out_dir, plan: CleanPlan | None = None) -> TrainedModel:
    """Train on the train split's listing texts; ``text.keras`` and ``vocab.json`` in
    ``out_dir``. ``clean_data``: the clean shards (with gather_clean's ``plan``) or one
    CleanData."""
    import tempfile
    from pathlib import Path

    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.models.text import train_text_model
    from marketsearch.tracking import training_summary

    catalogue = CleanCatalogue.of(clean_data, plan)
    labels = catalogue.labels
    train, val = text_parts(catalogue, labels, "train"), text_parts(catalogue, labels, "val")
    with tempfile.TemporaryDirectory(prefix="train-text-") as spill:
        model, vocab, history = train_text_model(train, None, val, None, len(labels),
                                                 cfg.text_model, cfg.seed,
                                                 shuffle_buffer=cfg.data.shuffle_buffer,
                                                 spill_dir=spill)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save(Path(out_dir) / "text.keras")
    splits = catalogue.summary.get("splits", {})
    result = training_summary(history, n_train=splits.get("train", len(train)),
                              n_val=splits.get("val", len(val)), vocab_size=len(vocab or {}))
    log.info("train_text: %s", result)
    return TrainedModel.write(out_dir, "text", labels, history, result, vocab=vocab or {})
