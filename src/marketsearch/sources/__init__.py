"""Where raw listings come from: local files, Postgres tables or an S3 prefix.

Every reader returns the same ``RawData``: the listings as the marketplace holds them (all
strings) and one row per photo with its bytes, or with ``source_error`` saying why the bytes
could not be read. Nothing is validated here: a missing column or an unreadable photo is
kept as it is found, for the validate stage to report and quarantine. Only a source that
is missing altogether (no products.csv, no such table, no such bucket) raises.

Layout of a file source (a folder or an s3://bucket/prefix/)::

    products.csv        id, product_name, category, product_description, price, location
    images.csv          id, product_id, bucket_link, image_ref, create_time
    images/<id>.jpg     the photo of images.csv's row <id>

The package, one module per kind of source:

    common.py    ``RawData``, the file names, shaping frames as str, reading a CSV
    local.py     ``read_local``: a folder
    s3.py        ``read_s3``: an s3://bucket/prefix/ (and the S3 client the others share)
    postgres.py  ``read_postgres``: two tables, photos from a bytea column, a folder or S3
    sampling.py  ``sample`` (stratified by root category) and ``concat``
    __init__.py  ``read_source``: the source the config names (``postgres_url_from``)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .common import IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, RawData, read_csv_text
from .local import read_local
from .postgres import read_postgres, redact_url
from .postgres import _psycopg2_dsn, _table_sql  # noqa: F401  (marketsearch.fingerprint uses them)
from .s3 import S3_WORKERS, parse_s3_uri, read_s3, s3_client
from .sampling import concat, sample

if TYPE_CHECKING:
    from marketsearch.config import Config

log = logging.getLogger(__name__)

__all__ = [
    "IMAGES_FILE", "PHOTO_DIR", "PRODUCTS_FILE", "S3_WORKERS", "RawData", "concat",
    "parse_s3_uri", "postgres_url_from", "read_csv_text", "read_local", "read_postgres",
    "read_s3", "read_source", "redact_url", "s3_client", "sample",
]


# --- dispatch ------------------------------------------------------------------------------
def postgres_url_from(cfg: "Config") -> str:
    url = cfg.data.postgres_url or os.environ.get(cfg.data.postgres_url_env)
    if not url:
        raise ValueError("data.source is postgres but neither data.postgres_url nor the "
                         f"environment variable {cfg.data.postgres_url_env} is set")
    return url


def read_source(cfg: "Config", apply_limit: bool = True) -> RawData:
    """Read the configured source; with ``data.limit`` keep a stratified sample of it."""
    data = cfg.data
    if data.source == "local":
        raw = read_local(data.local_dir)
    elif data.source == "s3":
        if not data.s3_uri:
            raise ValueError("data.source is s3 but data.s3_uri is not set")
        raw = read_s3(data.s3_uri, endpoint_url=data.s3_endpoint_url)
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
        raw = read_postgres(url, data.products_table, data.images_table, photos,
                            endpoint_url=data.s3_endpoint_url)
    else:  # pragma: no cover - the config model admits no other value
        raise ValueError(f"data.source {data.source!r} is not local, postgres or s3")
    if apply_limit and data.limit is not None:
        raw = sample(raw, data.limit, cfg.seed)
    for extra in data.extra_local_dirs:
        raw = concat(raw, read_local(extra))
    return raw
