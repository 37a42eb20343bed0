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
"""
from __future__ import annotations

import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_IMAGE_COLUMNS, RAW_PRODUCT_COLUMNS
from marketsearch.text import root_category

if TYPE_CHECKING:
    from marketsearch.config import Config

log = logging.getLogger(__name__)

PRODUCTS_FILE = "products.csv"
IMAGES_FILE = "images.csv"
PHOTO_DIR = "images"
S3_WORKERS = 16
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class RawData:
    """A raw snapshot.

    products: the listing columns found (RAW_PRODUCT_COLUMNS order first, then any others),
              every value a str ("" for a missing value).
    images:   the photo-row columns found (RAW_IMAGE_COLUMNS order first), then ``data``
              (bytes or None) and ``source_error`` ("" when the bytes were read, else why not).
    source:   where it came from, for logs (never holds a password).
    """

    products: pd.DataFrame
    images: pd.DataFrame
    source: str = ""

    def summary(self) -> dict:
        errors = int((self.images["source_error"] != "").sum()) if len(self.images) else 0
        return {"source": self.source, "products": len(self.products),
                "images": len(self.images), "photo_errors": errors}


# --- shaping -----------------------------------------------------------------------------
def _ordered(columns, known: list[str]) -> list[str]:
    columns = list(columns)
    return [c for c in known if c in columns] + [c for c in columns if c not in known]


def _as_str_frame(df: pd.DataFrame, known: list[str]) -> pd.DataFrame:
    """Known columns first; every value a str, missing values as ""."""
    df = df[_ordered(df.columns, known)].copy()
    for col in df.columns:
        values = df[col]
        df[col] = values.where(values.notna(), "").map(
            lambda v: v if isinstance(v, str) else _to_str(v)).astype(str)
    return df.reset_index(drop=True)


def _to_str(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _images_frame(meta: pd.DataFrame, data: list, errors: list[str]) -> pd.DataFrame:
    images = _as_str_frame(meta.drop(columns=["data", "source_error"], errors="ignore"),
                           RAW_IMAGE_COLUMNS)
    images["data"] = pd.Series(data, index=images.index, dtype=object)
    images["source_error"] = pd.Series(errors, index=images.index, dtype=object).astype(str)
    return images


def read_csv_text(source, name: str) -> pd.DataFrame:
    """A marketplace CSV (all fields quoted, line breaks and bare CRs inside fields) -> str frame.

    Rows with too few fields get "" for the rest; the validate stage reports them.
    """
    try:
        df = pd.read_csv(source, dtype=str, keep_default_na=False, na_filter=False,
                         encoding="utf-8-sig", quotechar='"', doublequote=True,
                         skipinitialspace=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise ValueError(f"{name} is not a readable CSV file: {exc}") from exc
    return df


def _photo_id(images: pd.DataFrame) -> pd.Series | None:
    return images["id"] if "id" in images.columns else None


# --- local folder ------------------------------------------------------------------------
def read_local(directory: str | os.PathLike) -> RawData:
    """products.csv, images.csv and images/<id>.jpg from a folder."""
    directory = Path(directory)
    for name in (PRODUCTS_FILE, IMAGES_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{name} not found in {directory}")
    products = _as_str_frame(read_csv_text(directory / PRODUCTS_FILE, PRODUCTS_FILE),
                             RAW_PRODUCT_COLUMNS)
    meta = read_csv_text(directory / IMAGES_FILE, IMAGES_FILE)
    images = _with_photos_from_dir(meta, directory / PHOTO_DIR, f"{PHOTO_DIR}/", require=True)
    raw = RawData(products, images, source=f"local:{directory}")
    log.info("read %s", raw.summary())
    return raw


def _with_photos_from_dir(meta: pd.DataFrame, photo_dir: Path, shown: str,
                          require: bool = False) -> pd.DataFrame:
    """Attach bytes of <photo_dir>/<id>.jpg; ``shown`` prefixes the file name in errors."""
    ids = _photo_id(meta)
    if ids is None:
        return _images_frame(meta, [None] * len(meta), [f"{IMAGES_FILE} has no id column"] * len(meta))
    if require and len(meta) and not photo_dir.is_dir():
        raise FileNotFoundError(f"photo folder {photo_dir} not found")
    data, errors = [], []
    for photo_id in tqdm(ids.astype(str), desc="read photos", unit="photo",
                         disable=len(ids) < 200, leave=False):
        blob, error = _read_file(photo_dir, photo_id, shown)
        data.append(blob)
        errors.append(error)
    return _images_frame(meta, data, errors)


def _read_file(photo_dir: Path, photo_id: str, shown: str) -> tuple[bytes | None, str]:
    name = f"{photo_id}.jpg"
    if not photo_id or "/" in photo_id or "\\" in photo_id or photo_id in (".", ".."):
        return None, f"photo id {photo_id!r} is not a file name"
    try:
        return (photo_dir / name).read_bytes(), ""
    except FileNotFoundError:
        return None, f"photo file {shown}{name} not found"
    except OSError as exc:
        return None, f"photo file {shown}{name} could not be read: {exc.strerror or exc}"


# --- S3 ----------------------------------------------------------------------------------
def parse_s3_uri(uri: str) -> tuple[str, str]:
    """"s3://bucket/some/prefix" -> ("bucket", "some/prefix/")."""
    match = re.match(r"^s3://([^/]+)/?(.*)$", str(uri or ""))
    if not match:
        raise ValueError(f"S3 location {uri!r} is not of the form s3://bucket/prefix/")
    bucket, prefix = match.group(1), match.group(2)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def s3_client(endpoint_url: str | None = None, workers: int = S3_WORKERS):
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=endpoint_url,
                        config=BotoConfig(max_pool_connections=max(10, workers),
                                          retries={"max_attempts": 5, "mode": "standard"}))


def _s3_keys(client, bucket: str, prefix: str) -> set[str]:
    keys: set[str] = set()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    with tqdm(desc=f"list s3://{bucket}/{prefix}", unit="key", leave=False) as bar:
        for page in pages:
            contents = page.get("Contents", [])
            keys.update(obj["Key"] for obj in contents)
            bar.update(len(contents))
    return keys


def _s3_get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _fetch_s3_photos(client, bucket: str, photo_prefix: str, ids: list[str],
                     known_keys: set[str] | None, workers: int = S3_WORKERS
                     ) -> tuple[list, list[str]]:
    """Photo bytes of s3://bucket/<photo_prefix><id>.jpg in a thread pool; errors per photo."""
    from botocore.exceptions import BotoCoreError, ClientError

    def fetch(photo_id: str) -> tuple[bytes | None, str]:
        key = f"{photo_prefix}{photo_id}.jpg"
        where = f"s3://{bucket}/{key}"
        if not photo_id or "/" in photo_id:
            return None, f"photo id {photo_id!r} is not an object name"
        if known_keys is not None and key not in known_keys:
            return None, f"photo object {where} not found"
        try:
            return _s3_get(client, bucket, key), ""
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None, f"photo object {where} not found"
            return None, f"photo object {where} could not be read: {code or exc}"
        except BotoCoreError as exc:
            return None, f"photo object {where} could not be read: {exc}"

    data: list = [None] * len(ids)
    errors: list[str] = [""] * len(ids)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fetch, ids)
        for i, (blob, error) in enumerate(tqdm(results, total=len(ids), desc="fetch photos",
                                               unit="photo", leave=False)):
            data[i], errors[i] = blob, error
    return data, errors


