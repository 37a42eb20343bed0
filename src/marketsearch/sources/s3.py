"""An S3 prefix: products.csv, images.csv and images/<id>.jpg under s3://bucket/prefix/."""
from __future__ import annotations

import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from marketsearch.schema import RAW_PRODUCT_COLUMNS

from .common import (IMAGES_FILE, PHOTO_DIR, PRODUCTS_FILE, RawData, _as_str_frame,
                     _index_frame, _photo_id, fetch_photos, read_csv_text)

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


def index_s3(uri: str, endpoint_url: str | None = None, workers: int = S3_WORKERS) -> RawData:
    """products.csv and images.csv under s3://bucket/prefix/, a photo index (RawData) over
    images/<id>.jpg: lists the prefix once and fetches the CSVs; no photo yet."""
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
        images = _index_frame(meta, None, None, [f"{IMAGES_FILE} has no id column"] * len(meta))
    else:
        photo_prefix = f"{prefix}{PHOTO_DIR}/"
        known = {k for k in keys if k.startswith(photo_prefix)}
        images = _index_frame(meta, S3Photos(client, bucket, photo_prefix, known, workers),
                              ids.astype(str).tolist(), [""] * len(meta))
    return RawData(products, images, source=f"s3://{bucket}/{prefix}")


def read_s3(uri: str, endpoint_url: str | None = None, workers: int = S3_WORKERS) -> RawData:
    """products.csv, images.csv and images/<id>.jpg under s3://bucket/prefix/.

    Lists the prefix once, then fetches the CSVs and the photos (in a thread pool).
    """
    index = index_s3(uri, endpoint_url, workers)
    raw = RawData(index.products, fetch_photos(index.images), source=index.source)
    log.info("read %s", raw.summary())
    return raw
