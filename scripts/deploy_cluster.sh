#!/usr/bin/env bash
# make deploy-cluster: the AWS stack of terraform/ and everything marketsearch runs on it.
#   1. terraform init + apply: VPC, EKS (CPU and GPU node groups), RDS, S3, ECR, KMS, IAM/IRSA
#   2. kubeconfig for the cluster (aws eks update-kubeconfig)
#   3. cluster add-ons: the default gp3 StorageClass (EBS CSI), the NVIDIA device plugin (GPU
#      nodes only), the cluster-autoscaler (GPU group from zero), cert-manager, Knative Serving
#      with Istio (KServe's Serverless mode, which the eks overlay's canary rollouts need),
#      KServe, Kubeflow Pipelines standalone
#   4. the secrets the pipeline and MLflow read (database URLs with the RDS master password
#      from its Secrets Manager secret, MLflow's URI and artifact store), built from terraform's
#      outputs at deploy time, never from a file in git; the `mlflow` database on RDS
#   5. k8s/overlays/eks for this account, region and image tag (make k8s-render-eks-live),
#      applied server-side
#   6. how to reach the KFP UI, MLflow and the model server
# Idempotent: a re-run converges (and refreshes the secrets: RDS rotates the master password
# every 7 days; `scripts/deploy_cluster.sh secrets` does only step 4).
#
# Environment (all optional):
#   AWS_PROFILE / AWS credentials  the account to deploy to (region: terraform var `region`)
#   CLUSTER_PUBLIC_CIDRS   comma-separated CIDRs allowed on the public Kubernetes API endpoint;
#                          default: this machine's public IPv4 /32; "none": private endpoint
#                          only (then run this from inside the VPC or over a VPN)
#   TFVARS_FILE            a .tfvars file for terraform (instance types, sizes, names...)
#   AUTO_APPROVE=1         terraform apply without asking
#   IMAGE_TAG              tag `make images` pushed (default: the git short sha)
#   KUBE_CONTEXT           kubeconfig context name (default: the cluster name)
#   *_VERSION              override a pinned version below
SCRIPT=deploy-cluster
# shellcheck source=scripts/cluster_common.sh
source "$(dirname "$0")/cluster_common.sh"

# --- pinned versions (the kind path, scripts/kind/up.sh, pins the same KFP, KServe, cert-manager)
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.16.2}"
KFP_VERSION="${KFP_VERSION:-2.17.0}"                     # backend of the kfp 2.17 SDK
KSERVE_VERSION="${KSERVE_VERSION:-v0.15.2}"
KNATIVE_SERVING_VERSION="${KNATIVE_SERVING_VERSION:-knative-v1.21.1}"
NET_ISTIO_VERSION="${NET_ISTIO_VERSION:-knative-v1.21.1}"  # Istio as Knative's ingress
NVIDIA_DEVICE_PLUGIN_VERSION="${NVIDIA_DEVICE_PLUGIN_VERSION:-v0.17.3}"
CLUSTER_AUTOSCALER_VERSION="${CLUSTER_AUTOSCALER_VERSION:-1.35.2}"  # minor = the cluster's Kubernetes minor

# --- names shared with k8s/ and config/eks.yaml ----------------------------------------------
PIPELINE_SECRET="marketsearch-secrets" # config/eks.yaml kfp.secret_name and its keys:
                                       #   source-database-url, database-url, mlflow-tracking-uri
MLFLOW_SECRET="mlflow-backend"         # k8s/base/mlflow.yaml: backend-store-uri, artifacts-destination
MLFLOW_DATABASE="mlflow"
MLFLOW_TRACKING_URI="http://mlflow.${APP_NAMESPACE}.svc.cluster.local:5000"
NODE_POOL_LABEL="marketsearch/node-pool"
PSQL_IMAGE="${PSQL_IMAGE:-postgres:17-alpine}"

out() { tf output -raw "$1"; }

# --- prerequisites -----------------------------------------------------------------------------
need terraform "https://developer.hashicorp.com/terraform/install (>= 1.5)"
need aws "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html (v2)"
need kubectl "https://kubernetes.io/docs/tasks/tools/ (within one minor of the cluster)"
need python3 "it builds the Kubernetes secrets from the RDS secret"
need curl "it fetches the cluster-autoscaler manifest"
need git "kubectl apply -k fetches KFP's manifests with it"
need make "the eks overlay is rendered by make k8s-render-eks-live"
need_aws_credentials
[ -d k8s/overlays/eks ] || die "k8s/overlays/eks is missing"

