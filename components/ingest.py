"""ingest: listings and photos from the configured source -> raw snapshot with a content hash.

``open_run`` (components/run.py) runs first and is never cached: it fingerprints the source
cheaply (marketsearch.fingerprint). ingest takes that fingerprint as an input, so KFP may cache it:
unchanged data is not read again, and every stage after it can reuse its earlier outputs.
"""

import hashlib
import logging

from marketsearch import snapshot
from marketsearch.config import Config
from marketsearch.records import Snapshot
from marketsearch.steps import step

log = logging.getLogger(__name__)


def shard_entries(snap: Snapshot) -> list:
    """The task's output: the saved snapshot's shards (name, path, counts, content hash), the
    items the training DAG fans out over."""
    return list(snap.manifest["shards"])


@step(reads=("data", "seed"), params={"version": "str"}, output=("raw_snapshot", Snapshot),
      returns=shard_entries, returns_type="list")
def ingest(cfg: Config, version: str = "") -> Snapshot:
    """Read the source named by ``cfg.data`` (``data.limit``: a stratified sample): the
    listings, the photos with their bytes and sha256, and a manifest with the content hash.
    ``version``: the source's fingerprint when it was read (recorded in the manifest)."""
    from marketsearch import sources

    raw = sources.read_source(cfg)
    images = raw.images.copy()
    images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
    products = raw.products
    manifest = {
        "source": cfg.data.source,
        "location": {"local": cfg.data.local_dir, "s3": cfg.data.s3_uri,
                     "postgres": f"{cfg.data.products_table}, {cfg.data.images_table}"}[cfg.data.source],
        "source_version": version,
        "n_products": int(len(products)),
        "n_images": int(len(images)),
        "n_images_unreadable": int((images["source_error"] != "").sum()),
        "content_hash": snapshot.content_hash(products, images.drop(columns=["source_error"])),
    }
    log.info("ingest: %d listings, %d photos from %s (hash %s)", manifest["n_products"],
             manifest["n_images"], manifest["source"], manifest["content_hash"][:12])
    return Snapshot(products, images, manifest, shard_rows=cfg.data.shard_rows)
