"""The platform sections: MLflow tracking and registry (mlflow), the model server (serving),
Kubeflow Pipelines (kfp, with the pipeline's stages) and the KServe deploy (kserve)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


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
    # What runs a request's photo through the backbone: "litert" (the photo features model
    # converted to TensorFlow Lite when the bundle loads, a few seconds, and run by LiteRT's
    # XNNPACK kernels: about a third of the time a photo on a CPU) or "tensorflow" (the traced
    # Keras model). The same features to float rounding; photo_threads per call, 0: the CPUs
    # the process may use (its cgroup CPU limit in a pod).
    photo_runtime: Literal["litert", "tensorflow"] = "litert"
    photo_threads: int = Field(0, ge=0)
    # Hot swap: every this many seconds the server checks where its --model path points (the
    # symlink deploy swaps); a new bundle is verified and warmed beside the old one, which
    # keeps answering, then switched to. 0: never (a restart loads a new bundle).
    reload_interval_s: float = Field(2.0, ge=0)
    # TF-Hub handles a served bundle's text model may load (with text_model.hub_handle): a
    # handle named only inside a saved file is refused.
    hub_handles: list[str] = []


# The pipeline's stages (KFP task names use dashes: train-image) and the kind of
# each, which picks its image and its Kubernetes requests/limits.
KFP_STAGES = ("open_run", "ingest", "prepare_shard", "featurize_shard", "gather_clean", "validate",
              "clean", "load_db",
              "train_image", "train_text", "train_fusion", "build_index", "evaluate", "deploy",
              "drift_check", "close_run")
KFP_STAGE_KINDS = {"open_run": "data", "ingest": "data", "prepare_shard": "data",
                   "gather_clean": "data",
                   "validate": "data", "clean": "data", "load_db": "data", "deploy": "data",
                   "close_run": "data",
                   "featurize_shard": "train",
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
    retries: dict[str, int] = {"ingest": 2, "prepare_shard": 2, "validate": 1, "clean": 2,
                               "train_image": 1,
                               "train_text": 1, "train_fusion": 1, "build_index": 1}
    retry_backoff: str = "30s"
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "3600s"
    # How many shards are validated and cleaned at once (dsl.ParallelFor's parallelism;
    # kfp.local runs at most two at a time whatever this says).
    shard_parallelism: int = Field(8, ge=1)
    # KFP caching per stage (absent: on). A stage that acts outside its artifacts (open_run,
    # load_db, evaluate, deploy, drift_check, close_run; see marketsearch.steps) is
    # never cached whatever this says; set a stage false here to always rerun it.
    caching: dict[str, bool] = {}
    # kfp.local's own cache (`marketsearch run` / `monitor`): a second run on the same data and
    # config reuses every cached stage's outputs from <pipeline_root>/.kfp_cache.
    local_caching: bool = True
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
    # One deploy at a time: the deploy step holds the Lease <name>-deploy in the namespace
    # (marketsearch.kube.lease) this long at most; a holder that died is taken over after it.
    # It must outlast a rollout (a canary wait and a promotion wait).
    deploy_lease_s: float = Field(3600.0, gt=0)
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
        if self.deploy_lease_s <= 2 * self.ready_timeout_s:
            raise ValueError(f"kserve.deploy_lease_s ({self.deploy_lease_s:g}) must be more than "
                             f"two kserve.ready_timeout_s ({self.ready_timeout_s:g}): a deploy "
                             "still rolling out would lose its lease to the next one")
        if self.model_uri_prefix is not None and not self.model_uri_prefix.startswith("s3://"):
            raise ValueError(f"kserve.model_uri_prefix must be an s3:// URI, got "
                             f"{self.model_uri_prefix!r}")
        return self
