"""Raw-data readers against real services: files, a Postgres cluster, a moto S3 server."""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import shutil
from pathlib import Path

import boto3
import pandas as pd
import psycopg2
import pytest

from marketsearch.config import Config
from marketsearch.schema import RAW_IMAGE_COLUMNS, RAW_PRODUCT_COLUMNS
from marketsearch import sources
from marketsearch.sources import (RawData, Selection, chunks_local, chunks_postgres, chunks_s3,
                                  concat, iter_csv_text, read_local, read_postgres, read_s3,
                                  read_source, redact_url, sample)
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


# --- chunked readers: the same rows, a chunk at a time --------------------------------------------
def assert_chunks_are_the_whole(chunked, whole: RawData, chunk_rows: int) -> None:
    """A ChunkedSource's chunks: at most chunk_rows rows each, one fetcher object per source,
    and put together the whole read's photo index (its fetchers' keys included)."""
    for name in ("listings", "photos"):
        frames = list(getattr(chunked, name)())
        assert max(len(f) for f in frames) <= chunk_rows and len(frames) > 1
    index = chunked.index()
    pd.testing.assert_frame_equal(index.products, whole.products)
    fetchers = {id(f) for f in index.images["_fetch"] if f is not None}
    assert len(fetchers) == 1
    pd.testing.assert_frame_equal(index.images.drop(columns=["_fetch"]),
                                  whole.images.drop(columns=["_fetch"]))
    assert_same_raw(RawData(index.products, sources.fetch_photos(index.images)),
                    RawData(whole.products, sources.fetch_photos(whole.images)))


