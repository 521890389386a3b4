# Quick start: `make serve` serves evals/ on port 9000; `make test` runs the suite. Both set up .venv first, and
# build the native front end (serving/frontend: Debian's g++ and libgrpc++-dev, installed when missing; root and
# the Debian mirror needed once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 9000

.PHONY: install serve test bench bench-capacity proto clean

install: $(STAMP)
	$(BIN)/python -m serving.frontend.build --install-deps

# torch is pinned to 2.13.0 (a CPU build lies on disk here; an unpinned torch pulls gigabytes of CUDA).
# rapidocr-onnxruntime pulls in opencv-python, the GUI build (it needs libGL); it and opencv-python-headless both
# write cv2/, so the last one installed wins: drop the GUI build and reinstall the headless one's files.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip uninstall --quiet -y opencv-python
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "opencv-python-headless==$$($(BIN)/python -c \
	    'from importlib.metadata import version; print(version("opencv-python-headless"))')"
	touch $(STAMP)

serve: install
	$(BIN)/serving serve --evals evals --port $(PORT) --metrics-port 9100

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/bench_serving.py

# Server capacity with a C load generator: h2load comes from Debian's nghttp2-client, installed here when missing
# (root and the Debian mirror needed once; elsewhere install it by hand).
bench-capacity: install
	@command -v h2load >/dev/null || apt-get install -y -q nghttp2-client || \
		(apt-get update -q && apt-get install -y -q nghttp2-client) || \
		{ echo "h2load is missing: install Debian's nghttp2-client"; exit 1; }
	$(BIN)/python bench/bench_h2load.py

proto: $(STAMP)
	$(BIN)/python -m serving.proto.generate

clean:
	rm -rf $(VENV) out var .pytest_cache serving/frontend/_frontend*.so
