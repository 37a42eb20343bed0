"""build_index: a FAISS index over the fused embeddings of every clean listing, with its id map.

A listing's vector is the mean of the fused embeddings of its photo–text pairs (text only
when it has no photo), L2-normalised. The output directory is the complete bundle: the model
files from train_fusion plus ``index/``, the listings' photo thumbnails for the search page and
``reference/``, the drift checks' reference (marketsearch.drift).
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from marketsearch.config import Config

log = logging.getLogger(__name__)


def listing_embeddings(bundle, products: pd.DataFrame, images: pd.DataFrame,
                       pixels: np.ndarray) -> tuple[list[str], np.ndarray]:
    from marketsearch.bundle import pair_arrays
    from marketsearch.index import normalize

    texts, px, _, pids = pair_arrays(products, images, pixels)
    pair_vecs = bundle.predict(texts, px, per_modality=False).fused_embedding if texts else None
    no_photo = products[~products["id"].isin(images["product_id"])]
    ids = products["id"].tolist()
    dim = bundle.meta.get("embedding_dim", 256)
    vecs = np.zeros((len(ids), pair_vecs.shape[1] if pair_vecs is not None else dim), np.float32)
    row = {pid: i for i, pid in enumerate(ids)}
    if pair_vecs is not None:
        counts = np.zeros(len(ids))
        np.add.at(vecs, [row[p] for p in pids], normalize(pair_vecs))
        np.add.at(counts, [row[p] for p in pids], 1)
    if len(no_photo):
        text_vecs = bundle.predict(no_photo["text"].tolist(), None, per_modality=False).fused_embedding
        vecs[[row[p] for p in no_photo["id"]]] = normalize(text_vecs)
    return ids, normalize(vecs)


def build_index(cfg: Config, clean_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> dict:
    from marketsearch.bundle import MODEL_FILES, SEEN_FILE, THUMBNAILS_FILE, Bundle
    from marketsearch.components.clean import CleanData
    from marketsearch.drift import write_reference
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.index import SearchIndex

    data = CleanData.load(clean_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (Path(model_dir) / name).exists():
            shutil.copy(Path(model_dir) / name, out_dir / name)
    bundle = Bundle(out_dir)
    bundle.feature_cache = FeatureCache.from_config(cfg)  # train_image computed these photos
    ids, vecs = listing_embeddings(bundle, data.products, data.images, data.pixels)
    first_photo = data.images.drop_duplicates("product_id").set_index("product_id")["id"]
    meta = data.products[["id", "title", "price", "category", "location", "lat", "lon"]].copy()
    meta["photo_id"] = meta["id"].map(first_photo).fillna("")
    index = SearchIndex.build(vecs, ids, meta, cfg.index)
    rng = np.random.default_rng(cfg.seed)
    queries = vecs[rng.choice(len(vecs), size=min(500, len(vecs)), replace=False)]
    recall = index.recall_at_k(vecs, queries, cfg.index.recall_k)
    index.save(out_dir / "index")
    if len(data.thumbnails):
        data.thumbnails.to_parquet(out_dir / THUMBNAILS_FILE, index=False)
    seen = data.products.loc[data.products["split"].isin(["train", "val"]), "id"]
    (out_dir / SEEN_FILE).write_text(json.dumps(sorted(seen.astype(str))))
    # The drift reference (training split; model statistics on the held-out split) travels in
    # the bundle, so it is versioned and registered with the model it describes.
    reference = write_reference(bundle, data.products, data.images, data.pixels, cfg.drift,
                                cfg.seed)
    result = {"n_listings": len(ids), "index_type": cfg.index.type_for(len(ids)), "dim": int(vecs.shape[1]),
              f"recall_at_{cfg.index.recall_k}": float(recall), **reference}
    log.info("build_index: %s", result)
    return result


def build_index_component(config_json: str, parent_run_id: str, clean_data: dsl.Input[dsl.Dataset],
                          fused_model: dsl.Input[dsl.Model], bundle: dsl.Output[dsl.Model]):
    """KFP: embed the catalogue, build the index, emit the complete bundle."""
    import mlflow

    from marketsearch import tracking
    from marketsearch.components.build_index import build_index
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "build_index"):
        mlflow.log_params(tracking.flatten(cfg.index.model_dump(), "index."))
        result = build_index(cfg, clean_data.path, fused_model.path, bundle.path)
        tracking.log_numbers(result)
        mlflow.log_artifact(f"{bundle.path}/index/manifest.json", "index")
    bundle.metadata.update(result)