def read_s3(uri: str, endpoint_url: str | None = None, workers: int = S3_WORKERS) -> RawData:
    """products.csv, images.csv and images/<id>.jpg under s3://bucket/prefix/.

    Lists the prefix once, then fetches the CSVs and the photos (in a thread pool).
    """
    from botocore.exceptions import ClientError

    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(endpoint_url, workers)
    try:
        keys = _s3_keys(client, bucket, prefix)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise FileNotFoundError(f"S3 bucket {bucket!r} not found") from exc
        raise
    frames = {}
    for name in (PRODUCTS_FILE, IMAGES_FILE):
        key = prefix + name
        if key not in keys:
            raise FileNotFoundError(f"{name} not found at s3://{bucket}/{key}")
        frames[name] = read_csv_text(io.BytesIO(_s3_get(client, bucket, key)), name)
    products = _as_str_frame(frames[PRODUCTS_FILE], RAW_PRODUCT_COLUMNS)
    meta = frames[IMAGES_FILE]
    ids = _photo_id(meta)
    if ids is None:
        images = _images_frame(meta, [None] * len(meta),
                               [f"{IMAGES_FILE} has no id column"] * len(meta))
    else:
        data, errors = _fetch_s3_photos(client, bucket, f"{prefix}{PHOTO_DIR}/",
                                        ids.astype(str).tolist(), keys, workers)
        images = _images_frame(meta, data, errors)
    raw = RawData(products, images, source=f"s3://{bucket}/{prefix}")
    log.info("read %s", raw.summary())
    return raw


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


