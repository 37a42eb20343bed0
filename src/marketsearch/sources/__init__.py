"""Where raw listings come from: local files, Postgres tables or an S3 prefix.

Every reader returns the same ``RawData``: the listings as the marketplace holds them (all
strings) and one row per photo with its bytes, or with ``source_error`` saying why the bytes
could not be read. Each also has an ``index_*`` form that reads everything but the photo
bytes: a photo index, whose rows ``fetch_photos`` completes with their bytes any number at a
time (``read_*`` fetch all of them), and a ``chunks_*`` form, a ``ChunkedSource``: the same
rows a chunk of at most ``data.ingest_chunk_rows`` at a time, never the whole table (ingest
reads that; the ``index_*`` forms are its chunks put together, one parsing path for both).
Nothing is validated here: a missing column or an unreadable photo is kept as it is found,
for the validate stage to report and quarantine. Only a source that is missing altogether
(no products.csv, no such table, no such bucket) raises.

Layout of a file source (a folder or an s3://bucket/prefix/)::

    products.csv        id, product_name, category, product_description, price, location
    images.csv          id, product_id, bucket_link, image_ref, create_time
    images/<id>.jpg     the photo of images.csv's row <id>

The package, one module per kind of source:

    common.py    ``RawData``, ``ChunkedSource``, the file names, shaping frames as str, reading
                 a CSV (``iter_csv_text``: in chunks), ``fetch_photos`` (the bytes of a photo
                 index's rows), ``PhotoIndexCodec`` (a photo index on disk)
    local.py     ``read_local`` / ``index_local`` / ``chunks_local``: a folder (``FolderPhotos``)
    s3.py        ``read_s3`` / ``index_s3`` / ``chunks_s3``: an s3://bucket/prefix/
                 (``S3Photos``, and the S3 client the others share)
    postgres.py  ``read_postgres`` / ``index_postgres`` / ``chunks_postgres``: two tables, photos
                 from a bytea column (``TablePhotos``), a folder or S3
    sampling.py  ``sample`` (stratified by root category) and ``concat``; ``Selection``, the rows
                 both keep, decided over chunks
    __init__.py  ``read_source`` / ``read_source_index`` / ``chunked_sources``: the source the
                 config names (``postgres_url_from``)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (CHUNK_ROWS, IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, ChunkedSource,
                     PhotoFetcher, PhotoIndexCodec, RawData, concat_chunks, conform,
                     fetch_photos, iter_csv_text, read_csv_text, union_columns)
from .local import FolderPhotos, chunks_local, index_local, read_local
from .postgres import TablePhotos, chunks_postgres, index_postgres, read_postgres, redact_url
from .postgres import _psycopg2_dsn, _table_sql  # noqa: F401  (marketsearch.fingerprint uses them)
from .s3 import S3_WORKERS, S3Photos, chunks_s3, index_s3, parse_s3_uri, read_s3, s3_client
from .sampling import Selection, concat, sample

if TYPE_CHECKING:
    from marketsearch.config import Config

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_ROWS", "IMAGES_FILE", "PHOTO_DIR", "PRODUCTS_FILE", "S3_WORKERS", "ChunkedSource",
    "FolderPhotos", "PhotoFetcher", "PhotoIndexCodec", "RawData", "S3Photos", "Selection",
    "TablePhotos", "chunked_sources", "chunks_local", "chunks_postgres", "chunks_s3", "concat",
    "concat_chunks", "conform", "fetch_photos", "index_local", "index_postgres", "index_s3",
    "iter_csv_text", "parse_s3_uri", "postgres_url_from", "read_csv_text", "read_local",
    "read_postgres", "read_s3", "read_source", "read_source_index", "redact_url", "s3_client",
    "sample", "union_columns",
]


# --- dispatch ------------------------------------------------------------------------------
def postgres_url_from(cfg: "Config") -> str:
    url = cfg.data.postgres_url or os.environ.get(cfg.data.postgres_url_env)
    if not url:
        raise ValueError("data.source is postgres but neither data.postgres_url nor the "
                         f"environment variable {cfg.data.postgres_url_env} is set")
    return url


def chunked_sources(cfg: "Config", chunk_rows: int | None = None) -> list[ChunkedSource]:
    """The configured source, then each of ``data.extra_local_dirs``, as ChunkedSources of
    ``chunk_rows`` rows a chunk (default ``data.ingest_chunk_rows``). Nothing is read yet but
    whether each is there. ``data.limit`` and the extra folders' copies of earlier rows are
    the reader's to apply: ``read_source_index`` puts them together with ``sample`` and
    ``concat``; ingest keeps the same rows chunk by chunk with ``Selection``."""
    data = cfg.data
    chunk_rows = chunk_rows or data.ingest_chunk_rows
    if data.source == "local":
        base = chunks_local(data.local_dir, chunk_rows)
    elif data.source == "s3":
        if not data.s3_uri:
            raise ValueError("data.source is s3 but data.s3_uri is not set")
        base = chunks_s3(data.s3_uri, endpoint_url=data.s3_endpoint_url, chunk_rows=chunk_rows)
    elif data.source == "postgres":
        url = postgres_url_from(cfg)
        log.info("reading Postgres %s", redact_url(url))
        # Photos: the images table's data column, else S3 (s3_uri/images/), else local files.
        if data.s3_uri:
            photos: str | None = f"{data.s3_uri.rstrip('/')}/{PHOTO_DIR}/"
        elif data.local_dir and (Path(data.local_dir) / PHOTO_DIR).is_dir():
            photos = str(Path(data.local_dir) / PHOTO_DIR)
        else:
            photos = None
        base = chunks_postgres(url, data.products_table, data.images_table, photos,
                               endpoint_url=data.s3_endpoint_url, chunk_rows=chunk_rows)
    else:  # pragma: no cover - the config model admits no other value
        raise ValueError(f"data.source {data.source!r} is not local, postgres or s3")
    return [base] + [chunks_local(extra, chunk_rows) for extra in data.extra_local_dirs]


def read_source_index(cfg: "Config", apply_limit: bool = True) -> RawData:
    """The configured source as a photo index (RawData without photo bytes; see common.py):
    every listing and photo row, ``data.limit`` sampling and ``data.extra_local_dirs`` applied
    as ``read_source`` applies them. ``fetch_photos`` reads the bytes of any of its rows.
    The whole catalogue's rows in memory: ingest reads ``chunked_sources`` instead."""
    base, *extras = chunked_sources(cfg)
    index = base.index()
    if apply_limit and cfg.data.limit is not None:
        index = sample(index, cfg.data.limit, cfg.seed)
    for extra in extras:
        index = concat(index, extra.index())
    log.info("indexed %d listings and %d photo rows from %s", len(index.products),
             len(index.images), index.source)
    return index


def read_source(cfg: "Config", apply_limit: bool = True) -> RawData:
    """Read the configured source, photo bytes included (the whole catalogue in memory: for
    small data and tests; ingest streams it shard by shard instead); with ``data.limit`` keep a
    stratified sample of it."""
    index = read_source_index(cfg, apply_limit)
    raw = RawData(index.products, fetch_photos(index.images), source=index.source)
    log.info("read %s", raw.summary())
    return raw
