"""train_text: Word2Vec (CBOW) on the training corpus feeding a Keras text CNN, or a TF-Hub encoder."""

import json
import logging
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def train_text(cfg: Config, clean_dir: str | Path, out_dir: str | Path) -> dict:
    """Train on the train split's listing texts; write ``text.keras``, ``vocab.json``, history."""
    import numpy as np

    from marketsearch import snapshot
    from marketsearch.models.text import train_text_model
    from marketsearch.tracking import training_summary

    products = snapshot.read_table(clean_dir, "products")
    labels = sorted(products["category"].unique())
    index = {c: i for i, c in enumerate(labels)}
    y = products["category"].map(index).to_numpy(np.int32)
    train = (products["split"] == "train").to_numpy()
    val = (products["split"] == "val").to_numpy()
    texts = products["text"].tolist()
    pick = lambda mask: [t for t, m in zip(texts, mask) if m]  # noqa: E731
    model, vocab, history = train_text_model(pick(train), y[train], pick(val), y[val], len(labels),
                                             cfg.text_model, cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "text.keras")
    (out_dir / "vocab.json").write_text(json.dumps(vocab or {}))
    (out_dir / "history.json").write_text(json.dumps(history, default=float))
    (out_dir / "labels.json").write_text(json.dumps(labels))
    result = training_summary(history, n_train=train.sum(), n_val=val.sum(), vocab_size=len(vocab or {}))
    log.info("train_text: %s", result)
    return result


def train_text_component(config_json: str, parent_run_id: str, clean_data: dsl.Input[dsl.Dataset],
                         text_model: dsl.Output[dsl.Model], curves: dsl.Output[dsl.HTML]):
    """KFP: train the text model; training curves to MLflow and the KFP UI."""
    import mlflow

    from marketsearch import tracking
    from marketsearch.components.train_text import train_text
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "train_text"):
        mlflow.log_params(tracking.flatten(cfg.text_model.model_dump(), "text_model."))
        result = train_text(cfg, clean_data.path, text_model.path)
        tracking.report_training(text_model.path, "text", "Text model", result, curves.path)
    text_model.metadata.update(result)