# --- dispatch and sampling ------------------------------------------------------------------
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


def concat(first: RawData, second: RawData) -> RawData:
    """Both snapshots' rows; a listing or photo id in both is taken from ``second`` (the newer
    snapshot, e.g. a full export that repeats old listings), so it is neither counted twice nor
    quarantined as a duplicate."""
    again_p = first.products["id"].isin(second.products["id"])
    again_i = first.images["id"].isin(second.images["id"])
    if again_p.any() or again_i.any():
        log.info("%s repeats %d listing(s) and %d photo(s) of %s: keeping its copies",
                 second.source, int(again_p.sum()), int(again_i.sum()), first.source)
    return RawData(pd.concat([first.products[~again_p], second.products],
                             ignore_index=True).fillna(""),
                   pd.concat([first.images[~again_i], second.images], ignore_index=True),
                   source=f"{first.source} + {second.source}")


def _root_or_blank(category: str) -> str:
    try:
        return root_category(category)
    except ValueError:
        return ""                               # unparseable: a stratum of its own


def _allocate(sizes: pd.Series, limit: int) -> dict[str, int]:
    """Largest-remainder proportional allocation of ``limit`` over strata (deterministic)."""
    total = int(sizes.sum())
    exact = sizes * (limit / total)
    counts = np.floor(exact).astype(int)
    left = limit - int(counts.sum())
    order = sorted(sizes.index, key=lambda g: (-(exact[g] - counts[g]), g))
    for g in order[:left]:
        counts[g] += 1
    return {g: int(counts[g]) for g in sizes.index}


def sample(raw: RawData, limit: int | None, seed: int = 0) -> RawData:
    """Keep ``limit`` listings, stratified by root category (proportional, seeded), and
    only their photos plus a proportional share of photos whose listing is unknown."""
    products, images = raw.products, raw.images
    n = len(products)
    if limit is None or limit >= n:
        return raw
    if limit < 0:
        raise ValueError(f"limit {limit} is negative")
    rng = np.random.default_rng(seed)
    strata = (products["category"].map(_root_or_blank) if "category" in products.columns
              else pd.Series("", index=products.index))
    sizes = strata.value_counts().sort_index()
    quota = _allocate(sizes, limit)
    keep: list[int] = []
    for group in sorted(quota):
        positions = np.flatnonzero((strata == group).to_numpy())
        keep.extend(rng.choice(positions, size=quota[group], replace=False).tolist())
    kept_products = products.iloc[sorted(keep)].reset_index(drop=True)

    if "product_id" in images.columns and "id" in products.columns:
        known = images["product_id"].isin(products["id"]).to_numpy()
        own = images["product_id"].isin(kept_products["id"]).to_numpy()
        orphans = np.flatnonzero(~known)
        share = int(round(len(orphans) * limit / n))
        chosen = rng.choice(orphans, size=share, replace=False) if share else []
        mask = own.copy()
        mask[np.asarray(chosen, dtype=int)] = True
    else:                                       # no way to tell whose photo is whose
        mask = np.zeros(len(images), dtype=bool)
        idx = rng.choice(len(images), size=int(round(len(images) * limit / n)), replace=False)
        mask[idx] = True
    kept_images = images[mask].reset_index(drop=True)
    log.info("sampled %d of %d listings (%d strata), %d of %d photos",
             len(kept_products), n, len(sizes), len(kept_images), len(images))
    return RawData(kept_products, kept_images, source=f"{raw.source} (sample {limit}, seed {seed})")
