# k8s/ (kustomize base + overlays kind and eks), rendered offline with kubectl's kustomize.
#   make k8s-render            # build/k8s/kind.yaml and build/k8s/eks.yaml (eks with its placeholders)
#   make k8s-render-eks-live   # build/k8s/eks-live.yaml: eks with the real account, region, tag
# make kind-up applies k8s/overlays/kind itself (kubectl apply -k); see k8s/README.md.
KUBECTL     ?= kubectl
K8S_OUT     ?= build/k8s
K8S_OVERLAYS := kind eks

# k8s-render-eks-live: values from Terraform's outputs unless given on the command line.
EKS_ACCOUNT_ID ?= $(shell terraform -chdir=terraform output -raw ecr_registry 2>/dev/null | cut -d. -f1)
EKS_REGION     ?= $(shell terraform -chdir=terraform output -raw region 2>/dev/null)
EKS_NAME       ?= marketsearch
EKS_TAG        ?= $(or $(TAG),$(shell git rev-parse --short HEAD 2>/dev/null))

.PHONY: k8s-render k8s-render-eks-live

k8s-render:
	@command -v $(KUBECTL) >/dev/null || { echo "k8s-render: kubectl is not installed" >&2; exit 1; }
	@mkdir -p $(K8S_OUT)
	@for overlay in $(K8S_OVERLAYS); do \
	  $(KUBECTL) kustomize k8s/overlays/$$overlay > $(K8S_OUT)/.$$overlay.yaml.tmp || exit 1; \
	  mv $(K8S_OUT)/.$$overlay.yaml.tmp $(K8S_OUT)/$$overlay.yaml; \
	  echo "k8s/overlays/$$overlay -> $(K8S_OUT)/$$overlay.yaml"; \
	done

# The eks overlay's placeholders (account 123456789012, region eu-west-2, tag 0.1.0, the
# Terraform name prefix "marketsearch") replaced; refuses to write a file that still has one.
# Apply with: kubectl apply --server-side -f build/k8s/eks-live.yaml (k8s/README.md).
k8s-render-eks-live:
	@echo "$(EKS_ACCOUNT_ID)" | grep -Eq '^[0-9]{12}$$' || { echo "k8s-render-eks-live: EKS_ACCOUNT_ID='$(EKS_ACCOUNT_ID)' is not a 12-digit AWS account (apply terraform/ or pass EKS_ACCOUNT_ID=...)" >&2; exit 1; }
	@test -n "$(EKS_REGION)" || { echo "k8s-render-eks-live: EKS_REGION is empty (apply terraform/ or pass EKS_REGION=...)" >&2; exit 1; }
	@test -n "$(EKS_TAG)" || { echo "k8s-render-eks-live: EKS_TAG is empty (pass the tag make images pushed)" >&2; exit 1; }
	@mkdir -p $(K8S_OUT)
	$(KUBECTL) kustomize k8s/overlays/eks | sed \
	  -e 's/123456789012/$(EKS_ACCOUNT_ID)/g' \
	  -e 's/eu-west-2/$(EKS_REGION)/g' \
	  -e 's#amazonaws\.com/marketsearch/\([a-z-]*\):0\.1\.0#amazonaws.com/$(EKS_NAME)/\1:$(EKS_TAG)#g' \
	  -e 's#role/marketsearch-irsa-#role/$(EKS_NAME)-irsa-#g' \
	  -e 's#marketsearch-artifacts-#$(EKS_NAME)-artifacts-#g' \
	  > $(K8S_OUT)/.eks-live.yaml.tmp
	@if grep -n '123456789012' $(K8S_OUT)/.eks-live.yaml.tmp; then \
	  echo "k8s-render-eks-live: placeholders left (above)" >&2; exit 1; fi
	@mv $(K8S_OUT)/.eks-live.yaml.tmp $(K8S_OUT)/eks-live.yaml
	@echo "k8s/overlays/eks for account $(EKS_ACCOUNT_ID), $(EKS_REGION), tag $(EKS_TAG) -> $(K8S_OUT)/eks-live.yaml"
