"""The clean catalogue in a database: idempotent bulk upsert of listings and their photos.

Tables (created when missing):

    listings        CLEAN_PRODUCT_COLUMNS; id primary key, price float, lat/lon nullable
    listing_photos  CLEAN_IMAGE_COLUMNS without ``row`` (a position in a run's photo array,
                    not a property of the photo); id primary key, product_id -> listings.id

Works on SQLite (``sqlite:///file``) and Postgres (``postgresql://``,
``postgresql+psycopg2://``) through SQLAlchemy Core. Each table is written with one
``INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE <some column IS DISTINCT FROM the new
value>`` per batch, so a re-run with the same data writes nothing, and rows whose values
changed are updated in bulk. Rows already in the tables but absent from the data are left
alone.

The catalogue goes in shard by shard (``upsert_shards``; a shard is some listings with all
their photos), one transaction per shard, so memory and a transaction's size are bounded by
a shard, never the catalogue: nothing reads every id of a table, only the ids of the batch
being written. A writer killed in the middle loses at most its open transaction, and a re-run
writes what is missing and nothing twice (tested with SIGKILL on Postgres). A shard the
database cannot take (an orphan photo, a missing value) is rolled back and named; the other
shards are written, then ``ShardsFailed`` lists the ones that were not.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from sqlalchemy import (Column, Float, ForeignKey, MetaData, String, Table, Text,
                        create_engine, event, or_, select)
from sqlalchemy.engine import Engine

from marketsearch.faults import crash_point
from marketsearch.schema import CLEAN_IMAGE_COLUMNS, CLEAN_PRODUCT_COLUMNS

log = logging.getLogger(__name__)

LISTINGS = "listings"
PHOTOS = "listing_photos"
BATCH_ROWS = 2000

metadata = MetaData()

listings_table = Table(
    LISTINGS, metadata,
    Column("id", String(64), primary_key=True),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("price", Float(precision=53), nullable=False),
    Column("category", Text, nullable=False),
    Column("category_path", Text, nullable=False),
    Column("location", Text, nullable=False),
    Column("lat", Float(precision=53), nullable=True),
    Column("lon", Float(precision=53), nullable=True),
    Column("split", String(8), nullable=False),
)

PHOTO_COLUMNS = [c for c in CLEAN_IMAGE_COLUMNS if c != "row"]

photos_table = Table(
    PHOTOS, metadata,
    Column("id", String(64), primary_key=True),
    Column("product_id", String(64), ForeignKey(f"{LISTINGS}.id"), nullable=False, index=True),
    Column("category", Text, nullable=False),
    Column("split", String(8), nullable=False),
)

assert [c.name for c in listings_table.columns] == CLEAN_PRODUCT_COLUMNS
assert [c.name for c in photos_table.columns] == PHOTO_COLUMNS


def sqlalchemy_url(url: str) -> str:
    """postgres:// and postgresql:// -> postgresql+psycopg2://; others unchanged."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", str(url))


