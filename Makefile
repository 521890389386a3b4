# Quick start: `make serve` serves evals/ on port 9000; `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 9000

.PHONY: install serve test bench proto clean

install: $(STAMP)

# torch is pinned to 2.13.0 (a CPU build lies on disk here; an unpinned torch pulls gigabytes of CUDA).
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/serving serve --evals evals --port $(PORT) --metrics-port 9100

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_serving.py

proto: $(STAMP)
	$(BIN)/python -m serving.proto.generate

clean:
	rm -rf $(VENV) out var .pytest_cache
