# The AWS side of the cluster path (terraform/: VPC, EKS with CPU and GPU node groups, RDS,
# S3, ECR, KMS, IAM/IRSA) and the tools that check it. See terraform/README.md.
#   make deploy-cluster     terraform apply, then cert-manager, Knative+Istio, KServe, KFP,
#                           the NVIDIA device plugin, the cluster-autoscaler, the secrets and
#                           k8s/overlays/eks on the cluster (scripts/deploy_cluster.sh)
#   make destroy-cluster    everything back down (scripts/destroy_cluster.sh)
#   make cluster-secrets    refresh the Kubernetes secrets from the RDS-managed password
#   make tools-checkov      checkov in its own venv, .venv-tools (its pins clash with the project's)
#   make test-infra         tests/infra: terraform fmt/validate/plan/apply against moto, checkov
# deploy/destroy read AWS credentials from the environment (AWS_PROFILE, ...) and take
# AUTO_APPROVE=1, TFVARS_FILE=..., CLUSTER_PUBLIC_CIDRS=..., IMAGE_TAG=... (see the scripts).
TOOLS_VENV      ?= .venv-tools
CHECKOV_VERSION ?= 3.3.30

.PHONY: deploy-cluster destroy-cluster cluster-secrets tools-checkov test-infra

deploy-cluster:
	scripts/deploy_cluster.sh

destroy-cluster:
	scripts/destroy_cluster.sh

cluster-secrets:
	scripts/deploy_cluster.sh secrets

# Re-installs only when CHECKOV_VERSION changes (a stamp file per version).
tools-checkov: $(TOOLS_VENV)/.checkov-$(CHECKOV_VERSION)

$(TOOLS_VENV)/.checkov-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	@rm -f $(TOOLS_VENV)/.checkov-*
	@touch $@

test-infra: tools-checkov
	$(BIN)/python -m pytest tests/infra -rs $(PYTEST_ARGS)
