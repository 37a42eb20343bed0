"""ingest: listings and photos from the configured source -> raw snapshot with a content hash.

``open_run`` (components/run.py) runs first and is never cached: it fingerprints the source
cheaply (marketsearch.fingerprint). ingest takes that fingerprint as an input, so KFP may cache it:
unchanged data is not read again, and every stage after it can reuse its earlier outputs.

Streamed: ingest reads the listings and the photo rows without their bytes first (a photo index,
marketsearch.sources), assigns the shards from that (marketsearch.shards), then fetches, hashes
and writes one shard's photos at a time, so it never holds more than one shard's photo bytes.
"""

import hashlib
import logging
import tempfile
from pathlib import Path

from marketsearch import shards, snapshot
from marketsearch.config import Config
from marketsearch.records import Snapshot
from marketsearch.steps import step

log = logging.getLogger(__name__)


def shard_entries(snap: Snapshot) -> list:
    """The task's output: the saved snapshot's shards (name, path, counts, content hash), the
    items the training DAG fans out over."""
    return list(snap.manifest["shards"])


@step(reads=("data", "seed"), params={"version": "str"}, output=("raw_snapshot", Snapshot),
      returns=shard_entries, returns_type="list", out_dir=True)
def ingest(cfg: Config, version: str = "", out_dir: str | Path | None = None) -> Snapshot:
    """Read the source named by ``cfg.data`` (``data.limit``: a stratified sample) into a raw
    snapshot in ``out_dir``: each shard's listings and photos (bytes, sha256, source_error)
    and snapshot.json, the manifest (source, location, source_version, counts, content hash,
    shard_rows, shards). ``version``: the source's fingerprint when it was read.

    One shard's photo bytes in memory at a time. The manifest's ``content_hash`` is
    ``snapshot.combined_hash`` over the shards: per shard, ``snapshot.content_hash`` of its
    listings and photo rows (sha256 of the bytes included, ``source_error`` left out). It
    changes when any listing or photo byte does (or ``data.shard_rows``), not with the order
    the source returns rows in. (Each shard's own entry keeps ``source_error`` in its hash.)

    Without ``out_dir`` the shards go to a temporary directory that lives as long as the
    returned record: ``save`` it to keep it."""
    from marketsearch import sources

    staging = None
    if out_dir is None:
        staging = tempfile.TemporaryDirectory(prefix="ingest-")
        out_dir = staging.name
    out_dir = Path(out_dir)
    index = sources.read_source_index(cfg)
    products, photo_rows = index.products, index.images
    shard_rows = cfg.data.shard_rows or max(len(products), 1)
    entries, data_hashes = [], {}
    n_unreadable = 0
    for name, listings, rows in shards.assign(products, photo_rows, shard_rows):
        images = sources.fetch_photos(rows)
        images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
        n_unreadable += int((images["source_error"] != "").sum())
        entries.append(shards.write_shard(out_dir, name, listings, images))
        data_hashes[name] = snapshot.content_hash(listings, images.drop(columns=["source_error"]))
        del images                       # this shard's bytes go before the next one's come
    manifest = {
        "source": cfg.data.source,
        "location": {"local": cfg.data.local_dir, "s3": cfg.data.s3_uri,
                     "postgres": f"{cfg.data.products_table}, {cfg.data.images_table}"}[cfg.data.source],
        "source_version": version,
        "n_products": int(len(products)),
        "n_images": int(len(photo_rows)),
        "n_images_unreadable": n_unreadable,
        "content_hash": snapshot.combined_hash(data_hashes),
        "shard_rows": cfg.data.shard_rows,
        "shards": [e.as_dict() for e in entries],
    }
    snapshot.write_json(out_dir, "snapshot.json", manifest)
    log.info("ingest: %d listings, %d photos from %s in %d shard(s) (hash %s)",
             manifest["n_products"], manifest["n_images"], manifest["source"], len(entries),
             manifest["content_hash"][:12])
    return Snapshot.written(out_dir, manifest, staging)
