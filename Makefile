# marketsearch: the two commands a newcomer needs are `make setup` and `make run`;
# `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/local.yaml
PYTEST_ARGS ?=
# make test runs the suite in this many pytest-xdist workers, a test file to a worker (its
# module fixtures, trained bundles and servers, are built once): 2 matches CI's two cores,
# the README has the times with and without. 0: one process, no xdist.
PYTEST_WORKERS ?= 2

PORT ?= 8080

.PHONY: setup setup-browser run serve bench-serve bench-index-pq bench-scale bench-drift test test-all compile mlflow-ui clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Idempotent: re-running only installs what changed in pyproject.toml.
setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

# Debian's Chromium for the search page's browser test (the tests skip, saying so, without it).
setup-browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

run:
	$(BIN)/marketsearch run --config $(CONFIG)

# The champion bundle that `make run` deployed, behind KServe's V1/V2 protocol on $(PORT);
# the search page is at http://localhost:$(PORT)/search.
serve:
	$(BIN)/marketsearch serve --config $(CONFIG) --port $(PORT)

# Latency/throughput of the server against the in-process floor, and the index at 100k/1M
# items; writes bench/reports/{serve,index}.{md,json}.
bench-serve:
	$(BIN)/python -m bench.bench_serve --config $(CONFIG)
	$(BIN)/python -m bench.bench_index

# IVF-PQ at 10M items (streamed, one build thread; about half an hour on one core), merged
# into bench/reports/index.{md,json} without re-running the sections above: PQ order and the
# exact re-rank of 100 candidates from the float16 vectors file (5 GB of free disk in the
# temp dir while it runs), warm and with the file dropped from the page cache.
bench-index-pq:
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.bench_index --sizes 10000000 --types ivfpq --threads 1 \
		--pq-nlist 4096 --pq-train-sample 200000 --pq-nprobe 8 16 32 --pq-rerank-k 100 \
		--pq-rerank-dtype float16 --pq-cold

# Each stage's peak memory and time per listing on a catalogue grown 1x, 4x and 16x from the
# shared listings, and a projection to 2M listings on EKS; writes bench/reports/scale.{md,json}.
# BASE=1000 for a smaller 1x (the full 6,081 takes a few hours on 2 cores).
BASE ?= 6081
bench-scale:
	$(BIN)/python -m bench.bench_scale --base $(BASE) --factors 1 4 16

# False-alarm and detection rates of the drift checks on the shared listings (needs `make run`
# first: its clean data and bundle); writes bench/reports/drift.{md,json}.
bench-drift:
	$(BIN)/python -m bench.bench_drift

test:
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

compile:
	$(BIN)/marketsearch compile --config $(CONFIG) --output build/pipelines/$(notdir $(basename $(CONFIG)))-training.yaml

mlflow-ui:
	$(BIN)/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts

clean-runs:
	rm -rf runs

# The cluster path's targets (images, kind, terraform/EKS) live in mk/*.mk, one file per area.
-include mk/*.mk
