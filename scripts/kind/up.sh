#!/usr/bin/env bash
# make kind-up: a kind cluster with everything the cluster path needs, then our images in it.
#   1. the kind cluster (scripts/kind/kind-config.yaml), context kind-$KIND_CLUSTER
#   2. cert-manager, KFP standalone, KServe (RawDeployment, no ingress: reach it by port-forward)
#   3. the images (base, trainer, serving) built here and `kind load`ed, named as
#      config/kind.yaml's kfp section says (image_registry, *_image, image_tag)
#   4. k8s/overlays/kind (namespace marketsearch: MinIO, Postgres, MLflow, SAs, RBAC; no
#      InferenceService: the pipeline's deploy step creates it once a model exists); the secrets config/kind.yaml's kfp.secret_env names are copied into
#      `kubeflow`, where KFP standalone runs the pipeline's pods, and `kubeflow` is labelled
#      marketsearch.io/clients=true so the overlay's NetworkPolicies let those pods in
# Idempotent: re-running it updates what is there. Versions are pinned below (override by env).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${KIND_CLUSTER:-marketsearch}"
CONTEXT="kind-${CLUSTER}"
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.16.2}"
KFP_VERSION="${KFP_VERSION:-2.17.0}"          # the backend of the kfp 2.17 SDK in pyproject
KSERVE_VERSION="${KSERVE_VERSION:-v0.15.2}"
NAMESPACE="${MARKETSEARCH_NAMESPACE:-marketsearch}"
KFP_NAMESPACE=kubeflow
PY="${PYTHON:-.venv/bin/python}"
MAKE="${MAKE:-make}"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind-up: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }

# --- prerequisites ---------------------------------------------------------------------------
command -v docker >/dev/null || die "the docker CLI is not installed"
docker info >/dev/null 2>&1 || die "no Docker engine ('docker info' failed): kind runs its nodes in Docker"
command -v kind >/dev/null || die "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v kubectl >/dev/null || die "kubectl is not installed"
command -v git >/dev/null || die "git is not installed (kubectl apply -k fetches KFP's manifests with it)"
[ -x "$PY" ] || die "$PY not found: run make setup first"
[ -d k8s/overlays/kind ] || die "k8s/overlays/kind is missing (the kind overlay of k8s/)"

# Image names and secrets come from config/kind.yaml, so the compiled pipeline and the cluster agree.
read -r REGISTRY TAG BASE_IMAGE TRAINER_IMAGE SERVING_IMAGE SECRETS < <("$PY" -c '
from marketsearch.config import load_config
k = load_config("config/kind.yaml").kfp
print(k.image_registry, k.image_tag, k.base_image, k.trainer_image, k.serving_image,
      ",".join(k.secret_refs()))')
[ -n "${SECRETS:-}" ] || die "could not read the kfp images and secrets from config/kind.yaml"
SERVER_PLATFORM="$(docker version --format '{{.Server.Os}}/{{.Server.Arch}}')"

# --- 1. cluster --------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "kind cluster $CLUSTER exists"
else
  say "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config scripts/kind/kind-config.yaml --wait 180s
fi
k cluster-info >/dev/null

# --- 2. cert-manager, KFP, KServe ----------------------------------------------------------------
say "cert-manager $CERT_MANAGER_VERSION"
k apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
k -n cert-manager wait --for=condition=Available deployment --all --timeout=300s

say "Kubeflow Pipelines $KFP_VERSION (standalone)"
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
k wait --for condition=established --timeout=120s crd/applications.app.k8s.io
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"

say "KServe $KSERVE_VERSION (RawDeployment)"
k apply --server-side --force-conflicts \
  -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
k -n kserve wait --for=condition=Available deployment/kserve-controller-manager --timeout=300s
# cluster resources (storage initializer, runtimes) need the webhook up: retry while it starts
for attempt in 1 2 3 4 5 6; do
  if k apply --server-side --force-conflicts \
      -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"; then
    break
  fi
  [ "$attempt" = 6 ] && die "KServe's cluster resources did not apply"
  sleep 10
done
# RawDeployment (plain Deployments and Services, no Knative/Istio) and no Ingress objects.
k -n kserve get configmap inferenceservice-config -o json | "$PY" -c '
import json, sys
cm = json.load(sys.stdin)
deploy = json.loads(cm["data"].get("deploy", "{}"))
deploy["defaultDeploymentMode"] = "RawDeployment"
cm["data"]["deploy"] = json.dumps(deploy)
ingress = json.loads(cm["data"].get("ingress", "{}"))
ingress["disableIngressCreation"] = True
cm["data"]["ingress"] = json.dumps(ingress)
for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "annotations"):
    cm["metadata"].pop(key, None)
json.dump(cm, sys.stdout)' | k apply --server-side --force-conflicts -f -
k -n kserve rollout restart deployment/kserve-controller-manager
k -n kserve rollout status deployment/kserve-controller-manager --timeout=300s

# --- 3. images -------------------------------------------------------------------------------
say "building $REGISTRY/{$BASE_IMAGE,$TRAINER_IMAGE,$SERVING_IMAGE}:$TAG for $SERVER_PLATFORM, loading them into kind"
"$MAKE" --no-print-directory images-check images-build-base images-build-trainer images-build-serving \
  REGISTRY="$REGISTRY" TAG="$TAG" IMAGE_PLATFORM="$SERVER_PLATFORM" \
  BASE_IMAGE="$BASE_IMAGE" TRAINER_IMAGE="$TRAINER_IMAGE" SERVING_IMAGE="$SERVING_IMAGE"
for image in "$BASE_IMAGE" "$TRAINER_IMAGE" "$SERVING_IMAGE"; do
  kind load docker-image --name "$CLUSTER" "$REGISTRY/$image:$TAG"
done

# --- 4. our services ---------------------------------------------------------------------------
say "k8s/overlays/kind"
k apply -k k8s/overlays/kind
k -n "$NAMESPACE" wait --for=condition=Available deployment --all --timeout=600s

say "secrets $SECRETS -> namespace $KFP_NAMESPACE (KFP standalone runs the pipeline's pods there)"
IFS=, read -r -a SECRET_LIST <<< "$SECRETS"
for secret in "${SECRET_LIST[@]}"; do
  k -n "$NAMESPACE" get secret "$secret" -o json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)
s["metadata"] = {"name": s["metadata"]["name"], "namespace": sys.argv[1],
                 "labels": {"app.kubernetes.io/part-of": "marketsearch"}}
json.dump(s, sys.stdout)' "$KFP_NAMESPACE" | k apply -f -
done
k label namespace "$KFP_NAMESPACE" marketsearch.io/clients=true --overwrite

say "waiting for Kubeflow Pipelines (a few minutes on a fresh cluster)"
k -n "$KFP_NAMESPACE" wait --for=condition=Available deployment --all --timeout=1200s

cat <<MSG

kind cluster $CLUSTER is up (context $CONTEXT). The cluster test starts these port-forwards
itself when nothing listens on the ports; to use the UIs yourself:
  kubectl --context $CONTEXT -n $KFP_NAMESPACE port-forward svc/ml-pipeline-ui 8888:80   # KFP_HOST=http://localhost:8888
  kubectl --context $CONTEXT -n $NAMESPACE port-forward svc/marketsearch-predictor 8081:80   # the InferenceService
Then: make kind-test   (and make kind-down to delete the cluster)
MSG