# --- 1. terraform --------------------------------------------------------------------------------
terraform_apply() {
  local cidrs="${CLUSTER_PUBLIC_CIDRS:-}" hcl="" cidr
  local -a cidr_list=()
  if [ -z "$cidrs" ]; then
    local ip
    ip="$(curl -fsS --max-time 10 https://checkip.amazonaws.com | tr -d '[:space:]')" || ip=""
    [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] \
      || die "could not find this machine's public IPv4 address: set CLUSTER_PUBLIC_CIDRS (or 'none')"
    cidrs="$ip/32"
  fi
  if [ "$cidrs" != "none" ]; then
    IFS=, read -r -a cidr_list <<< "$cidrs"
    for cidr in "${cidr_list[@]}"; do
      cidr="${cidr// /}"
      if [ -n "$cidr" ]; then hcl="${hcl:+$hcl,}\"$cidr\""; fi
    done
  fi
  local args=(-var "cluster_endpoint_public_access_cidrs=[${hcl}]")
  if [ -n "${TFVARS_FILE:-}" ]; then args+=(-var-file "$TFVARS_FILE"); fi

  say "terraform apply (public API endpoint: ${cidrs})"
  tf init -input=false
  if [ "${AUTO_APPROVE:-0}" = 1 ]; then
    tf apply -input=false -auto-approve "${args[@]}"
  else
    tf apply "${args[@]}"
  fi
}

read_outputs() {
  REGION="$(out region)"
  CLUSTER="$(out cluster_name)"
  KUBE_CONTEXT="${KUBE_CONTEXT:-$CLUSTER}"
  ACCOUNT_ID="$(out ecr_registry | cut -d. -f1)"
  ARTIFACTS_BUCKET="$(out artifacts_bucket)"
  DB_HOST="$(out rds_address)"
  DB_PORT="$(out rds_port)"
  DB_NAME="$(out rds_db_name)"
  DB_SECRET_ARN="$(out rds_master_secret_arn)"
  PIPELINE_ROLE_ARN="$(out pipeline_role_arn)"
  AUTOSCALER_ROLE_ARN="$(out cluster_autoscaler_role_arn)"
}

kubeconfig() {
  say "kubeconfig context $KUBE_CONTEXT for $CLUSTER ($REGION)"
  aws eks update-kubeconfig --region "$REGION" --name "$CLUSTER" --alias "$KUBE_CONTEXT" >/dev/null
  k get --raw /readyz >/dev/null \
    || die "the API server of $CLUSTER is not reachable from here (is your IP in CLUSTER_PUBLIC_CIDRS?)"
  k wait --for=condition=Ready node -l "$NODE_POOL_LABEL=cpu" --timeout=600s
}

# --- 3. add-ons ----------------------------------------------------------------------------------
storage_class() {
  say "default StorageClass gp3 (EBS CSI, encrypted)"
  k apply -f - <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: gp3
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: ebs.csi.aws.com
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
reclaimPolicy: Delete
parameters:
  type: gp3
  encrypted: "true"
YAML
  if k get storageclass gp2 >/dev/null 2>&1; then
    k annotate storageclass gp2 storageclass.kubernetes.io/is-default-class=false --overwrite
  fi
}

nvidia_device_plugin() {
  say "NVIDIA device plugin $NVIDIA_DEVICE_PLUGIN_VERSION (GPU nodes only)"
  k apply -f "https://raw.githubusercontent.com/NVIDIA/k8s-device-plugin/${NVIDIA_DEVICE_PLUGIN_VERSION}/deployments/static/nvidia-device-plugin.yml"
  # It tolerates the nvidia.com/gpu taint already; keep it off the CPU nodes.
  k -n kube-system patch daemonset nvidia-device-plugin-daemonset --type merge \
    -p "{\"spec\":{\"template\":{\"spec\":{\"nodeSelector\":{\"${NODE_POOL_LABEL}\":\"gpu\"}}}}}"
}

cluster_autoscaler() {
  say "cluster-autoscaler $CLUSTER_AUTOSCALER_VERSION (auto-discovery of $CLUSTER's node groups)"
  curl -fsSL "https://raw.githubusercontent.com/kubernetes/autoscaler/cluster-autoscaler-${CLUSTER_AUTOSCALER_VERSION}/cluster-autoscaler/cloudprovider/aws/examples/cluster-autoscaler-autodiscover.yaml" \
    | sed "s/<YOUR CLUSTER NAME>/${CLUSTER}/g" | k apply -f -
  k -n kube-system annotate serviceaccount cluster-autoscaler \
    "eks.amazonaws.com/role-arn=${AUTOSCALER_ROLE_ARN}" --overwrite
  k -n kube-system set image deployment/cluster-autoscaler \
    "cluster-autoscaler=registry.k8s.io/autoscaling/cluster-autoscaler:v${CLUSTER_AUTOSCALER_VERSION}"
  k -n kube-system rollout restart deployment/cluster-autoscaler
  k -n kube-system rollout status deployment/cluster-autoscaler --timeout=300s
}

