# Two entry points: `make run` (install, index SciFact, serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install system-deps run test lint bench bench-peers

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev,ray,train,federated,langchain]"
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

# Real programs the tests drive (never mocks): Redis for stream ingestion, Chromium and its
# driver for the playground. Installed from Debian's packages where missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

test: install system-deps
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check embedsvc indexing training tests benchmarks

bench: install
	$(BIN)/python benchmarks/index_and_search.py

# embedsvc against txtai, Chroma, LanceDB, raw FAISS and hnswlib, side by side (about 3 h on
# 2 cores). The peers install into their own venvs under benchmarks/peers/.venvs; wrk comes
# from Debian's packages.
bench-peers: install
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python benchmarks/backends.py
	$(BIN)/python benchmarks/peers/text.py --out benchmarks/peers/results-text.json
	$(BIN)/python benchmarks/peers/vectors_1m.py --out benchmarks/peers/results-1m.json
