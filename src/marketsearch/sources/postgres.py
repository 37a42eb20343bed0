"""Postgres: listings and photo rows from two tables; the photo bytes from the images table, a
folder or S3."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import (CHUNK_ROWS, ChunkedSource, RawData, _as_str_frame, _index_frame, _photo_id,
                     fetch_photos)
from .local import FolderPhotos
from .s3 import S3Photos, parse_s3_uri, s3_client

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


def _check_table(conn, table: str, what: str) -> None:
    """FileNotFoundError when ``table`` is not there."""
    import psycopg2
    from psycopg2 import sql

    with conn.cursor() as cur:
        try:
            cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(_table_sql(table)))
        except psycopg2.errors.UndefinedTable as exc:
            raise FileNotFoundError(f"{what} table {table!r} not found") from exc


def _iter_table(conn, table: str, what: str, chunk_rows: int, without: str | None = None
                ) -> Iterator[tuple[list[str], list[tuple]]]:
    """Every row of ``table`` (sorted by id when it has one), ``chunk_rows`` at a time from a
    server-side cursor: (column names, rows) per chunk, at least one chunk. ``without``: a
    column to leave out (the photo bytes); the rows then end with the row's ctid (text) and
    whether that column is NULL, named CTID and IS_NULL."""
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
    if without is not None and without in names:
        fields = sql.SQL(", ").join(
            [sql.Identifier(n) for n in names if n != without]
            + [sql.SQL("ctid::text AS {}").format(sql.Identifier(CTID)),
               sql.SQL("{} IS NULL AS {}").format(sql.Identifier(without), sql.Identifier(IS_NULL))])
        query = sql.SQL("SELECT {} FROM {}").format(fields, ident)
    else:
        query = sql.SQL("SELECT * FROM {}").format(ident)
    # A table has no order of its own: sort by id (when there is one) for a stable snapshot.
    if "id" in names:
        query = sql.SQL("{} ORDER BY {}").format(query, sql.Identifier("id"))
    with conn.cursor(name=f"ms_read_{what}") as cur:       # server-side: streams in batches
        cur.execute(query)
        with tqdm(total=total, desc=f"read {table}", unit="row", leave=False,
                  disable=total < 2000) as bar:
            given = False
            while True:
                rows = cur.fetchmany(chunk_rows)
                if not rows and given:
                    break
                given = True
                bar.update(len(rows))
                yield [d.name for d in cur.description], rows
                if len(rows) < chunk_rows:
                    break


CTID, IS_NULL = "_ms_ctid", "_ms_data_is_null"     # private columns of the photo index query


def _connect(url: str):
    import psycopg2

    try:
        return psycopg2.connect(_psycopg2_dsn(url))
    except psycopg2.OperationalError as exc:
        raise ConnectionError(f"cannot connect to {redact_url(url)}: "
                              f"{str(exc).strip().splitlines()[0]}") from None


class TablePhotos:
    """PhotoFetcher of the images table's ``data`` column, by row (ctid): one query per call,
    on a connection of its own. A row that changed or went away since the index was read
    says so in its source_error."""

    def __init__(self, url: str, table: str):
        self.url, self.table = url, table

    def __call__(self, ctids: list) -> tuple[list, list[str]]:
        from psycopg2 import sql

        if not ctids:
            return [], []
        conn = _connect(self.url)
        try:
            conn.set_session(readonly=True)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT ctid::text, data FROM {} WHERE ctid = ANY(%s::tid[])")
                            .format(_table_sql(self.table)), (list(ctids),))
                found = {ctid: blob for ctid, blob in cur}
        finally:
            conn.close()
        data: list = []
        errors: list[str] = []
        for ctid in ctids:
            if ctid not in found:
                data.append(None)
                errors.append(f"photo row {ctid} of {self.table} changed or went away while "
                              "it was read")
            elif found[ctid] is None:
                data.append(None)
                errors.append(f"photo bytes are NULL in {self.table}.data")
            else:
                data.append(bytes(found[ctid]))
                errors.append("")
        return data, errors

    def __repr__(self) -> str:
        return f"TablePhotos({redact_url(self.url)!r}, {self.table!r})"


def chunks_postgres(url: str, products_table: str = "products", images_table: str = "images",
                    image_dir_or_s3: str | os.PathLike | None = None,
                    endpoint_url: str | None = None,
                    chunk_rows: int = CHUNK_ROWS) -> ChunkedSource:
    """Listings and photo rows from two Postgres tables, ``chunk_rows`` rows at a time from a
    server-side cursor (a ChunkedSource; its photo rows are read without their bytes, which
    ``fetch_photos`` reads later: see read_postgres for where from). Each pass over a table is
    one read-only query on a connection of its own."""
    conn = _connect(url)                    # fail now on a bad URL or a missing table
    try:
        _check_table(conn, products_table, "products")
        _check_table(conn, images_table, "images")
    finally:
        conn.close()
    table = TablePhotos(url, images_table)
    elsewhere: list = []                    # the fetcher of image_dir_or_s3, made when needed

    def rows_of(name: str, what: str, without: str | None = None):
        conn = _connect(url)
        try:
            conn.set_session(readonly=True)
            yield from _iter_table(conn, name, what, chunk_rows, without)
        finally:
            conn.close()

    def listings():
        for columns, rows in rows_of(products_table, "products"):
            yield _as_str_frame(pd.DataFrame(rows, columns=columns, dtype=object),
                                RAW_PRODUCT_COLUMNS)

    def photos():
        for columns, rows in rows_of(images_table, "images", without="data"):
            meta = pd.DataFrame(rows, columns=columns, dtype=object)
            del rows
            yield _photo_index(meta, table, images_table, image_dir_or_s3, endpoint_url,
                               elsewhere)

    return ChunkedSource(f"postgres:{redact_url(url)}/{products_table},{images_table}",
                         listings, photos)


def _photo_index(meta: pd.DataFrame, table: "TablePhotos", images_table: str,
                 image_dir_or_s3, endpoint_url: str | None, elsewhere: list) -> pd.DataFrame:
    """The photo index of rows of the images table (read without their bytes)."""
    n = len(meta)
    fetchers: list = [None] * n
    keys: list = [None] * n
    errors = [""] * n
    if CTID in meta.columns:                      # the table has a data column
        ctids, nulls = meta.pop(CTID).tolist(), meta.pop(IS_NULL).tolist()
        for i, (ctid, null) in enumerate(zip(ctids, nulls)):
            if null:
                errors[i] = f"photo bytes are NULL in {images_table}.data"
            else:
                fetchers[i], keys[i] = table, ctid
    else:
        errors = [f"{images_table} has no data column and no photo folder was given"] * n
    missing = [i for i in range(n) if fetchers[i] is None]
    if missing and image_dir_or_s3 is not None:
        ids = _photo_id(meta)
        if ids is None:
            for i in missing:
                errors[i] = f"{images_table} has no id column"
        else:
            if not elsewhere:
                elsewhere.append(_photos_from(str(image_dir_or_s3), endpoint_url))
            for i in missing:
                fetchers[i], keys[i], errors[i] = elsewhere[0], str(ids.iloc[i]), ""
    return _index_frame(meta, fetchers, keys, errors)


def index_postgres(url: str, products_table: str = "products", images_table: str = "images",
                   image_dir_or_s3: str | os.PathLike | None = None,
                   endpoint_url: str | None = None) -> RawData:
    """Listings and photo rows from two Postgres tables, a photo index (RawData): the photo
    rows are read without their bytes; ``fetch_photos`` reads them later (see read_postgres
    for where from)."""
    return chunks_postgres(url, products_table, images_table, image_dir_or_s3,
                           endpoint_url).index()


def read_postgres(url: str, products_table: str = "products", images_table: str = "images",
                  image_dir_or_s3: str | os.PathLike | None = None,
                  endpoint_url: str | None = None) -> RawData:
    """Listings and photo rows from two Postgres tables named like the CSV columns.

    Photo bytes come from the images table's ``data`` (bytea) column when it has one;
    otherwise (and for rows whose ``data`` is NULL) from ``image_dir_or_s3``: a folder or an
    s3://bucket/prefix/ holding <id>.jpg. With neither, each photo row says so.
    """
    index = index_postgres(url, products_table, images_table, image_dir_or_s3, endpoint_url)
    raw = RawData(index.products, fetch_photos(index.images), source=index.source)
    log.info("read %s", raw.summary())
    return raw


def _photos_from(location: str, endpoint_url: str | None):
    """The PhotoFetcher of <id>.jpg in a folder or an s3://bucket/prefix/."""
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_uri(location)
        return S3Photos(s3_client(endpoint_url), bucket, prefix, None)
    folder = Path(location)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} not found")
    return FolderPhotos(folder, f"{folder}/")
