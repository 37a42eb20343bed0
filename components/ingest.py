"""ingest: listings and photos from the configured source -> raw snapshot with a content hash.

``open_run`` (components/run.py) runs first and is never cached: it fingerprints the source
cheaply (marketsearch.fingerprint). ingest takes that fingerprint as an input, so KFP may cache it:
unchanged data is not read again, and every stage after it can reuse its earlier outputs.

Streamed: ingest never holds the catalogue. It reads each source a chunk of
``data.ingest_chunk_rows`` rows at a time (listing rows, then photo rows without their bytes:
marketsearch.sources' ChunkedSource) and writes each chunk to a scratch file as it comes,
keeping 8 bytes a listing (its id's hash, marketsearch.shards) and what ``data.limit`` and
``data.extra_local_dirs`` decide by (sources.Selection). From the hashes it splits the shards,
deals the chunks' rows to files of neighbouring shards (shards.Spill), then reads them back one
group of shards at a time and fetches, hashes and writes one shard's photos at a time. Its
memory is a chunk or a shard (and its photo bytes), whatever the catalogue's size; its disk,
about the catalogue's rows once more while it runs. The snapshot is the one a whole read
(sources.read_source_index, then shards.assign) gives: the same shards, rows, order and hashes.
"""

import hashlib
import logging
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

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

    A chunk of rows, or one shard's rows and photo bytes, in memory at a time (see the module
    docstring); scratch files in the temporary directory meanwhile. The manifest's
    ``content_hash`` is ``snapshot.combined_hash`` over the shards: per shard,
    ``snapshot.content_hash`` of its listings and photo rows (sha256 of the bytes included,
    ``source_error`` left out). It changes when any listing or photo byte does (or
    ``data.shard_rows``), not with the order the source returns rows in, nor with
    ``data.ingest_chunk_rows``. (Each shard's own entry keeps ``source_error`` in its hash.)

    Without ``out_dir`` the shards go to a temporary directory that lives as long as the
    returned record: ``save`` it to keep it."""
    from marketsearch import sources

    staging = None
    if out_dir is None:
        staging = tempfile.TemporaryDirectory(prefix="ingest-")
        out_dir = staging.name
    out_dir = Path(out_dir)
    chunk_rows = cfg.data.ingest_chunk_rows
    readers = sources.chunked_sources(cfg, chunk_rows)
    select = sources.Selection([r.source for r in readers], cfg.data.limit, cfg.seed)
    codec = sources.PhotoIndexCodec()             # a photo row's fetcher, while it is on disk
    columns: dict[str, dict[int, list]] = {"products": {}, "images": {}}
    entries, data_hashes = [], {}
    n_products = n_images = n_unreadable = 0
    with tempfile.TemporaryDirectory(prefix="ingest-spill-") as scratch:
        spill = shards.Spill(scratch, cfg.data.shard_rows, group_rows=chunk_rows)
        # pass 1: every chunk to a scratch file; the sources last to first (Selection's order)
        with tqdm(desc="ingest: read rows", unit="row", mininterval=2) as bar:
            for k in reversed(range(len(readers))):
                for chunk in readers[k].listings():
                    columns["products"].setdefault(k, list(chunk.columns))
                    select.listings(k, chunk)
                    spill.put("products", k, chunk)
                    bar.update(len(chunk))
                for chunk in readers[k].photos():
                    columns["images"].setdefault(k, list(chunk.columns))
                    select.photos(k, chunk)
                    spill.put("images", k, codec.encode(chunk))
                    bar.update(len(chunk))
                select.done(k)
        # pass 2: the shards split from the hashes of the listings kept; rows dealt to them
        every = range(len(readers))
        spill.deal({k: select.listing_mask(k) for k in every},
                   {k: select.photo_mask(k) for k in every})
        # a shard's columns: every source's, as sources.concat puts them together
        product_columns = sources.union_columns(columns["products"][k] for k in every)
        image_columns = sources.union_columns(columns["images"][k] for k in every)
        # pass 3: a shard at a time, its photos fetched, hashed and written
        for prefix, listings, plain in tqdm(spill.shards(), total=spill.n_shards,
                                            desc="ingest: write shards", unit="shard"):
            listings = sources.conform(listings, product_columns, "")
            if len(readers) > 1:                  # as sources.concat leaves them
                listings = listings.fillna("")
            images = sources.fetch_photos(codec.decode(plain, image_columns))
            del plain
            images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
            n_unreadable += int((images["source_error"] != "").sum())
            n_products += len(listings)
            n_images += len(images)
            name = shards.shard_name(prefix)
            entries.append(shards.write_shard(out_dir, name, listings, images))
            data_hashes[name] = snapshot.content_hash(listings,
                                                      images.drop(columns=["source_error"]))
            del images                   # this shard's bytes go before the next one's come
    manifest = {
        "source": cfg.data.source,
        "location": {"local": cfg.data.local_dir, "s3": cfg.data.s3_uri,
                     "postgres": f"{cfg.data.products_table}, {cfg.data.images_table}"}[cfg.data.source],
        "source_version": version,
        "n_products": int(n_products),
        "n_images": int(n_images),
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