cert_manager() {
  say "cert-manager $CERT_MANAGER_VERSION"
  k apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
  k -n cert-manager wait --for=condition=Available deployment --all --timeout=300s
}

knative_istio() {
  say "Knative Serving $KNATIVE_SERVING_VERSION with Istio ($NET_ISTIO_VERSION)"
  local serving="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}"
  local netistio="https://github.com/knative-extensions/net-istio/releases/download/${NET_ISTIO_VERSION}"
  k apply -f "$serving/serving-crds.yaml"
  k apply -f "$serving/serving-core.yaml"
  # Istio's ingress gateway as a ClusterIP Service: no internet-facing load balancer by
  # default. Reach the InferenceService by port-forward (below), or expose the gateway on
  # purpose (an internal NLB, or an ingress with authentication).
  curl -fsSL "$netistio/istio.yaml" | sed 's/type: LoadBalancer/type: ClusterIP/' > "$WORKDIR/istio.yaml"
  k apply -l knative.dev/crd-install=true -f "$WORKDIR/istio.yaml"
  k apply -f "$WORKDIR/istio.yaml"
  k apply -f "$netistio/net-istio.yaml"
  k -n knative-serving wait --for=condition=Available deployment --all --timeout=600s
  k -n istio-system wait --for=condition=Available deployment --all --timeout=600s
}

kserve() {
  say "KServe $KSERVE_VERSION (Serverless mode: canary rollouts)"
  local release="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}"
  k apply --server-side --force-conflicts -f "$release/kserve.yaml"
  k -n kserve wait --for=condition=Available deployment/kserve-controller-manager --timeout=300s
  # The cluster resources (runtimes, storage initializer) go through KServe's webhook: retry
  # while it starts.
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if k apply --server-side --force-conflicts -f "$release/kserve-cluster-resources.yaml"; then
      return 0
    fi
    [ "$attempt" = 6 ] && die "KServe's cluster resources did not apply"
    sleep 10
  done
}

kfp() {
  say "Kubeflow Pipelines $KFP_VERSION (standalone)"
  k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
  k wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
  # Pipeline pods run as kubeflow:pipeline-runner: give it the pipeline's IRSA role, and let
  # the app namespace's NetworkPolicies admit kubeflow (MLflow).
  k -n "$KFP_NAMESPACE" annotate serviceaccount pipeline-runner \
    "eks.amazonaws.com/role-arn=${PIPELINE_ROLE_ARN}" --overwrite
  k label namespace "$KFP_NAMESPACE" marketsearch.io/clients=true --overwrite
}

# --- 4. secrets and the MLflow database ----------------------------------------------------------
secrets() {
  say "secrets $PIPELINE_SECRET ($KFP_NAMESPACE, $APP_NAMESPACE) and $MLFLOW_SECRET ($APP_NAMESPACE) from the RDS secret"
  local ns
  for ns in "$APP_NAMESPACE" "$KFP_NAMESPACE"; do
    k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
  done
  # The password goes from the AWS CLI to Python to kubectl through pipes only: never an
  # argument (visible in ps), a file, or the terminal.
  aws secretsmanager get-secret-value --region "$REGION" --secret-id "$DB_SECRET_ARN" \
      --query SecretString --output text \
    | python3 -c '
import json, sys
from urllib.parse import quote

(host, port, dbname, mlflow_db, tracking, artifacts, app_ns, kfp_ns, pipeline_secret,
 mlflow_secret) = sys.argv[1:]
master = json.load(sys.stdin)
user, password = quote(master["username"], safe=""), quote(master["password"], safe="")

def url(db):
    return f"postgresql://{user}:{password}@{host}:{port}/{db}?sslmode=require"

def secret(name, namespace, data):
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "marketsearch",
                                    "app.kubernetes.io/managed-by": "deploy_cluster.sh"}},
            "stringData": data}

pipeline = {"source-database-url": url(dbname), "database-url": url(dbname),
            "mlflow-tracking-uri": tracking}
items = [secret(pipeline_secret, ns, pipeline) for ns in (kfp_ns, app_ns)]
items.append(secret(mlflow_secret, app_ns, {"backend-store-uri": url(mlflow_db),
                                            "artifacts-destination": f"s3://{artifacts}/mlflow"}))
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout)
' "$DB_HOST" "$DB_PORT" "$DB_NAME" "$MLFLOW_DATABASE" "$MLFLOW_TRACKING_URI" \
      "$ARTIFACTS_BUCKET" "$APP_NAMESPACE" "$KFP_NAMESPACE" "$PIPELINE_SECRET" "$MLFLOW_SECRET" \
    | k apply -f -
}

