# Two commands set everything up on a fresh machine:
#   make demo   the main job on its embedded default (see README.md)
#   make test   the test suite
# Both create .venv and install the project into it first (once; again when pyproject.toml changes).

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# A torch build first, then the project with its test and export extras (torchvision 0.29.1, which the export to
# torchvision is checked with, pins torch 2.14.1). Override for another build, e.g.
# `make install TORCH_SPEC="torch==2.14.1 --index-url ..."`.
TORCH_SPEC ?= torch==2.14.1
STAMP      := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR   ?= demo

.PHONY: help install test lint demo clean

help:
	@echo "make demo     build the digits dataset, shard it, run the pipeline on it (CPU)"
	@echo "make test     run the test suite"
	@echo "make lint     ruff (style, pyflakes, imports) and import-linter (the dependency rules)"
	@echo "make install  create $(VENV) and install the project with its dev extras"
	@echo "make clean    remove $(VENV), $(DEMO_DIR)/ and caches"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,export]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

demo: $(STAMP)
	$(PY) -m launch.demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
