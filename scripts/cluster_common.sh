# shellcheck shell=bash
# What scripts/deploy_cluster.sh and scripts/destroy_cluster.sh share: strict mode, an absolute
# TFVARS_FILE, the repository root as working directory, a scratch directory, messages,
# terraform/kubectl shorthands, the prerequisite check and the AWS credentials check.
# Source it with SCRIPT set to the command's name (used in messages).
set -euo pipefail
: "${SCRIPT:?set SCRIPT before sourcing cluster_common.sh}"

# Namespaces shared with k8s/ and config/eks.yaml
APP_NAMESPACE="marketsearch"  # k8s/base: MLflow, the InferenceService, service accounts
KFP_NAMESPACE="kubeflow"      # KFP standalone runs every pipeline pod here

# A relative TFVARS_FILE is relative to where the script was started, not to the repo root.
if [ -n "${TFVARS_FILE:-}" ]; then
  [ -f "$TFVARS_FILE" ] || { echo "$SCRIPT: TFVARS_FILE=$TFVARS_FILE is not a file" >&2; exit 1; }
  TFVARS_FILE="$(cd "$(dirname "$TFVARS_FILE")" && pwd)/$(basename "$TFVARS_FILE")"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORKDIR="$(mktemp -d)"
trap 'rm -rf "$WORKDIR"' EXIT

say() { printf '\n==> %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$SCRIPT" "$*" >&2; }
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }
tf() { terraform -chdir=terraform "$@"; }
k() { kubectl --context "$KUBE_CONTEXT" "$@"; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2"; }

need_aws_credentials() {
  aws sts get-caller-identity --query Arn --output text >/dev/null 2>&1 \
    || die "no working AWS credentials (aws sts get-caller-identity failed): set AWS_PROFILE or log in"
}