def test_iter_csv_text_chunks_are_the_whole_read(fixture_dir: Path, tmp_path: Path):
    src = copy_fixture(fixture_dir, tmp_path / "src")
    text = (src / "products.csv").read_bytes().decode("utf-8")
    header, first, rest = text.split("\n", 2)
    cells = first.split('","')
    cells[3] = 'line one\nline two\r\nline three\rline four'
    (src / "products.csv").write_bytes(("\ufeff" + "\n".join([header, '","'.join(cells), rest]))
                                      .encode("utf-8"))
    whole = pd.read_csv(src / "products.csv", dtype=str, keep_default_na=False,
                        na_filter=False, encoding="utf-8-sig")
    for chunk_rows in (1, 7, 52, 1000):
        chunks = list(iter_csv_text(src / "products.csv", "products.csv", chunk_rows))
        assert len(chunks) == -(-52 // chunk_rows)
        pd.testing.assert_frame_equal(pd.concat(chunks), whole)
    assert whole["product_description"].iloc[0] == "line one\nline two\r\nline three\rline four"
    # a header alone: one empty chunk with its columns; nothing at all: one empty frame
    (header_only,) = iter_csv_text(io.BytesIO(b'"id","name"\n'), "x.csv", 5)
    assert list(header_only.columns) == ["id", "name"] and len(header_only) == 0
    (nothing,) = iter_csv_text(io.BytesIO(b""), "x.csv", 5)
    assert nothing.empty and not len(nothing.columns)
    with pytest.raises(ValueError, match="x.csv is not a readable CSV"):
        list(iter_csv_text(io.BytesIO(b'"a","b"\n"1","2"\n"1","2","3"\n'), "x.csv", 5))


def test_chunks_local_are_the_whole_read(fixture_dir: Path, tmp_path: Path):
    whole = sources.chunks_local(fixture_dir, 10**9).index()
    assert_chunks_are_the_whole(chunks_local(fixture_dir, 7), whole, 7)
    assert_same_raw(RawData(whole.products, sources.fetch_photos(whole.images)),
                    read_local(fixture_dir))


def test_chunks_s3_stream_the_whole_read(s3_endpoint: str, s3_bucket: str, fixture_dir: Path,
                                         local_raw: RawData):
    upload_fixture(s3_endpoint, s3_bucket, "raw/", fixture_dir)
    uri = f"s3://{s3_bucket}/raw"
    whole = chunks_s3(uri, endpoint_url=s3_endpoint, chunk_rows=10**9).index()
    assert_chunks_are_the_whole(chunks_s3(uri, endpoint_url=s3_endpoint, chunk_rows=7), whole, 7)
    assert_same_raw(RawData(whole.products, sources.fetch_photos(whole.images)), local_raw)
    with pytest.raises(FileNotFoundError, match="bucket"):
        chunks_s3(f"s3://{s3_bucket}-nope/raw", endpoint_url=s3_endpoint)
    with pytest.raises(FileNotFoundError, match="products.csv"):
        chunks_s3(f"s3://{s3_bucket}/elsewhere", endpoint_url=s3_endpoint)


def test_chunks_postgres_fetch_many_from_a_server_side_cursor(postgres_db_url: str,
                                                              local_raw: RawData):
    load_into_postgres(postgres_db_url, local_raw, with_bytes=True)
    whole = chunks_postgres(postgres_db_url, chunk_rows=10**9).index()
    assert_chunks_are_the_whole(chunks_postgres(postgres_db_url, chunk_rows=7), whole, 7)
    assert_same_raw(RawData(whole.products, sources.fetch_photos(whole.images)), local_raw,
                    any_order=True)
    with pytest.raises(FileNotFoundError, match="no_such_table"):
        chunks_postgres(postgres_db_url, "products", "no_such_table")


# --- Selection: what sample and concat keep, decided chunk by chunk --------------------------------
def _messy_source(fixture_dir: Path, dest: Path, product_id: bool = True) -> Path:
    """The fixture with photos of no listing and a blank (unparseable) category."""
    src = copy_fixture(fixture_dir, dest)
    products = pd.read_csv(src / "products.csv", dtype=str, keep_default_na=False)
    products.loc[[0, 30], "category"] = ["", "no root / at all"]
    products.loc[31, "category"] = " / Sub only"
    products.to_csv(src / "products.csv", index=False, quoting=csv.QUOTE_ALL)
    images = pd.read_csv(src / "images.csv", dtype=str, keep_default_na=False)
    orphans = images.iloc[:11].copy()
    orphans["id"] = [f"orphan-{i}" for i in range(11)]
    orphans["product_id"] = "no-such-listing"
    images = pd.concat([images.iloc[:20], orphans, images.iloc[20:]])
    if not product_id:
        images = images.drop(columns=["product_id"])
    images.to_csv(src / "images.csv", index=False, quoting=csv.QUOTE_ALL)
    return src


def _read(readers) -> list[tuple]:
    """Each reader's name, listing chunks, photo chunks and whole index, read once."""
    return [(r.source, list(r.listings()), list(r.photos()), r.index()) for r in readers]


def _selected(read: list[tuple], limit, seed) -> RawData:
    """The rows Selection keeps of the sources (shown last to first), put together."""
    select = Selection([name for name, *_ in read], limit, seed)
    for k in reversed(range(len(read))):
        _, listings, photos, _ = read[k]
        for chunk in listings:
            select.listings(k, chunk)
        for chunk in photos:
            select.photos(k, chunk)
        select.done(k)
    products, images = [], []
    for k, (_, _, _, index) in enumerate(read):
        keep_p, keep_i = select.listing_mask(k), select.photo_mask(k)
        products.append(index.products if keep_p is None else index.products[keep_p])
        images.append(index.images if keep_i is None else index.images[keep_i])
    return RawData(pd.concat(products, ignore_index=True), pd.concat(images, ignore_index=True))


def _rows(raw: RawData) -> tuple:
    return (raw.products["id"].tolist(), raw.products["category"].tolist(),
            raw.images["id"].tolist())


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_selection_samples_what_sample_samples(fixture_dir: Path, tmp_path: Path, chunk_rows):
    for product_id in (True, False):
        src = _messy_source(fixture_dir, tmp_path / f"src-{product_id}", product_id)
        whole = read_local(src)
        read = _read([chunks_local(src, chunk_rows)])
        for limit in (None, 0, 1, 13, 26, 51, 52, 100):
            for seed in (0, 1, 7):
                expected = sample(whole, limit, seed)
                got = _selected(read, limit, seed)
                assert _rows(got) == _rows(expected), (product_id, limit, seed)
    with pytest.raises(ValueError, match="negative"):
        Selection(["x"], -1)


def test_selection_appends_later_sources_as_concat_does(fixture_dir: Path, tmp_path: Path):
    first = _messy_source(fixture_dir, tmp_path / "first")
    newer = copy_fixture(fixture_dir, tmp_path / "newer")
    products = pd.read_csv(newer / "products.csv", dtype=str, keep_default_na=False)
    added = products.iloc[:3].assign(id=[f"new-{i}" for i in range(3)])
    pd.concat([products.iloc[::3], added, products.iloc[[1]]]).to_csv(
        newer / "products.csv", index=False, quoting=csv.QUOTE_ALL)      # a duplicate too
    images = pd.read_csv(newer / "images.csv", dtype=str, keep_default_na=False)
    images.iloc[::2].to_csv(newer / "images.csv", index=False, quoting=csv.QUOTE_ALL)
    newest = copy_fixture(fixture_dir, tmp_path / "newest")
    pd.DataFrame(columns=list(products.columns)).to_csv(newest / "products.csv", index=False)
    images.iloc[::5].to_csv(newest / "images.csv", index=False, quoting=csv.QUOTE_ALL)
    for limit in (None, 20):
        for extras in ([newer], [newer, newest], [newest, newer, first]):
            expected = sample(read_local(first), limit, 5)
            for extra in extras:
                expected = concat(expected, read_local(extra))
            read = _read([chunks_local(d, 4) for d in [first, *extras]])
            assert _rows(_selected(read, limit, 5)) == _rows(expected), (limit, extras)


# --- ingest in chunks from the services: the snapshot of a whole read -----------------------------
def _whole_read_manifest(cfg, directory: Path) -> list[dict]:
    whole = cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"ingest_chunk_rows": 10**9})})
    raw = read_source(whole)
    images = raw.images.copy()
    images["sha256"] = [hashlib.sha256(b).hexdigest() if b else "" for b in images["data"]]
    from marketsearch import shards
    return [e.as_dict() for e in shards.write(directory, raw.products, images,
                                              cfg.data.shard_rows)]


