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

from marketsearch import checksums
from marketsearch.bundle import Bundle
from marketsearch.config import Config
from marketsearch.hub_handles import allow as allow_hub_handles
from marketsearch.records import CleanPlan, CleanShard, TrainedModel
from marketsearch.steps import step

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


@step(reads=("index", "drift", "image_model", "text_model", "seed"),
      inputs={"clean_data": [CleanShard], "plan": CleanPlan, "fused_model": TrainedModel},
      output=("bundle", Bundle), out_dir=True)
def build_index(cfg: Config, clean_data, fused_model: TrainedModel, out_dir: str | Path,
                plan: CleanPlan | None = None) -> Bundle:
    """The complete bundle in ``out_dir``: the fused model's files, the index of every clean
    listing, thumbnails, the ids the models learned from and the drift reference.
    ``clean_data``: the clean shards (with gather_clean's ``plan``) or one CleanData; the
    listings are embedded shard by shard into a memory-mapped array the index is built from."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from marketsearch.bundle import BUILD_FILE, MODEL_FILES, SEEN_FILE, THUMBNAILS_FILE
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.drift import write_reference
    from marketsearch.feature_cache import FeatureCache
    from marketsearch.index import SearchIndex

    allow_hub_handles([cfg.text_model.hub_handle])
    catalogue = CleanCatalogue.of(clean_data, plan)
    model_dir = TrainedModel.coerce(fused_model).root
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (model_dir / name).is_dir():
            shutil.copytree(model_dir / name, out_dir / name, dirs_exist_ok=True)
        elif (model_dir / name).exists():
            shutil.copy(model_dir / name, out_dir / name)
    bundle = Bundle(out_dir)
    bundle.feature_cache = FeatureCache.from_config(cfg)  # featurize_shard computed these photos
    dim = int(bundle.meta.get("embedding_dim", 256))
    ids: list[str] = []
    metas: list[pd.DataFrame] = []
    thumbs = None
    with tempfile.TemporaryDirectory(prefix="build-index-") as tmp:
        vecs = np.lib.format.open_memmap(Path(tmp) / "vectors.npy", mode="w+", dtype=np.float32,
                                         shape=(len(catalogue), dim))
        for part in catalogue.parts():
            part_ids, part_vecs = listing_embeddings(bundle, part.products, part.images,
                                                     part.pixels)
            vecs[len(ids):len(ids) + len(part_ids)] = part_vecs
            ids += part_ids
            metas.append(_index_meta(part))
            if len(part.thumbnails):
                table = pa.Table.from_pandas(part.thumbnails, preserve_index=False)
                thumbs = thumbs or pq.ParquetWriter(out_dir / THUMBNAILS_FILE, table.schema)
                thumbs.write_table(table.cast(thumbs.schema))
        if thumbs is not None:
            thumbs.close()
        vecs = vecs[:len(ids)]
        index = SearchIndex.build(vecs, ids, pd.concat(metas, ignore_index=True), cfg.index)
        rng = np.random.default_rng(cfg.seed)
        queries = np.asarray(vecs[rng.choice(len(vecs), size=min(500, len(vecs)), replace=False)])
        recall = index.recall_at_k(vecs, queries, cfg.index.recall_k)
        index.save(out_dir / "index")
        del vecs
    listings = catalogue.listings
    seen = listings.loc[listings["split"].isin(["train", "val"]), "id"]
    (out_dir / SEEN_FILE).write_text(json.dumps(sorted(seen.astype(str))))
    # The drift reference (training split; model statistics on the held-out split) travels in
    # the bundle, so it is versioned and registered with the model it describes; drawn from
    # a seeded sample of at most drift.reference_max_listings listings, whose photos stay in
    # their shards until the reference's own samples read them.
    sample = catalogue.gathered(ids=catalogue.sample_ids(cfg.drift.reference_max_listings,
                                                         cfg.seed), lazy=True)
    reference = write_reference(bundle, sample.products, sample.images, sample.pixels,
                                cfg.drift, cfg.seed)
    result = {"n_listings": len(ids), "index_type": cfg.index.type_for(len(ids)), "dim": dim,
              f"recall_at_{cfg.index.recall_k}": float(recall), **reference}
    (out_dir / BUILD_FILE).write_text(json.dumps(result, indent=2, default=float))
    checksums.write(out_dir)             # last: the bundle is complete as it stands now
    log.info("build_index: %s", result)
    return bundle


def _index_meta(part) -> pd.DataFrame:
    """What the search page shows of a shard's listings, with each one's first photo."""
    first_photo = part.images.drop_duplicates("product_id").set_index("product_id")["id"]
    meta = part.products[["id", "title", "price", "category", "location", "lat", "lon"]].copy()
    meta["photo_id"] = meta["id"].map(first_photo).fillna("")
    return meta