def _sqlite_foreign_keys(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str) -> Engine:
    engine = create_engine(sqlalchemy_url(url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def create_tables(engine: Engine) -> None:
    metadata.create_all(engine, checkfirst=True)


def _insert(dialect: str):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"database dialect {dialect!r} is not supported (sqlite, postgresql)")
    return insert


def _records(df: pd.DataFrame, table: Table, what: str) -> list[dict]:
    """DataFrame -> list of plain-Python dicts in the table's columns (NaN -> None)."""
    columns = [c.name for c in table.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lack column(s) {missing} needed for table {table.name}")
    frame = df[columns]
    ids = frame["id"].astype(str)
    if ids.duplicated().any():
        dupes = ids[ids.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{what} have duplicate id(s) {dupes}")
    out_cols = {}
    for col in table.columns:
        values = frame[col.name].tolist()
        if isinstance(col.type, Float):
            conv = []
            for v in values:
                if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                    conv.append(None)
                else:
                    conv.append(float(v))
            if not col.nullable and any(v is None for v in conv):
                bad = ids[[v is None for v in conv]].tolist()[:5]
                raise ValueError(f"{what} have no {col.name} for id(s) {bad}")
            out_cols[col.name] = conv
        else:
            conv = []
            for v in values:
                if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                    conv.append(None)
                else:
                    conv.append(v.item() if isinstance(v, np.generic) else v)
                    if not isinstance(conv[-1], str):
                        conv[-1] = str(conv[-1])
            if not col.nullable and any(v is None for v in conv):
                bad = ids[[v is None for v in conv]].tolist()[:5]
                raise ValueError(f"{what} have no {col.name} for id(s) {bad}")
            out_cols[col.name] = conv
    names = list(out_cols)
    return [dict(zip(names, row)) for row in zip(*out_cols.values())]


class ShardsFailed(ValueError):
    """Some shards were not written (each rolled back, named with its reason); the others were."""

    def __init__(self, failed: dict[str, str], counts: dict):
        self.failed, self.counts = failed, counts
        lines = "; ".join(f"{name}: {why}" for name, why in list(failed.items())[:5])
        super().__init__(f"{len(failed)} shard(s) not written to the database, the other "
                         f"shards were: {lines}")


def _upsert(conn, table: Table, rows: list[dict]) -> dict:
    """Insert new ids, update changed rows, leave identical rows alone; counts of each. Only
    the ids of the batch being written are looked up, never the whole table's."""
    insert = _insert(conn.dialect.name)
    value_cols = [c for c in table.columns if not c.primary_key]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={c.name: stmt.excluded[c.name] for c in value_cols},
        where=or_(*[c.is_distinct_from(stmt.excluded[c.name]) for c in value_cols]),
    ).returning(table.c.id)
    inserted = updated = 0
    for start in range(0, len(rows), BATCH_ROWS):
        batch = rows[start:start + BATCH_ROWS]
        existing = set(conn.execute(select(table.c.id).where(
            table.c.id.in_([r["id"] for r in batch]))).scalars())
        written = conn.execute(stmt, batch).scalars().all()
        new = sum(1 for i in written if i not in existing)
        inserted, updated = inserted + new, updated + len(written) - new
    return {"inserted": inserted, "updated": updated,
            "unchanged": len(rows) - inserted - updated}


def _write_shard(conn, products: pd.DataFrame, images: pd.DataFrame) -> dict:
    """One shard inside one transaction (the caller's ``conn``); raises ValueError for data
    that cannot be written."""
    product_rows = _records(products, listings_table, "products")
    photo_rows = _records(images, photos_table, "images")
    orphans = {r["product_id"] for r in photo_rows} - {r["id"] for r in product_rows}
    if orphans:
        orphans -= set(conn.execute(select(listings_table.c.id).where(
            listings_table.c.id.in_(sorted(orphans)))).scalars())
    if orphans:
        raise ValueError(f"images refer to {len(orphans)} listing(s) not in products "
                         f"nor in table {LISTINGS}: {sorted(orphans)[:5]}")
    counts = {"products": _upsert(conn, listings_table, product_rows)}
    crash_point("db_mid_shard")             # the listings written, the photos not yet
    counts["images"] = _upsert(conn, photos_table, photo_rows)
    return counts


def upsert_shards(url: str, shards: Iterable[tuple[str, pd.DataFrame, pd.DataFrame]]) -> dict:
    """Write each (name, listings, photos) shard in a transaction of its own, in order.

    Returns {"products": {"inserted", "updated", "unchanged"}, "images": {...}, "shards": n}
    summed over the shards. A shard with data that cannot be written (a missing column, a
    duplicate id, an empty required value, a photo whose listing is neither in the shard nor
    already in the table) is rolled back whole and the others go on; ShardsFailed then names
    each with its reason.
    """
    from tqdm.auto import tqdm

    totals = {what: {"inserted": 0, "updated": 0, "unchanged": 0} for what in ("products", "images")}
    failed: dict[str, str] = {}
    engine = get_engine(url)
    where = engine.url.render_as_string(hide_password=True)
    n = 0
    try:
        create_tables(engine)
        for name, products, images in tqdm(shards, desc=f"upsert into {engine.url.database}",
                                           unit="shard", leave=False):
            n += 1
            try:
                with engine.begin() as conn:
                    counts = _write_shard(conn, products, images)
            except ValueError as exc:
                failed[name] = str(exc)
                log.error("shard %s not written to %s: %s", name, where, exc)
                continue
            crash_point("db_after_shard")
            for what, c in counts.items():
                for key, value in c.items():
                    totals[what][key] += value
    finally:
        engine.dispose()
    totals["shards"] = n
    log.info("upserted %d shard(s) into %s: listings %s, photos %s", n - len(failed), where,
             totals["products"], totals["images"])
    if failed:
        raise ShardsFailed(failed, totals)
    return totals


def shards_of(products: pd.DataFrame, images: pd.DataFrame,
              shard_rows: int | None) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """In-memory frames cut into shards of at most ``shard_rows`` listings, each with its
    listings' photos, in the listings' order; photos of listings not in ``products`` (loaded
    earlier, or orphans) come last, as a shard of their own. None: one shard of everything."""
    if not shard_rows or len(products) <= shard_rows:
        yield "shard-00000", products, images
        return
    for k, start in enumerate(range(0, len(products), shard_rows)):
        part = products.iloc[start:start + shard_rows]
        yield f"shard-{k:05d}", part, images[images["product_id"].isin(part["id"])]
    stray = images[~images["product_id"].isin(products["id"])]
    if len(stray):
        yield "photos-of-other-listings", products.iloc[:0], stray


def upsert_clean(url: str, products: pd.DataFrame, images: pd.DataFrame,
                 shard_rows: int | None = None) -> dict:
    """Write clean listings and photos to ``listings`` / ``listing_photos`` idempotently, in
    transactions of at most ``shard_rows`` listings (None: one). See ``upsert_shards``; with one
    shard, data that cannot be written raises ValueError naming the column or ids, and nothing
    is written."""
    return upsert_parts(url, [(None, products, images)], shard_rows)


def upsert_parts(url: str, parts: Iterable[tuple[str | None, pd.DataFrame, pd.DataFrame]],
                 shard_rows: int | None = None) -> dict:
    """``upsert_clean`` over (name, listings, photos) parts taken one at a time (a clean
    catalogue's shards, read as they are written), each cut into transactions of at most
    ``shard_rows`` listings named ``<part>/<shard>``."""
    pieces = ((piece if name is None else f"{name}/{piece}", p, i)
              for name, products, images in parts
              for piece, p, i in shards_of(products, images, shard_rows))
    try:
        counts = upsert_shards(url, pieces)
    except ShardsFailed as exc:
        if len(exc.failed) == 1 and exc.counts["shards"] == 1:
            raise ValueError(next(iter(exc.failed.values()))) from None
        raise
    counts.pop("shards")
    return counts


def read_table(url: str, name: str) -> pd.DataFrame:
    """A whole table as a DataFrame, ordered by id (for checks and tests)."""
    engine = get_engine(url)
    try:
        table = {LISTINGS: listings_table, PHOTOS: photos_table}[name]
        with engine.connect() as conn:
            return pd.read_sql(select(table).order_by(table.c.id), conn)
    finally:
        engine.dispose()