@pytest.mark.parametrize("source", ["s3", "postgres"])
def test_ingest_in_chunks_smaller_than_a_shard_is_the_whole_read(
        source: str, s3_endpoint: str, s3_bucket: str, postgres_db_url: str,
        fixture_dir: Path, tmp_path: Path):
    from marketsearch import snapshot
    from marketsearch.components.ingest import ingest

    data = {"shard_rows": 8, "ingest_chunk_rows": 7, "limit": 40,
            "local_dir": str(tmp_path / "none")}
    if source == "s3":
        upload_fixture(s3_endpoint, s3_bucket, "gumtree/", fixture_dir)
        data.update(source="s3", s3_uri=f"s3://{s3_bucket}/gumtree/",
                    s3_endpoint_url=s3_endpoint)
    else:
        load_into_postgres(postgres_db_url, read_local(fixture_dir), with_bytes=True)
        data.update(source="postgres", postgres_url=postgres_db_url)
    cfg = Config.model_validate({"data": data, "seed": 11})
    expected = _whole_read_manifest(cfg, tmp_path / "whole")
    snap = ingest(cfg, out_dir=tmp_path / "streamed")
    assert snap.manifest["shards"] == expected and len(expected) > 4
    assert snap.manifest["n_products"] == 40
    for entry in expected:
        for table in ("products", "images"):
            pd.testing.assert_frame_equal(
                snapshot.read_table(tmp_path / "streamed" / entry["path"], table),
                snapshot.read_table(tmp_path / "whole" / entry["path"], table))
