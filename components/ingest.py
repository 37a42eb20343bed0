"""ingest: listings and photos from the configured source -> raw snapshot with a content hash."""

import hashlib
import logging
from pathlib import Path

from kfp import dsl

from marketsearch.config import Config
from marketsearch import snapshot

log = logging.getLogger(__name__)


def ingest(cfg: Config, out_dir: str | Path) -> dict:
    """Read the source named by ``cfg.data`` and write ``products.parquet`` + ``images.parquet``
    (photo bytes and their sha256 inside) and ``snapshot.json`` (counts, source, content hash)."""
    from marketsearch import sources

    raw = sources.read_source(cfg)  # applies data.limit (a stratified sample) when set
    images = raw.images.copy()
    images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
    products = raw.products
    manifest = {
        "source": cfg.data.source,
        "location": {"local": cfg.data.local_dir, "s3": cfg.data.s3_uri,
                     "postgres": f"{cfg.data.products_table}, {cfg.data.images_table}"}[cfg.data.source],
        "n_products": int(len(products)),
        "n_images": int(len(images)),
        "n_images_unreadable": int((images["source_error"] != "").sum()),
        "content_hash": snapshot.content_hash(products, images.drop(columns=["source_error"])),
    }
    snapshot.write_tables(out_dir, products=products, images=images)
    snapshot.write_json(out_dir, "snapshot.json", manifest)
    log.info("ingest: %d listings, %d photos from %s (hash %s)", manifest["n_products"],
             manifest["n_images"], manifest["source"], manifest["content_hash"][:12])
    return manifest


def ingest_component(config_json: str, pipeline_run: str,
                     raw_snapshot: dsl.Output[dsl.Dataset]) -> str:
    """KFP: run ingest, open the MLflow parent run for this pipeline run, return its id."""
    from marketsearch.components.ingest import ingest
    from marketsearch.config import Config
    from marketsearch import tracking
    import mlflow

    cfg = Config.from_json(config_json)
    parent = tracking.start_parent(cfg, run_name=pipeline_run, tags={"pipeline_run": pipeline_run})
    with tracking.stage_run(cfg, parent, "ingest"):
        manifest = ingest(cfg, raw_snapshot.path)
        tracking.log_numbers({k: v for k, v in manifest.items() if k.startswith("n_")})
        mlflow.log_params({"source": manifest["source"], "content_hash": manifest["content_hash"],
                           "limit": cfg.data.limit})
        mlflow.log_artifact(f"{raw_snapshot.path}/snapshot.json")
    mlflow.MlflowClient().set_tag(parent, "data.content_hash", manifest["content_hash"])
    for key, value in manifest.items():
        raw_snapshot.metadata[key] = value
    return parent
