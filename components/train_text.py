"""train_text: Word2Vec (CBOW) on the training corpus feeding a Keras text CNN, or a TF-Hub encoder."""

import logging

from marketsearch.config import Config
from marketsearch.records import CleanData, TrainedModel
from marketsearch.steps import step

log = logging.getLogger(__name__)


@step(reads=("text_model", "seed"), inputs={"clean_data": CleanData},
      output=("model", TrainedModel), views={"curves": "HTML"}, out_dir=True)
def train_text(cfg: Config, clean_data: CleanData, out_dir) -> TrainedModel:
    """Train on the train split's listing texts; ``text.keras`` and ``vocab.json`` in ``out_dir``."""
    from pathlib import Path

    import numpy as np

    from marketsearch.models.text import train_text_model
    from marketsearch.tracking import training_summary

    products = CleanData.coerce(clean_data).products
    labels = sorted(products["category"].unique())
    index = {c: i for i, c in enumerate(labels)}
    y = products["category"].map(index).to_numpy(np.int32)
    train = (products["split"] == "train").to_numpy()
    val = (products["split"] == "val").to_numpy()
    texts = products["text"].tolist()
    pick = lambda mask: [t for t, m in zip(texts, mask) if m]  # noqa: E731
    model, vocab, history = train_text_model(pick(train), y[train], pick(val), y[val], len(labels),
                                             cfg.text_model, cfg.seed)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save(Path(out_dir) / "text.keras")
    result = training_summary(history, n_train=train.sum(), n_val=val.sum(), vocab_size=len(vocab or {}))
    log.info("train_text: %s", result)
    return TrainedModel.write(out_dir, "text", labels, history, result, vocab=vocab or {})
