"""Typed configuration: YAML on disk, validated by pydantic, with embedded defaults.

Every knob the pipeline has lives here; stages receive the whole config (as JSON, so that the
compiled KFP pipeline carries it as an editable parameter) and read only their own section.
Paths may use ``{run_dir}``; relative paths are resolved against the working directory when
the config is loaded, so components that run in other processes see absolute paths.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config" / "local.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    s3_endpoint_url: str | None = None
    # Keep only this many listings (stratified sample, seeded); photos follow their listing.
    limit: int | None = None


class ValidateConfig(_Section):
    # A run stops when more than this fraction of listings (or photos) fails row checks.
    max_bad_fraction: float = 0.2
    required_product_columns: list[str] = [
        "id", "product_name", "category", "product_description", "price", "location"]
    required_image_columns: list[str] = ["id", "product_id"]


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
    image_size: int = 64
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


class ImageModelConfig(_Section):
    backbone: Literal["small_cnn", "efficientnetb0", "resnet50"] = "small_cnn"
    # None: random init; "imagenet": keras.applications weights; otherwise a path to weights.
    weights: str | None = None
    embedding_dim: int = 256
    epochs: int = 18
    fine_tune_epochs: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-3
    fine_tune_learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5
    dropout: float = 0.3
    augment: bool = True


class Word2VecConfig(_Section):
    vector_size: int = 128
    window: int = 5
    min_count: int = 2
    epochs: int = 20


class TextModelConfig(_Section):
    encoder: Literal["word2vec_cnn", "tfhub"] = "word2vec_cnn"
    hub_handle: str | None = None
    word2vec: Word2VecConfig = Word2VecConfig()
    max_len: int = 128
    embedding_dim: int = 256
    filters: int = 64
    kernel_sizes: list[int] = [1, 2]
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5
    dropout: float = 0.3


class FusionConfig(_Section):
    embedding_dim: int = 256
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5
    dropout: float = 0.3
    # Probability of hiding one modality per training example, so that the fused model also
    # embeds text-only and photo-only queries into the same space.
    modality_dropout: float = 0.2


class EvaluateConfig(_Section):
    promotion_metric: Literal["accuracy", "macro_f1", "top3_accuracy"] = "accuracy"
    # The challenger must beat the champion by more than this on the same test pairs.
    min_improvement: float = 0.0


class IndexConfig(_Section):
    type: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    ivf_nlist: int = 64
    ivf_nprobe: int = 8
    recall_k: int = 10


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///{run_dir}/mlflow.db"
    tracking_uri_env: str = "MLFLOW_TRACKING_URI"
    artifact_location: str | None = "{run_dir}/mlartifacts"
    experiment: str = "marketsearch"
    registered_model: str = "marketsearch"
    champion_alias: str = "champion"


class ServingConfig(_Section):
    # Where deploy puts the champion bundle and where `marketsearch serve` loads it from
    # (KServe mounts a storageUri at /mnt/models: pass --model /mnt/models there).
    model_dir: str = "{run_dir}/serving/marketsearch"
    model_name: str = "marketsearch"
    port: int = 8080
    # Request limits: a bigger body is answered 413, a bigger batch or k 400.
    max_request_bytes: int = 16 * 1024 * 1024
    max_instances: int = 64
    max_photo_bytes: int = 8 * 1024 * 1024
    default_k: int = 10
    max_k: int = 100
    # Location re-ranking (see SearchIndex.search_near):
    #   score = similarity - distance_weight * min(distance_km / distance_radius_km, 1)
    # over the rerank_pool_factor * k most similar listings.
    distance_weight: float = 0.1
    distance_radius_km: float = 50.0
    rerank_pool_factor: int = 10
    # Threads that run model calls beside the event loop (TensorFlow releases the GIL).
    inference_threads: int = 2


class KfpConfig(_Section):
    pipeline_root: str = "{run_dir}/kfp"
    # Container image for every component: registry prefix + name + tag (cluster only).
    image_registry: str = "marketsearch"
    image_tag: str = "latest"
    trainer_image: str = "trainer"
    base_image: str = "base"
    use_gpu: bool = False


class Config(_Section):
    run_dir: str = "runs"
    seed: int = 42
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    clean: CleanConfig = CleanConfig()
    image_model: ImageModelConfig = ImageModelConfig()
    text_model: TextModelConfig = TextModelConfig()
    fusion: FusionConfig = FusionConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    index: IndexConfig = IndexConfig()
    mlflow: MlflowConfig = MlflowConfig()
    serving: ServingConfig = ServingConfig()
    kfp: KfpConfig = KfpConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # --- derived values -------------------------------------------------------------
    def path(self, template: str) -> Path:
        return Path(template.format(run_dir=self.run_dir))

    @property
    def database_url(self) -> str:
        return os.environ.get(self.clean.database_url_env) or self.clean.database_url.format(
            run_dir=self.run_dir)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get(self.mlflow.tracking_uri_env) or self.mlflow.tracking_uri.format(
            run_dir=self.run_dir)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.model_validate_json(text)

    def resolved(self, base: Path | None = None) -> "Config":
        """A copy whose local paths are absolute (relative ones taken against ``base``)."""
        base = Path(base or os.getcwd())
        data = self.model_dump(by_alias=True)
        data["run_dir"] = str((base / self.run_dir).resolve())
        local_dir = Path(self.data.local_dir)
        if not local_dir.is_absolute():
            data["data"]["local_dir"] = str((base / local_dir).resolve())
        return Config.model_validate(data)


def _deep_update(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base: Path | None = None) -> Config:
    """Load YAML config (default ``config/local.yaml``), apply overrides, resolve paths."""
    path = Path(path) if path else DEFAULT_CONFIG
    data: dict = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    elif path != DEFAULT_CONFIG:
        raise FileNotFoundError(f"config file {path} not found")
    if isinstance(overrides, dict):
        data = _deep_update(data, overrides)
    else:
        for item in overrides or []:
            data = _deep_update(data, parse_override(item))
    return Config.model_validate(data).resolved(base)


def config_digest(cfg: Config) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(cfg.model_dump(by_alias=True), sort_keys=True).encode()).hexdigest()[:12]
