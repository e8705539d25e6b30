# Two entry points: `make run` (install, index SciFact, serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install run test lint bench

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev,ray,train]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/embedsvc index build scifact --input data/scifact
	@echo
	@echo "Serving on http://127.0.0.1:$(PORT) (API docs at /docs). Try:"
	@echo "  curl -s -X POST http://127.0.0.1:$(PORT)/v1/collections/scifact/search \\"
	@echo "       -H 'content-type: application/json' -d '{\"query\": \"vitamin D deficiency\", \"k\": 5}'"
	@echo "  $(BIN)/python -c 'from embedsvc.client import Client; print(Client(\"http://127.0.0.1:$(PORT)\").search(\"scifact\", \"vitamin D deficiency\", k=3))'"
	@echo
	$(BIN)/embedsvc serve --host 127.0.0.1 --port $(PORT)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check embedsvc indexing training tests benchmarks

bench: install
	$(BIN)/python benchmarks/index_and_search.py