mlflow_database() {
  say "database $MLFLOW_DATABASE on RDS (created once, by a Job inside the VPC)"
  k -n "$APP_NAMESPACE" delete job mlflow-database --ignore-not-found >/dev/null
  k apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: mlflow-database
  namespace: ${APP_NAMESPACE}
spec:
  backoffLimit: 3
  ttlSecondsAfterFinished: 600
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      nodeSelector:
        ${NODE_POOL_LABEL}: cpu
      securityContext:
        runAsNonRoot: true
        runAsUser: 70
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: psql
          image: ${PSQL_IMAGE}
          env:
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: ${PIPELINE_SECRET}
                  key: database-url
          command:
            - sh
            - -ec
            - |
              if psql "\$DATABASE_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '${MLFLOW_DATABASE}'" | grep -q 1; then
                echo "database ${MLFLOW_DATABASE} exists"
              else
                psql "\$DATABASE_URL" -c 'CREATE DATABASE ${MLFLOW_DATABASE}'
              fi
          resources:
            requests: {cpu: 50m, memory: 64Mi}
            limits: {cpu: 500m, memory: 128Mi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
YAML
  k -n "$APP_NAMESPACE" wait --for=condition=complete job/mlflow-database --timeout=300s \
    || { k -n "$APP_NAMESPACE" logs job/mlflow-database --tail=50 || true; die "could not create the $MLFLOW_DATABASE database"; }
}

# --- 5. the eks overlay ------------------------------------------------------------------------
overlay() {
  local tag="${IMAGE_TAG:-$(git rev-parse --short HEAD)}" repo missing=""
  for repo in base serving; do
    aws ecr describe-images --region "$REGION" --repository-name "$CLUSTER/$repo" \
        --image-ids "imageTag=$tag" >/dev/null 2>&1 || missing="$missing $CLUSTER/$repo:$tag"
  done
  [ -z "$missing" ] || die "not in ECR:$missing. Push the images (make images TAG=$tag, on a machine with Docker) or set IMAGE_TAG, then re-run: the steps before this one are idempotent"
  say "k8s/overlays/eks for account $ACCOUNT_ID, $REGION, images :$tag"
  make --no-print-directory k8s-render-eks-live \
    EKS_ACCOUNT_ID="$ACCOUNT_ID" EKS_REGION="$REGION" EKS_TAG="$tag" EKS_NAME="$CLUSTER"
  # Server-side, as k8s/README.md says: the pipeline's deploy step owns the InferenceService's
  # model URI afterwards, and a conflict stops a re-apply from rolling it back.
  k apply --server-side -f build/k8s/eks-live.yaml
  k -n "$APP_NAMESPACE" rollout status deployment/mlflow --timeout=600s
}

summary() {
  say "waiting for Kubeflow Pipelines (a few minutes on a fresh cluster)"
  k -n "$KFP_NAMESPACE" wait --for=condition=Available deployment --all --timeout=1200s
  cat <<MSG

$CLUSTER is up (kubeconfig context $KUBE_CONTEXT, region $REGION).

  KFP UI:       kubectl --context $KUBE_CONTEXT -n $KFP_NAMESPACE port-forward svc/ml-pipeline-ui 8080:80
                then open http://localhost:8080 (upload build/pipelines/eks-training.yaml from make images-compile)
  MLflow:       kubectl --context $KUBE_CONTEXT -n $APP_NAMESPACE port-forward svc/mlflow 5000:5000
  Model server: kubectl --context $KUBE_CONTEXT -n istio-system port-forward svc/istio-ingressgateway 8081:80
                curl -H "Host: marketsearch.$APP_NAMESPACE.example.com" http://localhost:8081/v2/health/ready
                (the InferenceService is Ready once a champion bundle is in s3://$ARTIFACTS_BUCKET/serving/)

The database password is RDS-managed and rotates every 7 days: refresh the Kubernetes secrets
with  scripts/deploy_cluster.sh secrets.  Tear everything down with  make destroy-cluster.
MSG
}

case "${1:-all}" in
  all)
    terraform_apply
    read_outputs
    kubeconfig
    storage_class
    nvidia_device_plugin
    cluster_autoscaler
    cert_manager
    knative_istio
    kserve
    kfp
    secrets
    mlflow_database
    overlay
    summary
    ;;
  secrets)
    read_outputs
    kubeconfig
    secrets
    k -n "$APP_NAMESPACE" rollout restart deployment/mlflow
    ;;
  *)
    die "usage: $0 [all|secrets]"
    ;;
esac
