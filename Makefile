# marketsearch: the two commands a newcomer needs are `make setup` and `make run`;
# `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/local.yaml
PYTEST_ARGS ?=

.PHONY: setup run test test-all compile mlflow-ui clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Idempotent: re-running only installs what changed in pyproject.toml.
setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

run:
	$(BIN)/marketsearch run --config $(CONFIG)

test:
	$(BIN)/python -m pytest $(PYTEST_ARGS)

compile:
	$(BIN)/marketsearch compile --config $(CONFIG) --output build/pipelines/$(notdir $(basename $(CONFIG)))-training.yaml

mlflow-ui:
	$(BIN)/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts

clean-runs:
	rm -rf runs
