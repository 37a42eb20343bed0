"""The data sections: where the listings come from (data), the row checks (validate), and
cleaning and splitting them (clean, clean.split)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


class DataConfig(_Section):
    source: Literal["local", "postgres", "s3"] = "local"
    local_dir: str = "../shared/data/gumtree"
    # Postgres source: URL from here or from the env var named below (never a literal secret).
    postgres_url: str | None = None
    postgres_url_env: str = "MARKETSEARCH_SOURCE_DB_URL"
    products_table: str = "products"
    images_table: str = "images"
    # S3 source: s3://bucket/prefix holding products.csv, images.csv and images/<id>.jpg
    s3_uri: str | None = None
    # The S3 endpoint of s3_uri and of an s3:// shard_cache (MinIO, a test server); None: AWS's
    # (or boto3's $AWS_ENDPOINT_URL_S3).
    s3_endpoint_url: str | None = None
    # Keep only this many listings (stratified sample, seeded); photos follow their listing.
    limit: int | None = None
    # More folders laid out like local_dir whose listings join the source's (new listings
    # arriving: `marketsearch monitor --data DIR`); data.limit does not apply to them.
    extra_local_dirs: list[str] = []
    # The catalogue moves in shards of at most this many listings, each with all its photos
    # (marketsearch.shards): ingest writes them, the training DAG validates and cleans each in
    # a task of its own (components/shard.py), the database upsert commits one per transaction.
    shard_rows: int = Field(1000, gt=0)
    # ingest reads the source this many listing (or photo) rows at a time and spills them to
    # scratch files by shard, so that its memory is a chunk or a shard, never the catalogue.
    ingest_chunk_rows: int = Field(50_000, gt=0)
    # A shard's clean data by its content, config and code: an unchanged shard is not
    # validated and cleaned again. A local directory or an s3://bucket/prefix (config/eks.yaml:
    # the data bucket, as a pod's disk does not outlive it). None: off.
    shard_cache: str | None = "{run_dir}/cache/shards"
    # Trainers stream the shards through tf.data (marketsearch.streaming): examples are
    # shuffled in a buffer of this many, which bounds their memory, not the catalogue's size.
    shuffle_buffer: int = Field(16384, gt=0)


class ValidateConfig(_Section):
    # A run stops when more than this fraction of listings (or photos) fails row checks.
    max_bad_fraction: float = 0.2
    required_product_columns: list[str] = [
        "id", "product_name", "category", "product_description", "price", "location"]
    required_image_columns: list[str] = ["id", "product_id"]
    # The Great Expectations row checks; None: the suite shipped in the package
    # (src/marketsearch/data/expectations.yaml).
    expectations_file: str | None = None


class SplitConfig(_Section):
    train: float = 0.75
    val: float = 0.10
    test: float = 0.15

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split fractions must sum to 1")
        return self


class CleanConfig(_Section):
    # The photos are kept at this square size (the shared listings' photos are 128x128); the
    # photo model resizes to its own input size (image_model.input_size) inside the model.
    image_size: int = 128
    min_price: float = 0.0
    max_price: float = 50_000.0
    # Photos whose width/height ratio exceeds this (either way) are outliers.
    max_aspect_ratio: float = 3.0
    split: SplitConfig = SplitConfig()
    database_url: str = "sqlite:///{run_dir}/marketsearch.db"
    database_url_env: str = "MARKETSEARCH_DB_URL"
    gazetteer_min_population: int = 500
    # The first photo of each listing is also kept as a JPEG thumbnail of this size (pixels,
    # square) for the search page; 0 keeps none.
    thumbnail_size: int = 160
