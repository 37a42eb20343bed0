# The kind path: the whole cluster stack on a laptop with Docker (see images/README.md).
#   make kind-up      # kind cluster + cert-manager + KFP + KServe + k8s/overlays/kind + our images
#   make kind-test    # tests/cluster: the pipeline on KFP, then the InferenceService over HTTP
#   make kind-down    # delete the cluster
# Without a Docker engine, kind-up stops saying so and kind-test skips with the reason.
KIND_CLUSTER ?= marketsearch

.PHONY: kind-up kind-test kind-down

kind-up:
	KIND_CLUSTER=$(KIND_CLUSTER) PYTHON=$(BIN)/python MAKE="$(MAKE)" scripts/kind/up.sh

kind-test:
	KIND_CLUSTER=$(KIND_CLUSTER) $(BIN)/python -m pytest -m cluster tests/cluster -rs $(PYTEST_ARGS)

kind-down:
	KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind/down.sh
