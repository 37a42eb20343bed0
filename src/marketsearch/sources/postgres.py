"""Postgres: listings and photo rows from two tables; the photo bytes from the images table, a
folder or S3."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import RawData, _as_str_frame, _images_frame, _photo_id
from .local import _read_file
from .s3 import _fetch_s3_photos, parse_s3_uri, s3_client

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- Postgres ----------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """A database URL or libpq DSN with its password masked, safe to log."""
    text = str(url or "")
    text = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def _psycopg2_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: postgresql+psycopg2://... -> postgresql://..."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", str(url))


def _table_sql(name: str):
    from psycopg2 import sql

    parts = str(name).split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ValueError(f"table name {name!r} is not a [schema.]identifier")
    return sql.SQL(".").join(sql.Identifier(p) for p in parts)


def _fetch_table(conn, table: str, what: str) -> tuple[list[str], list[tuple]]:
    import psycopg2
    from psycopg2 import sql

    ident = _table_sql(table)
    with conn.cursor() as cur:
        try:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
        except psycopg2.errors.UndefinedTable as exc:
            raise FileNotFoundError(f"{what} table {table!r} not found") from exc
        total = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(ident))
        names = [d.name for d in cur.description]
    # A table has no order of its own: sort by id (when there is one) for a stable snapshot.
    query = sql.SQL("SELECT * FROM {}").format(ident)
    if "id" in names:
        query = sql.SQL("{} ORDER BY {}").format(query, sql.Identifier("id"))
    rows: list[tuple] = []
    with conn.cursor(name=f"ms_read_{what}") as cur:       # server-side: streams in batches
        cur.itersize = 2000
        cur.execute(query)
        with tqdm(total=total, desc=f"read {table}", unit="row", leave=False,
                  disable=total < 2000) as bar:
            for row in cur:
                rows.append(row)
                bar.update(1)
        columns = [d.name for d in cur.description]
    return columns, rows


def read_postgres(url: str, products_table: str = "products", images_table: str = "images",
                  image_dir_or_s3: str | os.PathLike | None = None,
                  endpoint_url: str | None = None) -> RawData:
    """Listings and photo rows from two Postgres tables named like the CSV columns.

    Photo bytes come from the images table's ``data`` (bytea) column when it has one;
    otherwise (and for rows whose ``data`` is NULL) from ``image_dir_or_s3``: a folder or an
    s3://bucket/prefix/ holding <id>.jpg. With neither, each photo row says so.
    """
    import psycopg2

    try:
        conn = psycopg2.connect(_psycopg2_dsn(url))
    except psycopg2.OperationalError as exc:
        raise ConnectionError(f"cannot connect to {redact_url(url)}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    try:
        conn.set_session(readonly=True)
        p_cols, p_rows = _fetch_table(conn, products_table, "products")
        i_cols, i_rows = _fetch_table(conn, images_table, "images")
    finally:
        conn.close()

    products = _as_str_frame(pd.DataFrame(p_rows, columns=p_cols, dtype=object),
                             RAW_PRODUCT_COLUMNS)
    meta = pd.DataFrame(i_rows, columns=i_cols, dtype=object)
    n = len(meta)
    data: list = [None] * n
    errors = [""] * n
    if "data" in meta.columns:
        for i, blob in enumerate(meta["data"]):
            if blob is None:
                errors[i] = f"photo bytes are NULL in {images_table}.data"
            else:
                data[i] = bytes(blob)
    else:
        errors = [f"{images_table} has no data column and no photo folder was given"] * n
    missing = [i for i in range(n) if data[i] is None]
    if missing and image_dir_or_s3 is not None:
        ids = _photo_id(meta)
        if ids is None:
            for i in missing:
                errors[i] = f"{images_table} has no id column"
        else:
            fetched, fetch_errors = _photos_from(
                str(image_dir_or_s3), [str(ids.iloc[i]) for i in missing], endpoint_url)
            for i, blob, error in zip(missing, fetched, fetch_errors):
                data[i], errors[i] = blob, error
    images = _images_frame(meta, data, errors)
    raw = RawData(products, images,
                  source=f"postgres:{redact_url(url)}/{products_table},{images_table}")
    log.info("read %s", raw.summary())
    return raw


def _photos_from(location: str, ids: list[str], endpoint_url: str | None
                 ) -> tuple[list, list[str]]:
    """Bytes of <id>.jpg from a folder or an s3://bucket/prefix/."""
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_uri(location)
        client = s3_client(endpoint_url)
        return _fetch_s3_photos(client, bucket, prefix, ids, None)
    folder = Path(location)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} not found")
    pairs = [_read_file(folder, photo_id, f"{folder}/") for photo_id in
             tqdm(ids, desc="read photos", unit="photo", leave=False, disable=len(ids) < 200)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
