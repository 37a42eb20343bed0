"""Raw-data readers against real services: files, a Postgres cluster, a moto S3 server."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import boto3
import pandas as pd
import psycopg2
import pytest

from marketsearch.config import Config
from marketsearch.schema import RAW_IMAGE_COLUMNS, RAW_PRODUCT_COLUMNS
from marketsearch.sources import (RawData, read_local, read_postgres, read_s3, read_source,
                                  redact_url, sample)
from marketsearch.text import root_category

JPEG = b"\xff\xd8"


@pytest.fixture(scope="module")
def local_raw(fixture_dir: Path) -> RawData:
    return read_local(fixture_dir)


def assert_same_raw(a: RawData, b: RawData, any_order: bool = False) -> None:
    """Same frames; ``any_order`` for a database source, which returns rows sorted by id."""
    for left, right in ((a.products, b.products), (a.images, b.images)):
        if any_order:
            left = left.sort_values("id").reset_index(drop=True)
            right = right.sort_values("id").reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right)


def copy_fixture(fixture_dir: Path, dest: Path) -> Path:
    shutil.copytree(fixture_dir, dest)
    return dest


# --- local ---------------------------------------------------------------------------------
def test_read_local_fixture(local_raw: RawData):
    products, images = local_raw.products, local_raw.images
    assert list(products.columns) == RAW_PRODUCT_COLUMNS
    assert list(images.columns) == RAW_IMAGE_COLUMNS + ["data", "source_error"]
    assert len(products) == 52 and len(images) == 65
    assert all(products[c].map(type).eq(str).all() for c in products.columns)
    assert all(images[c].map(type).eq(str).all() for c in RAW_IMAGE_COLUMNS + ["source_error"])
    assert products["category"].map(root_category).value_counts().eq(4).all()
    assert products["category"].map(root_category).nunique() == 13
    assert (images["source_error"] == "").all()
    assert images["data"].map(lambda b: isinstance(b, bytes) and b.startswith(JPEG)).all()
    assert images["product_id"].isin(products["id"]).all()
    # descriptions keep their bare carriage returns; prices stay strings
    assert products["product_description"].str.contains("\r").any()
    assert products["price"].str.startswith("£").all()
    assert local_raw.summary()["photo_errors"] == 0


def test_read_local_missing_photo_is_a_source_error(fixture_dir: Path, tmp_path: Path):
    src = copy_fixture(fixture_dir, tmp_path / "src")
    gone = pd.read_csv(src / "images.csv", dtype=str)["id"].iloc[5]
    (src / "images" / f"{gone}.jpg").unlink()
    raw = read_local(src)
    row = raw.images.set_index("id").loc[gone]
    assert row["data"] is None
    assert row["source_error"] == f"photo file images/{gone}.jpg not found"
    assert (raw.images["source_error"] != "").sum() == 1
    assert raw.summary()["photo_errors"] == 1


@pytest.mark.parametrize("name", ["products.csv", "images.csv"])
def test_read_local_missing_file_names_it(fixture_dir: Path, tmp_path: Path, name: str):
    src = copy_fixture(fixture_dir, tmp_path / "src")
    (src / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        read_local(src)


def test_read_local_missing_column_is_kept_for_validation(fixture_dir: Path, tmp_path: Path):
    src = copy_fixture(fixture_dir, tmp_path / "src")
    df = pd.read_csv(src / "products.csv", dtype=str, keep_default_na=False)
    df.drop(columns=["price"]).to_csv(src / "products.csv", index=False, quoting=1)
    raw = read_local(src)
    assert list(raw.products.columns) == [c for c in RAW_PRODUCT_COLUMNS if c != "price"]
    assert len(raw.products) == 52


def test_read_local_line_breaks_inside_fields(fixture_dir: Path, tmp_path: Path,
                                              local_raw: RawData):
    src = copy_fixture(fixture_dir, tmp_path / "src")
    text = (src / "products.csv").read_bytes().decode("utf-8")
    header, first, rest = text.split("\n", 2)
    cells = first.split('","')
    cells[3] = 'line one\nline two\r\nline three\rline four'
    (src / "products.csv").write_bytes("\n".join([header, '","'.join(cells), rest])
                                      .encode("utf-8"))
    raw = read_local(src)
    assert len(raw.products) == 52
    assert raw.products["product_description"].iloc[0] == \
        "line one\nline two\r\nline three\rline four"
    assert raw.products["location"].iloc[0] == local_raw.products["location"].iloc[0]
    pd.testing.assert_frame_equal(raw.products.iloc[1:], local_raw.products.iloc[1:])


# --- Postgres --------------------------------------------------------------------------------
def load_into_postgres(url: str, raw: RawData, with_bytes: bool,
                       products_table: str = "products", images_table: str = "images") -> None:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cols = ", ".join(f'"{c}" text' for c in RAW_PRODUCT_COLUMNS)
        cur.execute(f"CREATE TABLE {products_table} ({cols})")
        cur.executemany(
            f"INSERT INTO {products_table} VALUES ({', '.join(['%s'] * len(RAW_PRODUCT_COLUMNS))})",
            raw.products[RAW_PRODUCT_COLUMNS].values.tolist())
        cols = ", ".join(f'"{c}" text' for c in RAW_IMAGE_COLUMNS)
        if with_bytes:
            cols += ", data bytea"
        cur.execute(f"CREATE TABLE {images_table} ({cols})")
        width = len(RAW_IMAGE_COLUMNS) + int(with_bytes)
        rows = [[*(row[c] for c in RAW_IMAGE_COLUMNS),
                 *([psycopg2.Binary(row["data"])] if with_bytes else [])]
                for _, row in raw.images.iterrows()]
        cur.executemany(f"INSERT INTO {images_table} VALUES ({', '.join(['%s'] * width)})", rows)
    conn.close()


def test_read_postgres_bytea_photos(postgres_db_url: str, local_raw: RawData):
    load_into_postgres(postgres_db_url, local_raw, with_bytes=True)
    raw = read_postgres(postgres_db_url, "products", "images")
    assert_same_raw(raw, local_raw, any_order=True)
    assert raw.products["id"].is_monotonic_increasing
    assert "ms-test-secret" not in raw.source


def test_read_postgres_photos_from_folder(postgres_db_url: str, local_raw: RawData,
                                          fixture_dir: Path):
    load_into_postgres(postgres_db_url, local_raw, with_bytes=False,
                       products_table="listings_raw", images_table="photos_raw")
    sa_url = postgres_db_url.replace("postgresql://", "postgresql+psycopg2://")
    raw = read_postgres(sa_url, "listings_raw", "photos_raw", fixture_dir / "images")
    assert_same_raw(raw, local_raw, any_order=True)
    # without a folder every photo says why it has no bytes
    bare = read_postgres(postgres_db_url, "listings_raw", "photos_raw")
    assert bare.images["data"].isna().all()
    assert bare.images["source_error"].str.contains("no data column").all()


def test_read_postgres_null_bytes_fall_back_or_report(postgres_db_url: str,
                                                      local_raw: RawData, fixture_dir: Path):
    load_into_postgres(postgres_db_url, local_raw, with_bytes=True)
    photo = local_raw.images["id"].iloc[0]
    conn = psycopg2.connect(postgres_db_url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE images SET data = NULL WHERE id = %s", (photo,))
    conn.close()
    raw = read_postgres(postgres_db_url, "products", "images")
    row = raw.images.set_index("id").loc[photo]
    assert row["data"] is None and row["source_error"] == "photo bytes are NULL in images.data"
    healed = read_postgres(postgres_db_url, "products", "images", str(fixture_dir / "images"))
    assert_same_raw(healed, local_raw, any_order=True)


def test_read_postgres_missing_table(postgres_db_url: str):
    with pytest.raises(FileNotFoundError, match="no_such_table"):
        read_postgres(postgres_db_url, "no_such_table", "images")


def test_read_source_postgres_url_from_env_never_logs_password(
        postgres_db_url: str, local_raw: RawData, monkeypatch, caplog):
    load_into_postgres(postgres_db_url, local_raw, with_bytes=True)
    monkeypatch.setenv("MS_TEST_SOURCE_URL", postgres_db_url)
    cfg = Config.model_validate({"data": {"source": "postgres",
                                          "postgres_url_env": "MS_TEST_SOURCE_URL"}})
    with caplog.at_level(logging.DEBUG, logger="marketsearch"):
        raw = read_source(cfg)
    assert_same_raw(raw, local_raw, any_order=True)
    assert "ms-test-secret" not in caplog.text
    assert "***" in caplog.text


def test_read_source_postgres_without_url_says_which_variable(monkeypatch):
    monkeypatch.delenv("MS_TEST_NO_URL", raising=False)
    cfg = Config.model_validate({"data": {"source": "postgres",
                                          "postgres_url_env": "MS_TEST_NO_URL"}})
    with pytest.raises(ValueError, match="MS_TEST_NO_URL"):
        read_source(cfg)


def test_redact_url():
    assert redact_url("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("host=h user=u password=secret dbname=d") == \
        "host=h user=u password=*** dbname=d"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_bad_connection_error_hides_password():
    with pytest.raises(ConnectionError) as info:
        read_postgres("postgresql://u:topsecret@127.0.0.1:1/db", "p", "i")
    assert "topsecret" not in str(info.value)


# --- S3 (moto server over HTTP) --------------------------------------------------------------
def upload_fixture(endpoint: str, bucket: str, prefix: str, fixture_dir: Path) -> None:
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(fixture_dir.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket,
                               prefix + path.relative_to(fixture_dir).as_posix())


def test_read_s3_equals_local(s3_endpoint: str, s3_bucket: str, fixture_dir: Path,
                              local_raw: RawData):
    upload_fixture(s3_endpoint, s3_bucket, "raw/gumtree/", fixture_dir)
    raw = read_s3(f"s3://{s3_bucket}/raw/gumtree", endpoint_url=s3_endpoint)
    assert_same_raw(raw, local_raw)
    assert raw.source == f"s3://{s3_bucket}/raw/gumtree/"


def test_read_s3_missing_photo_and_missing_file(s3_endpoint: str, s3_bucket: str,
                                                fixture_dir: Path, local_raw: RawData):
    upload_fixture(s3_endpoint, s3_bucket, "", fixture_dir)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    gone = local_raw.images["id"].iloc[3]
    client.delete_object(Bucket=s3_bucket, Key=f"images/{gone}.jpg")
    raw = read_s3(f"s3://{s3_bucket}/", endpoint_url=s3_endpoint)
    row = raw.images.set_index("id").loc[gone]
    assert row["data"] is None
    assert row["source_error"] == f"photo object s3://{s3_bucket}/images/{gone}.jpg not found"
    assert (raw.images["source_error"] != "").sum() == 1
    client.delete_object(Bucket=s3_bucket, Key="images.csv")
    with pytest.raises(FileNotFoundError, match="images.csv"):
        read_s3(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    with pytest.raises(FileNotFoundError, match="bucket"):
        read_s3(f"s3://{s3_bucket}-nope/x/", endpoint_url=s3_endpoint)


def test_read_source_s3_and_postgres_photos_from_s3(s3_endpoint: str, s3_bucket: str,
                                                    fixture_dir: Path, local_raw: RawData,
                                                    postgres_db_url: str):
    upload_fixture(s3_endpoint, s3_bucket, "gumtree/", fixture_dir)
    cfg = Config.model_validate({"data": {"source": "s3", "s3_uri": f"s3://{s3_bucket}/gumtree/",
                                          "s3_endpoint_url": s3_endpoint}})
    assert_same_raw(read_source(cfg), local_raw)
    # the design's production shape: listings in Postgres, photos in S3
    load_into_postgres(postgres_db_url, local_raw, with_bytes=False)
    cfg = Config.model_validate({"data": {"source": "postgres", "postgres_url": postgres_db_url,
                                          "s3_uri": f"s3://{s3_bucket}/gumtree",
                                          "s3_endpoint_url": s3_endpoint}})
    assert_same_raw(read_source(cfg), local_raw, any_order=True)


# --- dispatch and sampling ---------------------------------------------------------------------
def test_read_source_local_with_limit(fixture_dir: Path):
    cfg = Config.model_validate({"data": {"source": "local", "local_dir": str(fixture_dir),
                                          "limit": 26}, "seed": 7})
    raw = read_source(cfg)
    assert len(raw.products) == 26
    assert raw.products["category"].map(root_category).value_counts().eq(2).all()
    assert raw.images["product_id"].isin(raw.products["id"]).all()


def test_extra_dirs_add_new_listings_and_take_repeated_ones_from_the_newer_folder(
        fixture_dir: Path, tmp_path: Path):
    """A newer full export passed as an extra folder: its repeats of old listings replace them
    instead of being counted twice (validate would quarantine the copies as duplicates)."""
    newer = tmp_path / "newer"
    shutil.copytree(fixture_dir, newer)
    products = pd.read_csv(newer / "products.csv", dtype=str, keep_default_na=False)
    repeated = products.iloc[:10].copy()
    repeated["price"] = "£1"  # edited since the first export
    added = products.iloc[:3].copy()
    added["id"] = [f"new-{i}" for i in range(3)]
    pd.concat([repeated, added]).to_csv(newer / "products.csv", index=False, quoting=csv.QUOTE_ALL)
    images = pd.read_csv(newer / "images.csv", dtype=str, keep_default_na=False)
    images[images["product_id"].isin(repeated["id"])].to_csv(newer / "images.csv", index=False)

    cfg = Config.model_validate({"data": {"source": "local", "local_dir": str(fixture_dir),
                                          "extra_local_dirs": [str(newer)]}})
    raw = read_source(cfg)
    first = read_local(fixture_dir)
    assert raw.products["id"].is_unique and raw.images["id"].is_unique
    assert len(raw.products) == len(first.products) + 3
    assert len(raw.images) == len(first.images)
    prices = raw.products.set_index("id")["price"]
    assert (prices[repeated["id"]] == "£1").all()
    assert (prices[first.products["id"].iloc[10:]].values == first.products["price"].iloc[10:].values).all()


def test_sample_is_stratified_deterministic_and_keeps_orphans(local_raw: RawData):
    products = local_raw.products.copy()
    products.loc[0, "category"] = ""                       # unparseable category
    orphans = local_raw.images.iloc[:10].copy()
    orphans["id"] = [f"orphan-{i}" for i in range(10)]
    orphans["product_id"] = "no-such-listing"
    raw = RawData(products, pd.concat([local_raw.images, orphans], ignore_index=True))

    one = sample(raw, 26, seed=1)
    assert len(one.products) == 26
    assert one.products["id"].is_unique
    assert set(one.products.columns) == set(products.columns)
    own = one.images["product_id"].isin(one.products["id"])
    expected = raw.images[raw.images["product_id"].isin(one.products["id"])]
    assert own.sum() == len(expected)                    # every photo of a kept listing
    assert (~own).sum() == 5                             # orphans in proportion: 10 * 26/52
    assert_same_raw(one, sample(raw, 26, seed=1))        # same seed, same sample
    assert not one.products["id"].equals(sample(raw, 26, seed=2).products["id"])
    assert sample(raw, 100, seed=1) is raw               # nothing to drop

    # the unparseable row is a stratum of its own and can be drawn
    drawn = {products.loc[0, "id"] in set(sample(raw, 51, seed=s).products["id"])
             for s in range(5)}
    assert drawn == {True}


# --- streamed ingest from the services ------------------------------------------------------------
def _ingest_counting_fetches(cfg, fetcher_class, out_dir, monkeypatch):
    """ingest(cfg) into out_dir, recording the keys of each call of ``fetcher_class``."""
    from marketsearch.components.ingest import ingest

    calls: list[int] = []
    original = fetcher_class.__call__

    def counted(self, keys):
        calls.append(len(keys))
        return original(self, keys)

    monkeypatch.setattr(fetcher_class, "__call__", counted)
    return ingest(cfg, out_dir=out_dir), calls


def test_ingest_streams_postgres_photos_shard_by_shard(postgres_db_url: str, fixture_dir: Path,
                                                        tmp_path: Path, monkeypatch):
    from marketsearch.components.ingest import ingest
    from marketsearch.sources import TablePhotos

    local = ingest(Config.model_validate({"data": {"local_dir": str(fixture_dir),
                                                   "shard_rows": 10}})).manifest
    load_into_postgres(postgres_db_url, read_local(fixture_dir), with_bytes=True)
    cfg = Config.model_validate({"data": {"source": "postgres", "postgres_url": postgres_db_url,
                                          "local_dir": str(tmp_path / "none"), "shard_rows": 10}})
    snap, calls = _ingest_counting_fetches(cfg, TablePhotos, tmp_path / "pg", monkeypatch)
    # the same shards, hashes and content hash as the same data read from files
    assert snap.manifest["shards"] == local["shards"]
    assert snap.manifest["content_hash"] == local["content_hash"]
    assert calls == [e["n_images"] for e in local["shards"] if e["n_images"]]
    # a photo whose bytes are NULL says so; the rest goes on
    photo = read_local(fixture_dir).images["id"].iloc[0]
    conn = psycopg2.connect(postgres_db_url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE images SET data = NULL WHERE id = %s", (photo,))
    conn.close()
    snap = ingest(cfg, out_dir=tmp_path / "pg2")
    images = snap.images.set_index("id")
    assert images.loc[photo, "source_error"] == "photo bytes are NULL in images.data"
    assert snap.manifest["n_images_unreadable"] == 1
    assert snap.manifest["content_hash"] != local["content_hash"]


def test_ingest_streams_s3_photos_shard_by_shard(s3_endpoint: str, s3_bucket: str,
                                                  fixture_dir: Path, tmp_path: Path,
                                                  monkeypatch):
    from marketsearch.components.ingest import ingest
    from marketsearch.sources import S3Photos

    local = ingest(Config.model_validate({"data": {"local_dir": str(fixture_dir),
                                                   "shard_rows": 10}})).manifest
    upload_fixture(s3_endpoint, s3_bucket, "gumtree/", fixture_dir)
    gone = read_local(fixture_dir).images["id"].iloc[3]
    boto3.client("s3", endpoint_url=s3_endpoint).delete_object(
        Bucket=s3_bucket, Key=f"gumtree/images/{gone}.jpg")
    cfg = Config.model_validate({"data": {"source": "s3", "s3_uri": f"s3://{s3_bucket}/gumtree/",
                                          "s3_endpoint_url": s3_endpoint, "shard_rows": 10}})
    snap, calls = _ingest_counting_fetches(cfg, S3Photos, tmp_path / "s3", monkeypatch)
    assert [e["name"] for e in snap.manifest["shards"]] == [e["name"] for e in local["shards"]]
    assert calls == [e["n_images"] for e in local["shards"] if e["n_images"]]
    row = snap.images.set_index("id").loc[gone]
    assert row["source_error"] == f"photo object s3://{s3_bucket}/gumtree/images/{gone}.jpg not found"
    assert snap.manifest["n_images_unreadable"] == 1
