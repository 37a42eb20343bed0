#!/usr/bin/env bash
# make destroy-cluster: tear down what `make deploy-cluster` built.
#   1. in the cluster, when it is reachable: delete k8s/overlays/eks, the kubeflow and
#      marketsearch namespaces and every LoadBalancer Service, then wait until the EBS volumes
#      of their PersistentVolumes are gone. Terraform does not know those AWS objects (the
#      cluster made them): left behind they cost money and an ELB blocks the VPC's deletion.
#   2. terraform apply -var allow_destroy=true, limited to the S3 buckets, the ECR repositories
#      and the RDS instance (checked first: that plan may only update them in place). It lifts
#      RDS deletion protection and lets terraform empty the buckets and repositories.
#   3. terraform destroy.
# RDS leaves a final snapshot <name>-postgres-final-<UTC time>, encrypted with the stack's data
# KMS key, which is therefore kept (taken out of terraform's state, its ARN printed at the end);
# SKIP_FINAL_SNAPSHOT=1 keeps neither.
#
# Environment (all optional):
#   AUTO_APPROVE=1         no confirmation (CI); otherwise type the cluster name to go on
#   TFVARS_FILE            the same .tfvars file `make deploy-cluster` used, if any
#   SKIP_FINAL_SNAPSHOT=1  delete the database without a final snapshot
#   KUBE_CONTEXT           kubeconfig context name (default: the cluster name)
SCRIPT=destroy-cluster
# shellcheck source=scripts/cluster_common.sh
source "$(dirname "$0")/cluster_common.sh"

need terraform "https://developer.hashicorp.com/terraform/install (>= 1.5)"
need aws "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html (v2)"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need python3 "it checks the teardown plan"
need_aws_credentials

tf init -input=false >/dev/null
if [ -z "$(tf state list 2>/dev/null)" ]; then
  echo "destroy-cluster: terraform/ has no state: nothing to destroy"
  exit 0
fi
CLUSTER="$(tf output -raw cluster_name 2>/dev/null || true)"
REGION="$(tf output -raw region 2>/dev/null || true)"
if [ -z "$CLUSTER" ] || [ -z "$REGION" ]; then
  die "terraform outputs cluster_name/region are missing: run terraform -chdir=terraform destroy yourself"
fi
KUBE_CONTEXT="${KUBE_CONTEXT:-$CLUSTER}"

if [ "${AUTO_APPROVE:-0}" != 1 ]; then
  printf 'This deletes the EKS cluster %s in %s, its RDS database, S3 buckets (with their data)\nand ECR repositories (with their images). Type the cluster name to go on: ' "$CLUSTER" "$REGION"
  read -r answer || die "no answer on stdin: set AUTO_APPROVE=1 to skip the prompt"
  [ "$answer" = "$CLUSTER" ] || die "not confirmed; nothing deleted"
fi

# --- 1. what the cluster created in AWS -------------------------------------------------------
cluster_reachable() {
  aws eks describe-cluster --region "$REGION" --name "$CLUSTER" >/dev/null 2>&1 || return 1
  aws eks update-kubeconfig --region "$REGION" --name "$CLUSTER" --alias "$KUBE_CONTEXT" >/dev/null 2>&1 || return 1
  k get --raw /readyz >/dev/null 2>&1
}

if cluster_reachable; then
  say "deleting k8s/overlays/eks"
  k delete -k k8s/overlays/eks --ignore-not-found --wait=true --timeout=300s \
    || warn "some objects of the overlay did not delete cleanly"

  say "deleting the $KFP_NAMESPACE and $APP_NAMESPACE namespaces (their volumes go with them)"
  k delete namespace "$KFP_NAMESPACE" "$APP_NAMESPACE" --ignore-not-found --wait=true --timeout=600s \
    || warn "the namespaces are still terminating"

  say "deleting LoadBalancer Services"
  k get service --all-namespaces \
      -o jsonpath='{range .items[?(@.spec.type=="LoadBalancer")]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' \
    | while read -r ns name; do
        if [ -n "$name" ]; then
          k -n "$ns" delete service "$name" --wait=true --timeout=300s || warn "could not delete $ns/$name"
        fi
      done

  say "deleting the remaining PersistentVolumeClaims, waiting for their EBS volumes to go"
  k delete pvc --all --all-namespaces --wait=false >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    [ -z "$(k get pv -o name 2>/dev/null)" ] && break
    sleep 10
  done
  if [ -n "$(k get pv -o name 2>/dev/null)" ]; then
    warn "PersistentVolumes left (their EBS volumes may outlive the cluster): $(k get pv -o name | tr '\n' ' ')"
  fi
else
  warn "the cluster's API server is not reachable from here: load balancers and EBS volumes that"
  warn "Kubernetes created are not cleaned up. Check afterwards with"
  warn "  aws ec2 describe-volumes --region $REGION --filters Name=tag-key,Values=kubernetes.io/created-for/pvc/name"
  warn "  aws elbv2 describe-load-balancers --region $REGION ; aws elb describe-load-balancers --region $REGION"
fi

# --- 2. allow terraform to delete data stores ---------------------------------------------------
args=(-var allow_destroy=true)
if [ "${SKIP_FINAL_SNAPSHOT:-0}" = 1 ]; then
  args+=(-var db_skip_final_snapshot=true)
  SNAPSHOT=""
else
  SNAPSHOT="${CLUSTER}-postgres-final-$(date -u +%Y%m%d%H%M%S)"
  args+=(-var "db_final_snapshot_identifier=${SNAPSHOT}")
fi
if [ -n "${TFVARS_FILE:-}" ]; then args+=(-var-file "$TFVARS_FILE"); fi

say "terraform: allow_destroy on the buckets, ECR repositories and the RDS instance"
tf plan -input=false -out "$WORKDIR/teardown.tfplan" "${args[@]}" \
  -target=aws_s3_bucket.this -target=aws_ecr_repository.this -target=aws_db_instance.this
tf show -json "$WORKDIR/teardown.tfplan" | python3 -c '
import json, sys
plan = json.load(sys.stdin)
bad = [(rc["address"], rc["change"]["actions"]) for rc in plan.get("resource_changes", [])
       if rc["change"]["actions"] not in (["update"], ["no-op"], ["read"])]
if bad:
    sys.exit("destroy-cluster: the allow_destroy step would not only update in place (different "
             "variables from the deploy? pass the same TFVARS_FILE):\n"
             + "\n".join(f"  {a}: {c}" for a, c in bad))
'
tf apply -input=false "$WORKDIR/teardown.tfplan"

# --- 3. destroy ------------------------------------------------------------------------------------
KEPT_KEY=""
if [ -n "$SNAPSHOT" ]; then
  # The final snapshot is encrypted with the data key: keep the key, or the snapshot dies with it.
  KEPT_KEY="$(tf output -raw kms_data_key_arn)"
  tf state rm aws_kms_key.data >/dev/null
fi

say "terraform destroy"
tf destroy -input=false -auto-approve "${args[@]}"

kubectl config delete-context "$KUBE_CONTEXT" >/dev/null 2>&1 || true

echo
echo "$CLUSTER is gone."
if [ -n "$SNAPSHOT" ]; then
  cat <<MSG
Kept: the RDS snapshot $SNAPSHOT and the KMS key that encrypts it,
  $KEPT_KEY
Once the snapshot is no longer needed:
  aws rds delete-db-snapshot --region $REGION --db-snapshot-identifier $SNAPSHOT
  aws kms schedule-key-deletion --region $REGION --key-id $KEPT_KEY --pending-window-in-days 7
MSG
fi
