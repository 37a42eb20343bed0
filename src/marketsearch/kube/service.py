"""The InferenceService object: the names KServe uses, the deploy's error, and the one builder
of the object (the shape of k8s/base/inferenceservice.yaml)."""
from __future__ import annotations

from marketsearch.config import Config

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
CONTAINER = "kserve-container"          # the name KServe gives a custom predictor's container
STORAGE_URI_ENV = "STORAGE_URI"         # a custom container's storageUri (KServe convention)
MODEL_MOUNT = "/mnt/models"             # where KServe's storage initializer puts the bundle
FIELD_MANAGER = "marketsearch-deploy"
VERSION_ANNOTATION = "marketsearch.io/model-version"
# Reasons KServe / Knative give when a revision will not become Ready on its own.
FATAL_REASONS = {"RevisionFailed", "ProgressDeadlineExceeded", "ContainerMissing"}
FATAL_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}


class KServeDeployError(RuntimeError):
    """The InferenceService could not be rolled out (what happened, and what was restored)."""


# --- the object ----------------------------------------------------------------------------
def serving_image(cfg: Config) -> str:
    image = cfg.kserve.image or cfg.kfp.image(cfg.kfp.serving_image)
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if "@" not in image and (":" not in name or name.endswith(":latest")):
        raise ValueError(f"serving image {image!r}: pin a tag (kfp.image_tag or kserve.image), "
                         "never 'latest'")
    return image


def build_inference_service(cfg: Config, storage_uri: str,
                            model_version: str | None = None) -> dict:
    """The InferenceService that serves the bundle at ``storage_uri`` (s3://, gs://, ...)."""
    ks, port = cfg.kserve, cfg.serving.port
    pull = ks.image_pull_policy or cfg.kfp.image_pull_policy or "Always"

    def probe(path: str, initial: int, period: int, failures: int) -> dict:
        return {"httpGet": {"path": path, "port": port}, "initialDelaySeconds": initial,
                "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}

    container = {
        "name": CONTAINER,
        "image": serving_image(cfg),
        "imagePullPolicy": pull,
        "command": ["marketsearch", "serve"],
        "args": ["--model", MODEL_MOUNT, "--port", str(port)],
        "env": [{"name": STORAGE_URI_ENV, "value": storage_uri},
                {"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "http1", "containerPort": port, "protocol": "TCP"}],
        # Ready only once the models and the index are loaded and warmed up (up to ~5 min).
        "readinessProbe": probe("/v2/health/ready", 5, 10, 30),
        "livenessProbe": probe("/v2/health/live", 10, 20, 3),
        "resources": {"requests": dict(ks.requests), "limits": dict(ks.limits)},
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    metadata = {"name": ks.name, "namespace": ks.namespace,
                "labels": {"app.kubernetes.io/name": ks.name,
                           "app.kubernetes.io/component": "predictor",
                           "app.kubernetes.io/part-of": "marketsearch",
                           "app.kubernetes.io/managed-by": FIELD_MANAGER}}
    if model_version is not None:
        metadata["annotations"] = {VERSION_ANNOTATION: str(model_version)}
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": {
            "serviceAccountName": ks.service_account,
            "minReplicas": ks.min_replicas,
            "maxReplicas": ks.max_replicas,
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        }},
    }


def storage_uri_of(predictor: dict) -> str | None:
    """The STORAGE_URI of a predictor spec's kserve-container (None when it has none)."""
    for container in predictor.get("containers") or []:
        if container.get("name") == CONTAINER:
            for env in container.get("env") or []:
                if env.get("name") == STORAGE_URI_ENV:
                    return env.get("value")
    return None
