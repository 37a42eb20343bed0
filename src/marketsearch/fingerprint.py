"""A source's fingerprint: a cheap digest that changes whenever its content does.

The pipeline computes it first, uncached, and hands it to ingest as an input, so ingest and
everything after it can be cached: the same data gives the same fingerprint, the same inputs
and a cache hit; one changed row or photo changes it and the run starts afresh.

* local folders: every file's relative path and bytes (streamed, never held whole);
* S3: every object's key, size and ETag under the prefix (no object is downloaded);
* Postgres: each table's row count and an md5 over its rows' md5s, computed in the database,
  plus the fingerprint of wherever the photos are when the table does not hold them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from marketsearch.config import Config

CHUNK = 1 << 20


def _local(directory: str | os.PathLike, digest) -> None:
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
        digest.update(b"\x1e")


def _s3(uri: str, endpoint_url: str | None, digest) -> None:
    from marketsearch.sources import parse_s3_uri, s3_client

    bucket, prefix = parse_s3_uri(uri)
    pages = s3_client(endpoint_url).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            digest.update(f"{obj['Key']}\0{obj['Size']}\0{obj.get('ETag', '')}\x1e".encode())


def _postgres(cfg: Config, digest) -> None:
    import psycopg2
    from psycopg2 import sql

    from marketsearch.sources import _psycopg2_dsn, _table_sql, postgres_url_from

    with psycopg2.connect(_psycopg2_dsn(postgres_url_from(cfg))) as conn, conn.cursor() as cur:
        for table in (cfg.data.products_table, cfg.data.images_table):
            cur.execute(sql.SQL("SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY "
                                "md5(t::text))) FROM {} t").format(_table_sql(table)))
            count, rows_md5 = cur.fetchone()
            digest.update(f"{table}\0{count}\0{rows_md5}\x1e".encode())


def source_fingerprint(cfg: Config) -> str:
    """``<source>:<sha256>`` of everything ``sources.read_source(cfg)`` would read."""
    data = cfg.data
    digest = hashlib.sha256()
    if data.source == "local":
        _local(data.local_dir, digest)
    elif data.source == "s3":
        if not data.s3_uri:
            raise ValueError("data.source is s3 but data.s3_uri is not set")
        _s3(data.s3_uri, data.s3_endpoint_url, digest)
    else:
        _postgres(cfg, digest)
        if data.s3_uri:                     # where read_postgres finds photos the table lacks
            _s3(f"{data.s3_uri.rstrip('/')}/images/", data.s3_endpoint_url, digest)
        elif data.local_dir and (Path(data.local_dir) / "images").is_dir():
            _local(Path(data.local_dir) / "images", digest)
    for extra in data.extra_local_dirs:
        _local(extra, digest)
    return f"{data.source}:{digest.hexdigest()}"
