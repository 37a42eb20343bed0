"""An S3 prefix: products.csv, images.csv and images/<id>.jpg under s3://bucket/prefix/."""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import (CHUNK_ROWS, IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, ChunkedSource, RawData,
                     _as_str_frame, _index_frame, _photo_id, fetch_photos, iter_csv_text)

log = logging.getLogger(__name__)

S3_WORKERS = 16


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


class S3Photos:
    """PhotoFetcher of s3://bucket/<photo_prefix><id>.jpg (``known_keys``: the listed keys, so
    that a missing photo costs no request; None: ask for every one)."""

    def __init__(self, client, bucket: str, photo_prefix: str, known_keys: set[str] | None,
                 workers: int = S3_WORKERS):
        self.client, self.bucket, self.photo_prefix = client, bucket, photo_prefix
        self.known_keys, self.workers = known_keys, workers

    def __call__(self, ids: list) -> tuple[list, list[str]]:
        return _fetch_s3_photos(self.client, self.bucket, self.photo_prefix,
                                [str(i) for i in ids], self.known_keys, self.workers)

    def __repr__(self) -> str:
        return f"S3Photos('s3://{self.bucket}/{self.photo_prefix}')"


def _missing(exc) -> str:
    """"bucket" or "key" when a ClientError says that one is not there, else ""."""
    code = exc.response.get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return "bucket"
    return "key" if code in ("NoSuchKey", "404", "NotFound") else ""


def _require_object(client, bucket: str, key: str, name: str) -> None:
    """FileNotFoundError naming the bucket or ``name`` when s3://bucket/key is not there."""
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return
    except ClientError as exc:
        missing = _missing(exc)
        if not missing:
            raise
        if missing == "key":                      # a HEAD's 404 does not say which: ask
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as bucket_exc:
                missing = _missing(bucket_exc) and "bucket"
                if not missing:
                    raise
        what = f"S3 bucket {bucket!r}" if missing == "bucket" else f"{name} at s3://{bucket}/{key}"
        raise FileNotFoundError(f"{what} not found") from exc


def _iter_object_csv(client, bucket: str, key: str, name: str,
                     chunk_rows: int) -> Iterator[pd.DataFrame]:
    """``iter_csv_text`` of s3://bucket/key, the body streamed as the chunks are asked for."""
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        missing = _missing(exc)
        if not missing:
            raise
        what = f"S3 bucket {bucket!r}" if missing == "bucket" else f"{name} at s3://{bucket}/{key}"
        raise FileNotFoundError(f"{what} not found") from exc
    try:
        yield from iter_csv_text(body, name, chunk_rows)
    finally:
        body.close()


def chunks_s3(uri: str, endpoint_url: str | None = None, workers: int = S3_WORKERS,
              chunk_rows: int = CHUNK_ROWS) -> ChunkedSource:
    """products.csv and images.csv under s3://bucket/prefix/, ``chunk_rows`` rows at a time
    (a ChunkedSource; its photo index over images/<id>.jpg: no photo fetched yet). The CSVs
    are streamed, never held whole; the photos are not listed either (a listing is a set of
    every photo's key): a missing photo is found when it is asked for, with the same
    source_error."""
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(endpoint_url, workers)
    for name in (PRODUCTS_FILE, IMAGES_FILE):
        _require_object(client, bucket, prefix + name, name)
    fetcher = S3Photos(client, bucket, f"{prefix}{PHOTO_DIR}/", None, workers)

    def listings():
        for chunk in _iter_object_csv(client, bucket, prefix + PRODUCTS_FILE, PRODUCTS_FILE,
                                      chunk_rows):
            yield _as_str_frame(chunk, RAW_PRODUCT_COLUMNS)

    def photos():
        for meta in _iter_object_csv(client, bucket, prefix + IMAGES_FILE, IMAGES_FILE,
                                     chunk_rows):
            ids = _photo_id(meta)
            if ids is None:
                yield _index_frame(meta, None, None,
                                   [f"{IMAGES_FILE} has no id column"] * len(meta))
            else:
                yield _index_frame(meta, fetcher, ids.astype(str).tolist(), [""] * len(meta))

    return ChunkedSource(f"s3://{bucket}/{prefix}", listings, photos)


def index_s3(uri: str, endpoint_url: str | None = None, workers: int = S3_WORKERS) -> RawData:
    """products.csv and images.csv under s3://bucket/prefix/, a photo index (RawData) over
    images/<id>.jpg: fetches the CSVs; no photo yet."""
    return chunks_s3(uri, endpoint_url, workers).index()


def read_s3(uri: str, endpoint_url: str | None = None, workers: int = S3_WORKERS) -> RawData:
    """products.csv, images.csv and images/<id>.jpg under s3://bucket/prefix/.

    Fetches the CSVs, then the photos (in a thread pool).
    """
    index = index_s3(uri, endpoint_url, workers)
    raw = RawData(index.products, fetch_photos(index.images), source=index.source)
    log.info("read %s", raw.summary())
    return raw
